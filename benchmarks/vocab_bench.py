"""Vocabulary build throughput: embedlib vs StringIndexer vs ten groupBy jobs.

    .venv/bin/python benchmarks/vocab_bench.py [--rows 2000000] [--master local[2]]

Generates a table in Spark (10 string columns of cardinality 10 … 100,000 with a
skewed distribution, 10 numeric columns), writes it to Parquet once, then times on
the same files in the same run:

* embedlib's ``build_vocabulary`` (value counts for the 10 strings *and*
  count/null/NaN/inf/mean/std/min/max for the 10 numerics, one pass), with the
  arrow engine (what the job uses for Parquet/Delta files) and the spark engine
  (what it uses for CSV and catalog sources),
* ``pyspark.ml.feature.StringIndexer(inputCols=…10…).fit`` (counts only),
* ten separate ``groupBy(c).count()`` jobs (counts only).

Prints rows/s and the ratios. Goal: embedlib ≥ 1.5× StringIndexer's throughput.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from typing import Any

CARDINALITIES = [10, 30, 100, 300, 1_000, 3_000, 10_000, 30_000, 100_000, 100_000]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds after a warm-up (best kept)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from pyspark.ml.feature import StringIndexer
    from pyspark.sql import functions as F

    from embedlib.core.config import SparkConfig, load_config
    from embedlib.spark.session import get_session
    from embedlib.spark.tables import open_tables
    from embedlib.spark.vocab import build_vocabulary

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = get_session(
        SparkConfig(master=args.master, conf={"spark.sql.shuffle.partitions": "8", "spark.driver.memory": "6g"}),
        app_name="vocab-bench",
    )
    spark.sparkContext.setLogLevel("ERROR")
    cats = [f"c{i}" for i in range(len(CARDINALITIES))]
    nums = [f"x{i}" for i in range(10)]
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/bench.parquet"
        ids = spark.range(args.rows)
        cols = []
        for i, card in enumerate(CARDINALITIES):
            u = (F.abs(F.xxhash64(F.col("id"), F.lit(i))) % 1_000_003) / 1_000_003.0
            value = F.floor(F.lit(card) * u * u).cast("long")  # skewed: low ids frequent
            cols.append(F.when(u < 0.01, None).otherwise(F.concat(F.lit(f"v{i}_"), value.cast("string"))).alias(cats[i]))
        for j in range(10):
            u = (F.abs(F.xxhash64(F.col("id"), F.lit(100 + j))) % 1_000_003) / 1_000_003.0
            cols.append((F.lit(float(j)) + F.lit(10.0 * (j + 1)) * u).alias(nums[j]))
        ids.select(*cols).write.parquet(path)
        df = spark.read.parquet(path)
        cfg = load_config([], [f"source.path={path}", "source.format=parquet",
                               f"columns.categorical={cats}", f"columns.numeric={nums}"])
        row_cfg = load_config([], [f"source.path={path}", "source.format=parquet", "vocab.engine=spark",
                                   f"columns.categorical={cats}", f"columns.numeric={nums}"])

        built: list[Any] = []

        def ours() -> None:  # the job's default (engine auto = arrow for Parquet/Delta files)
            files = open_tables(spark).source_files(cfg.source, cfg.feature_columns)
            built[:] = [build_vocabulary(spark, open_tables(spark).read_source(cfg.source), cfg, source="bench", files=files)]

        def ours_rows() -> None:  # the engine used for CSV / catalog sources
            build_vocabulary(spark, open_tables(spark).read_source(row_cfg.source), row_cfg, source="bench")

        def string_indexer() -> None:
            StringIndexer(inputCols=cats, outputCols=[f"{c}_idx" for c in cats], handleInvalid="keep").fit(df)

        def group_bys() -> None:
            for c in cats:
                df.groupBy(c).count().collect()

        methods = [("embedlib vocab, arrow engine (+ numeric stats)", ours),
                   ("embedlib vocab, spark engine (+ numeric stats)", ours_rows),
                   ("StringIndexer.fit (counts only)", string_indexer),
                   ("10 x groupBy(c).count() (counts only)", group_bys)]
        for _, fn in methods:  # warm-up: JIT, Python workers, file cache — not timed
            fn()
        results = {name: float("inf") for name, _ in methods}
        for _ in range(args.repeat):  # interleaved rounds; each method keeps its best
            for name, fn in methods:
                start = time.perf_counter()
                fn()
                results[name] = min(results[name], time.perf_counter() - start)
        lookups = lookup_figures(built[0], path, cats[-1])
    spark.stop()

    base = results["StringIndexer.fit (counts only)"]
    sys.stdout.write(f"rows: {args.rows:,}  master: {args.master}  10 string + 10 numeric columns\n")
    sys.stdout.write(f"{'method':<50}{'seconds':>10}{'rows/s':>14}{'vs StringIndexer':>18}\n")
    for name, secs in results.items():
        sys.stdout.write(f"{name:<50}{secs:>10.2f}{args.rows / secs:>14,.0f}{base / secs:>17.2f}x\n")
    sys.stdout.write("\nexecutor lookup (Vocabulary.lookup: one dictionary_encode + a hash index per column, "
                     "built once per Python worker):\n")
    sys.stdout.write(f"{'column':<34}{'values':>11}{'strings MiB':>13}{'index MiB':>11}{'lookup M values/s':>19}\n")
    for name, values, strings, mib, rate in lookups:
        sys.stdout.write(f"{name:<34}{values:>11,}{strings:>13.1f}{mib:>11.1f}{rate / 1e6:>19.2f}\n")


def lookup_figures(vocab: Any, path: str, column: str) -> list[tuple[str, int, float, float, float]]:
    """Memory of a column's values (the strings every worker holds with the bundle) and of its lookup
    index (the first lookup builds it; traced with tracemalloc), and
    lookups per second in batches of 10,000 rows, for the table's widest column on its own values, and for a synthetic
    1,000,000-value vocabulary on 2,000,000 values (half unseen)."""
    import dataclasses
    import tracemalloc

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embedlib.core.vocab import ColumnVocab

    data = pq.read_table(path.replace("file://", ""), columns=[column]).column(column)
    million = ColumnVocab(name="synthetic", values=tuple(f"v{i}" for i in range(1_000_000)),
                          counts=(1,) * 1_000_000, null_count=0, oov_count=0)
    wide = dataclasses.replace(vocab, columns={**vocab.columns, "synthetic": million})
    probe = pa.chunked_array([pa.array([f"v{i}" for i in np.random.default_rng(0).integers(0, 2_000_000, 2_000_000)])])
    out = []
    for name, values in ((column, data), ("synthetic", probe)):
        tracemalloc.start()
        wide.lookup(name, values.slice(0, 10))  # builds the index
        mib = tracemalloc.get_traced_memory()[0] / 2**20
        tracemalloc.stop()
        start = time.perf_counter()
        for offset in range(0, len(values), 10_000):  # as executors do: Arrow batches of 10,000 rows
            wide.lookup(name, values.slice(offset, 10_000))
        strings = (sys.getsizeof(wide[name].values) + sum(sys.getsizeof(v) for v in wide[name].values)) / 2**20
        out.append((f"{name} ({len(values):,} rows)", len(wide[name].values), strings, mib,
                    len(values) / (time.perf_counter() - start)))
    return out


if __name__ == "__main__":
    main()
