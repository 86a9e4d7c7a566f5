"""What the tests' short-run JVM options buy: one ``embedlib vocab`` CLI run (Adult, ``local[2]``), alternated
between Spark's default JVM, the C1 + serial-collector options, and those plus the class-data-sharing
archive of ``tests/jvm.py`` (dumped first if this machine has none). Prints each run's wall seconds and
the whole machine's busy CPU seconds over it (from ``/proc/stat``, so the JVM and the Python workers count),
and the median of each setting.

    .venv/bin/python benchmarks/jvm_start_bench.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def busy_cpu_seconds() -> float:
    """Seconds every CPU of the machine spent busy since boot (Linux)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle, iowait = fields[3], fields[4]
    return (sum(fields) - idle - iowait) / os.sysconf("SC_CLK_TCK")


def vocab_run(java_options: str | None, out: Path) -> tuple[float, float]:
    argv = [sys.executable, "-m", "embedlib.cli", "vocab", "--conf", "conf/base.yaml", "--conf", "conf/adult.yaml",
            "--set", f"output_dir={out}", "--set", "spark.master=local[2]"]
    if java_options:
        argv += ["--set", f"spark.conf.spark.driver.extraJavaOptions={java_options}"]
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    cpu, wall = busy_cpu_seconds(), time.perf_counter()
    subprocess.run(argv, cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    return time.perf_counter() - wall, busy_cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from tests.jvm import SHORT_JVM, short_jvm

    settings = {"default JVM": None, "C1 + serial GC": SHORT_JVM, "+ CDS archive": short_jvm()}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in settings}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name, options in settings.items():
                wall, cpu = vocab_run(options, Path(tmp) / f"{round_}-{len(results[name])}-{name[:2]}")
                results[name].append((wall, cpu))
                print(f"round {round_ + 1}  {name:15s} {wall:6.1f} s wall  {cpu:6.1f} CPU-s", flush=True)
    print("\nmedian of", args.rounds, "rounds:")
    for name, runs in results.items():
        print(f"  {name:15s} {statistics.median(w for w, _ in runs):6.1f} s wall  "
              f"{statistics.median(c for _, c in runs):6.1f} CPU-s")


if __name__ == "__main__":
    main()
