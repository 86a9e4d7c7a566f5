#!/usr/bin/env bash
# Check the machine has what embedlib needs before anything is installed.
set -euo pipefail
PYTHON="${1:-python3}"
fail() { printf 'embedlib setup: %s\n' "$*" >&2; exit 1; }

command -v "$PYTHON" >/dev/null 2>&1 || fail "no '$PYTHON' on PATH: install Python 3.10 or newer (e.g. apt-get install python3 python3-venv)"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
  || fail "$("$PYTHON" --version 2>&1) is too old: install Python 3.10 or newer"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
  || fail "'$PYTHON' lacks venv/ensurepip: install python3-venv"

command -v java >/dev/null 2>&1 || fail "no 'java' on PATH: Spark needs Java 17 or newer (e.g. apt-get install openjdk-17-jre-headless)"
java_version=$(java -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')
java_major=${java_version%%.*}
[[ "$java_major" == "1" ]] && java_major=$(echo "$java_version" | cut -d. -f2)
[[ "$java_major" =~ ^[0-9]+$ && "$java_major" -ge 17 ]] \
  || fail "java $java_version found; Spark 4 needs Java 17 or newer (e.g. apt-get install openjdk-17-jre-headless)"
