"""The JVM options of the short Spark processes tests start, and the class-data-sharing archive in them.

Every Spark JVM a test starts (the CLI, ``spark-submit``, their executors, a standalone cluster's
daemons, a local Connect server) spends much of a short run loading and verifying Spark's
classes. A dynamic class-data-sharing (AppCDS) archive of them, dumped once by a ``spark-submit`` of
the vocabulary job, is mapped by each later JVM instead: a CLI vocabulary run 18.1 -> 11.9 s wall and
21.2 -> 14.8 s of CPU on this 2-core machine (``benchmarks/jvm_start_bench.py``, medians of 3). It lives in
``~/.cache/embedlib/jvm`` (or ``$EMBEDLIB_JVM_CACHE``), named by a hash of the Java runtime and of
Spark's jars (name, size, modification time), so another JDK or pyspark dumps a new one (once; the
dump takes ~30 s). No result depends on it: a JVM whose archive does not match runs without it.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: C1 only and the serial collector, for start-up and short jobs (a CLI vocabulary run 14.9 -> 12.0 s on
#: this 2-core machine, measured). The shared session lives long enough to keep the defaults (with these
#: options a run of three of its test files took longer).
SHORT_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


def _spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    return str(Path(home) / "bin" / "java") if home else (shutil.which("java") or "java")


def archive_key() -> str:
    """What the archive depends on: the Java runtime's build and every jar on Spark's class path."""
    runtime = subprocess.run([_java(), "-version"], capture_output=True, text=True, timeout=60).stderr
    digest = hashlib.sha256(runtime.encode())
    digest.update(SHORT_JVM.encode())
    for jar in sorted((_spark_home() / "jars").glob("*.jar")):
        stat = jar.stat()
        digest.update(f"{jar}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _dump(target: Path) -> None:
    """Run the vocabulary job on the Adult demo under ``spark-submit`` (the JVM is the parent process
    and exits by itself, so it writes the archive at exit) and move the archive into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for old in target.parent.glob("spark-*.jsa"):  # an archive of another JDK or pyspark
        old.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="embedlib-jvm-") as tmp:
        partial = Path(tmp) / "spark.jsa"
        env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
        env.pop("SPARK_REMOTE", None)
        proc = subprocess.run(
            [str(_spark_home() / "bin" / "spark-submit"), "--master", "local[2]",
             "--driver-java-options", f"{SHORT_JVM} -XX:ArchiveClassesAtExit={partial}",
             "--conf", "spark.ui.enabled=false", "jobs/build_vocab.py",
             "--conf", "conf/base.yaml", "--conf", "conf/adult.yaml", "--set", f"output_dir={tmp}/out",
             "--set", "spark.conf.spark.sql.shuffle.partitions=4"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 or not partial.exists():
            raise RuntimeError(f"no archive (exit {proc.returncode}): {proc.stderr[-2000:]}")
        staged = target.with_suffix(".partial")
        shutil.move(str(partial), staged)
        os.replace(staged, target)  # whole or absent, for a concurrent reader


@functools.cache
def short_jvm() -> str:
    """:data:`SHORT_JVM` plus the class-data-sharing archive (dumped at the first call of a machine)."""
    folder = Path(os.environ.get("EMBEDLIB_JVM_CACHE", Path.home() / ".cache" / "embedlib" / "jvm"))
    try:
        archive = folder / f"spark-{archive_key()}.jsa"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "w") as lock:  # one dump, when test processes ask at once
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not archive.exists():
                _dump(archive)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        # slower, not wrong: every JVM then loads its classes from the jars
        warnings.warn(f"Spark JVMs start without a class-data-sharing archive: {exc}", stacklevel=2)
        return SHORT_JVM
    return f"{SHORT_JVM} -XX:SharedArchiveFile={archive}"
