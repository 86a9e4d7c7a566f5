#!/usr/bin/env bash
# Install Horovod 0.28.1 (PyTorch + Gloo, no MPI/TF/MXNet) into a Python env.
#
# Usage: .ci/build_horovod.sh [PYTHON]      (default: .venv/bin/python in the repo root)
#
# Horovod 0.28.1 (latest release) does not compile against torch >= 2.1 as
# released: torch headers need C++17 but Horovod asks CMake for C++14.  We
# build it from the PyPI sdist with CMAKE_CXX_STANDARD 14 -> 17 patched into
# CMakeLists.txt and horovod/torch/CMakeLists.txt (the upstream fix, horovod
# PR #3998).  The build takes ~10 minutes on 2 cores, so the resulting wheel is
# cached outside the repo:
#     ${EMBEDLIB_WHEEL_CACHE:-$HOME/.cache/embedlib/wheels}
#
# The build always uses the torch already installed in PYTHON
# (--no-build-isolation / --no-deps, plus a pip constraint pinning torch to
# the installed version), so pip can never pull a different torch (+ GBs of
# CUDA wheels).  This script never installs torch itself.
#
# Env knobs:
#   EMBEDLIB_WHEEL_CACHE   wheel cache dir (see above)
#   MAKEFLAGS              passed to make (default: -j<nproc>)
#   EMBEDLIB_HOROVOD_LOG   full build log (default: /tmp/build_horovod.<pid>.log)
set -euo pipefail

HVD_VERSION=0.28.1

log() { printf '[build_horovod] %s\n' "$*"; }
die() { printf '[build_horovod] ERROR: %s\n' "$*" >&2; exit 1; }

# --- resolve PYTHON (relative paths are relative to the caller's cwd) -------
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $# -ge 1 && -n "$1" ]]; then
    PYTHON="$1"
    if [[ "$PYTHON" == */* ]]; then
        [[ "$PYTHON" == /* ]] || PYTHON="$PWD/$PYTHON"
    else
        PYTHON="$(command -v "$PYTHON")" || die "python '$1' not found on PATH"
    fi
else
    PYTHON="$ROOT/.venv/bin/python"
fi
cd "$ROOT"
[[ -x "$PYTHON" ]] || die "python interpreter not found / not executable: $PYTHON"

START=$SECONDS
elapsed() { echo "$((SECONDS - START))s"; }

# --- 1. already installed? -------------------------------------------------
if "$PYTHON" -c "import horovod.torch" >/dev/null 2>&1; then
    ver="$("$PYTHON" -c 'import horovod; print(horovod.__version__)' 2>/dev/null || echo '?')"
    log "horovod.torch already importable in $PYTHON (horovod $ver); nothing to do."
    exit 0
fi

TORCH_VERSION="$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null)" \
    || die "torch is not importable in $PYTHON; install torch first (this script never installs torch)"
PY_TAG="$("$PYTHON" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')"
log "python: $PYTHON ($PY_TAG), torch $TORCH_VERSION"

CACHE="${EMBEDLIB_WHEEL_CACHE:-$HOME/.cache/embedlib/wheels}"
mkdir -p "$CACHE" || die "cannot create wheel cache dir $CACHE"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/build_horovod.XXXXXX")"
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT

# Pin torch to the installed version for every pip call below.
printf 'torch==%s\n' "$TORCH_VERSION" > "$WORK/constraints.txt"
export PIP_CONSTRAINT="$WORK/constraints.txt"
PIP=("$PYTHON" -m pip)
"${PIP[@]}" --version >/dev/null 2>&1 || die "pip is not available in $PYTHON"

# Horovod's runtime deps (install_requires + cffi for the torch extension).
RUNTIME_DEPS=(cloudpickle psutil cffi pyyaml packaging)

install_wheel() {  # $1 = wheel path
    log "installing $(basename "$1") (--no-deps) ..."
    "${PIP[@]}" install --no-deps --force-reinstall "$1" \
        || die "pip install of $1 failed"
    log "installing runtime deps: ${RUNTIME_DEPS[*]} ..."
    "${PIP[@]}" install "${RUNTIME_DEPS[@]}" \
        || die "pip install of runtime deps (${RUNTIME_DEPS[*]}) failed"
}

verify() {  # prints result; returns non-zero if horovod.torch is unusable
    "$PYTHON" - <<'EOF'
import horovod, horovod.torch as hvd
assert hvd.gloo_built(), "horovod was built without Gloo"
print("[build_horovod] OK: horovod %s, gloo_built=%s, mpi_built=%s"
      % (horovod.__version__, hvd.gloo_built(), hvd.mpi_built()))
EOF
}

check_torch_unchanged() {
    local now
    now="$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo MISSING)"
    [[ "$now" == "$TORCH_VERSION" ]] \
        || die "torch changed from $TORCH_VERSION to $now during the install!"
}

# --- 2. cached wheel? --------------------------------------------------------
shopt -s nullglob
cached=("$CACHE"/horovod-"$HVD_VERSION"-"$PY_TAG"-*.whl)
shopt -u nullglob
if [[ ${#cached[@]} -gt 0 ]]; then
    whl="${cached[0]}"
    built_for="$(cat "$whl.torch-version" 2>/dev/null || echo unknown)"
    if [[ "$built_for" != "unknown" && "$built_for" != "$TORCH_VERSION" ]]; then
        log "cached $(basename "$whl") was built for torch $built_for, not $TORCH_VERSION; rebuilding"
    else
        log "using cached wheel $whl"
        install_wheel "$whl"
        check_torch_unchanged
        if verify; then
            log "done (from cache) in $(elapsed)"
            exit 0
        fi
        log "cached wheel installed but horovod.torch does not import; rebuilding from source"
    fi
fi

# --- 3. build from the sdist ---------------------------------------------------
log "no usable cached wheel in $CACHE; building horovod $HVD_VERSION from source (~10 min on 2 cores)"

command -v g++ >/dev/null 2>&1 || die "g++ not found (apt-get install g++)"
command -v make >/dev/null 2>&1 || die "make not found (apt-get install make)"

# Build deps: setuptools/wheel for the legacy setup.py backend, plus Horovod's
# setup_requires (= its runtime deps) which setuptools would otherwise try to
# fetch itself.  None of these depend on torch.
log "installing build deps into the env: setuptools wheel ${RUNTIME_DEPS[*]} ..."
"${PIP[@]}" install setuptools wheel "${RUNTIME_DEPS[@]}" || die "installing build deps failed"

# cmake >= 3.13 is needed; if the system one is missing/too old, Horovod's
# setup.py would call a bare `pip install cmake~=3.13.0` itself.  Prefer the
# system cmake, else install cmake (<4: gloo's CMakeLists is old) into the env.
export PATH="$(dirname "$PYTHON"):$PATH"
cmake_ok() {
    command -v cmake >/dev/null 2>&1 && "$PYTHON" - "$(cmake --version | head -1)" <<'EOF'
import re, sys
m = re.search(r"(\d+)\.(\d+)", sys.argv[1])
sys.exit(0 if m and (3, 13) <= (int(m[1]), int(m[2])) else 1)
EOF
}
if ! cmake_ok; then
    log "cmake >= 3.13 not found; installing 'cmake>=3.13,<4' into the env"
    "${PIP[@]}" install 'cmake>=3.13,<4' || die "installing cmake failed"
    cmake_ok || die "cmake still not usable after pip install"
fi
log "cmake: $(command -v cmake) ($(cmake --version | head -1))"

log "downloading horovod==$HVD_VERSION sdist from PyPI ..."
"${PIP[@]}" download --no-deps --no-binary :all: --no-build-isolation \
    -d "$WORK/sdist" "horovod==$HVD_VERSION" >"$WORK/download.log" 2>&1 \
    || { cat "$WORK/download.log" >&2; die "pip download of horovod==$HVD_VERSION failed"; }
tarball="$WORK/sdist/horovod-$HVD_VERSION.tar.gz"
[[ -f "$tarball" ]] || die "expected sdist $tarball not found after download"
tar -xzf "$tarball" -C "$WORK" || die "unpacking $tarball failed"
SRC="$WORK/horovod-$HVD_VERSION"

log "patching CMAKE_CXX_STANDARD 14 -> 17 (horovod PR #3998) ..."
for f in "$SRC/CMakeLists.txt" "$SRC/horovod/torch/CMakeLists.txt"; do
    [[ -f "$f" ]] || die "patch target missing: $f"
    sed -i 's/CMAKE_CXX_STANDARD 14)/CMAKE_CXX_STANDARD 17)/' "$f"
    if grep -q 'CMAKE_CXX_STANDARD 14' "$f" || ! grep -q 'CMAKE_CXX_STANDARD 17' "$f"; then
        die "C++17 patch did not apply to ${f#"$SRC"/}"
    fi
done

export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
       HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
unset HOROVOD_GPU_OPERATIONS HOROVOD_GPU HOROVOD_SKIP_COMPILE HOROVOD_LOCAL_VERSION || true
export MAKEFLAGS="${MAKEFLAGS:--j$(nproc)}"
BUILD_LOG="${EMBEDLIB_HOROVOD_LOG:-${TMPDIR:-/tmp}/build_horovod.$$.log}"
log "building wheel (MAKEFLAGS=$MAKEFLAGS); full log: $BUILD_LOG"
build_start=$SECONDS
"${PIP[@]}" wheel --no-build-isolation --no-deps -v -w "$WORK/wheelhouse" "$SRC" \
    >"$BUILD_LOG" 2>&1 &
build_pid=$!
ticks=0
while kill -0 "$build_pid" 2>/dev/null; do
    sleep 5
    ticks=$((ticks + 1))
    (( ticks % 12 == 0 )) || continue
    last="$(grep -E '^\s*\[ *[0-9]+%\]' "$BUILD_LOG" 2>/dev/null | tail -1 | cut -c1-120 || true)"
    log "  ... still building ($((SECONDS - build_start))s) ${last:-}"
done
if ! wait "$build_pid"; then
    echo "----- last 60 lines of $BUILD_LOG -----" >&2
    tail -n 60 "$BUILD_LOG" >&2
    die "building the horovod wheel failed after $((SECONDS - build_start))s (full log: $BUILD_LOG)"
fi
log "wheel built in $((SECONDS - build_start))s"

shopt -s nullglob
built=("$WORK"/wheelhouse/horovod-"$HVD_VERSION"-*.whl)
shopt -u nullglob
[[ ${#built[@]} -eq 1 ]] || die "expected exactly one horovod wheel in $WORK/wheelhouse, found ${#built[@]}"
name="$(basename "${built[0]}")"

# Atomic copy into the cache: write a temp name in the same dir, then mv.
tmpname="$CACHE/.$name.tmp.$$"
cp "${built[0]}" "$tmpname" || die "copying wheel to cache failed"
mv -f "$tmpname" "$CACHE/$name" || die "moving wheel into cache failed"
printf '%s\n' "$TORCH_VERSION" > "$CACHE/.$name.torch-version.tmp.$$"
mv -f "$CACHE/.$name.torch-version.tmp.$$" "$CACHE/$name.torch-version"
log "cached $CACHE/$name"

install_wheel "$CACHE/$name"
check_torch_unchanged
verify || die "horovod installed but 'import horovod.torch' fails"
[[ -n "${EMBEDLIB_HOROVOD_LOG:-}" ]] || rm -f "$BUILD_LOG"
log "done (built from source) in $(elapsed)"
