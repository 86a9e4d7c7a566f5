"""How the bundle reaches the workers: carried in the ``mapInArrow`` function, or read from its path.

Without a ``SparkContext`` (Spark Connect) there is no broadcast variable, so :mod:`embedlib.spark.workers`
either carries the bundle's file bytes inside the pickled function (Spark ships a stage's function
with each task) or hands the workers its path, which each Python worker reads once. This bench
scores the same rows both ways on one local session, alternated, with Python worker reuse on
(Spark's default: a worker keeps its loaded bundle across tasks) and off (every task a fresh worker:
the worst case for either). It prints seconds per round, the median of each, and the bundle's size.

    .venv/bin/python benchmarks/bundle_transport_bench.py [--rows 200000] [--rounds 3] [--partitions 16] [--wide 50000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--size", default="medium", help="model.size of the bundle scored")
    parser.add_argument("--wide", type=int, default=0,
                        help="add a categorical of this many values (a bundle of tens of MB at 50,000)")
    args = parser.parse_args()

    import numpy as np
    import pandas as pd

    import embedlib
    from embedlib.core.config import SparkConfig, load_config
    from embedlib.spark import workers
    from embedlib.spark.score import score_frame
    from embedlib.spark.session import get_session
    from tests.conftest import ADULT_CONF, ADULT_DATA, BASE_CONF, adult_pandas

    cfg = load_config([BASE_CONF, ADULT_CONF])
    rows = adult_pandas(ADULT_DATA)
    data = pd.concat([rows] * (args.rows // len(rows) + 1), ignore_index=True).head(args.rows)
    categorical = list(cfg.columns.categorical)
    if args.wide:
        data["wide"] = [f"w{v}" for v in np.random.default_rng(0).integers(0, args.wide, len(data))]
        categorical.append("wide")
    out = tempfile.mkdtemp(prefix="transport-")
    bundle = embedlib.fit(data, categorical=categorical, numeric=list(cfg.columns.numeric),
                          output_dir=out, settings={"model.size": args.size, "train.max_steps": 300})
    size = sum(f.stat().st_size for f in Path(bundle.path).iterdir())

    for reuse in ("true", "false"):
        spark = get_session(SparkConfig(master="local[2]", conf={
            "spark.python.worker.reuse": reuse, "spark.sql.shuffle.partitions": "4"}), app_name="transport-bench")
        frame = spark.createDataFrame(data).repartition(args.partitions).cache()
        frame.count()
        times: dict[str, list[float]] = {"inline": [], "path": []}
        for _ in range(args.rounds):
            for mode, limit in (("inline", 1 << 40), ("path", -1)):
                workers.INLINE_BUNDLE_BYTES = limit  # read on the driver when the function is built
                started = time.perf_counter()
                score_frame(spark, frame, bundle, ids=()).write.format("noop").mode("overwrite").save()
                times[mode].append(time.perf_counter() - started)
        print(f"python worker reuse {reuse}: {args.rows:,} rows in {args.partitions} tasks, bundle {size / 1e6:.2f} MB")
        for mode, values in times.items():
            print(f"  {mode:<7} " + " ".join(f"{v:6.2f}" for v in values) + f"   median {statistics.median(values):.2f} s")
        spark.stop()


if __name__ == "__main__":
    main()
