"""Time to result on small tables: ``embedlib run`` end to end (a fresh CLI process: Spark's start, the
vocabulary, the size search, training, extract, score) and the in-memory ``embedlib.fit``, for this tree
and, in the same run, a baseline revision of the project (a ``git worktree`` of ``--baseline``).

    .venv/bin/python benchmarks/time_to_result_bench.py [--baseline cfc28fc] [--rows 1000 10000]
        [--fit-rows 1000] [--rounds 1] [--table computers]

The tables are random samples (seed 0) of real tables (``benchmarks/datasets.py``; the default,
Ecdat's ``Computers``, has 6,259 rows: larger samples draw with replacement) written to Parquet;
``run`` uses ``local[2]`` and the configuration defaults with only the table's columns declared.
The rounds alternate tree and baseline; each line is one round's wall seconds, then the medians.
The issue's goals (issue 43): ``run`` ≤ 30 s on 1,000 rows and ≤ 60 s on 10,000; ``fit`` ≤ 10 s on 1,000.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import TABLES, Table  # noqa: E402

FIT = """
import json, sys, time
import pandas as pd
started = time.perf_counter()
import embedlib
frame = pd.read_parquet(sys.argv[1])
spec = json.loads(sys.argv[2])
embedlib.fit(frame, categorical=spec["categorical"], numeric=spec["numeric"], output_dir=sys.argv[3],
             settings={"columns.log1p": spec["log1p"]})
print("seconds", time.perf_counter() - started)
"""


def sample(table: Table, rows: int, folder: Path) -> Path:
    frame = table.frame.sample(n=rows, replace=rows > len(table.frame), random_state=0).reset_index(drop=True)
    path = folder / f"{table.name}-{rows}.parquet"
    frame.to_parquet(path, index=False)
    return path


def cli_run(tree: Path, table: Table, data: Path, out: Path) -> float:
    argv = [sys.executable, "-m", "embedlib.cli", "run", "--conf", str(tree / "conf" / "base.yaml"),
            "--set", f"output_dir={out}", "--set", "spark.master=local[2]", "--set", f"source.path={data}",
            "--set", "source.format=parquet",
            "--set", f"columns.categorical={json.dumps(list(table.categorical))}",
            "--set", f"columns.numeric={json.dumps(list(table.numeric))}",
            "--set", f"columns.log1p={json.dumps(list(table.log1p))}"]
    env = dict(os.environ, PYTHONPATH=str(tree), PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise SystemExit(f"embedlib run failed in {tree}:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def fit_run(tree: Path, table: Table, data: Path, out: Path) -> float:
    spec = json.dumps({"categorical": list(table.categorical), "numeric": list(table.numeric),
                       "log1p": list(table.log1p)})
    env = dict(os.environ, PYTHONPATH=str(tree))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", FIT, str(data), spec, str(out)], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise SystemExit(f"embedlib.fit failed in {tree}:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=None, help="a git revision to measure beside this tree")
    parser.add_argument("--table", default="computers", choices=sorted(TABLES))
    parser.add_argument("--rows", type=int, nargs="*", default=[1000, 10000], help="table sizes for `embedlib run`")
    parser.add_argument("--fit-rows", type=int, nargs="*", default=[1000], help="table sizes for embedlib.fit")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()

    table = TABLES[args.table]()
    with tempfile.TemporaryDirectory(prefix="ttr-") as tmp:
        folder = Path(tmp)
        trees = {"this tree": ROOT}
        if args.baseline:
            base = folder / "baseline"
            subprocess.run(["git", "worktree", "add", "--detach", str(base), args.baseline], cwd=ROOT, check=True,
                           capture_output=True)
            trees[f"baseline {args.baseline}"] = base
        try:
            cases = [("run", n, cli_run) for n in args.rows] + [("fit", n, fit_run) for n in args.fit_rows]
            seconds: dict[tuple[str, int, str], list[float]] = {}
            for round_ in range(args.rounds):
                for what, rows, runner in cases:
                    data = sample(table, rows, folder)
                    for name, tree in trees.items():
                        wall = runner(tree, table, data, folder / f"out-{what}-{rows}-{round_}-{len(seconds)}")
                        seconds.setdefault((what, rows, name), []).append(wall)
                        print(f"round {round_ + 1}  {what:3s} {rows:>7,} rows  {name:20s} {wall:7.1f} s", flush=True)
            print(f"\nmedian of {args.rounds} round(s), {table.name}:")
            for (what, rows, name), walls in seconds.items():
                print(f"  {what:3s} {rows:>7,} rows  {name:20s} {statistics.median(walls):7.1f} s")
        finally:
            if args.baseline:
                subprocess.run(["git", "worktree", "remove", "--force", str(folder / "baseline")], cwd=ROOT,
                               capture_output=True)


if __name__ == "__main__":
    main()
