"""The bundle reaches the executors once: loaded once per Python worker, whatever the batch count."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from embedlib.bundle import load_bundle

from .conftest import ADULT_TEST


def test_bundle_is_loaded_once_per_python_worker_across_many_batches(spark, adult_trained) -> None:  # type: ignore[no-untyped-def]
    from pyspark.sql.types import LongType, StructField

    from embedlib.tables import read_table
    from embedlib.workers import map_with_bundle

    cfg, result = adult_trained
    bundle = load_bundle(result.bundle_path)
    df = read_table(spark, str(ADULT_TEST), format="csv", options=dict(cfg.source.options),
                    schema=cfg.source.schema).repartition(4)

    def loads(b, features: pa.Table) -> dict[str, pa.Array]:  # type: ignore[no-untyped-def]
        import os

        from embedlib.workers import bundle_loads

        n = features.num_rows
        return {"pid": pa.array([os.getpid()] * n, pa.int64()),
                "loads": pa.array([bundle_loads(b.bundle_id)] * n, pa.int64()),
                "rows": pa.array([n] * n, pa.int64())}

    previous = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "500")
    try:
        frame = map_with_bundle(spark, df, bundle, ids=(), table="adult.test", transform=loads,
                              fields=[StructField(c, LongType()) for c in ("pid", "loads", "rows")])
        out = pd.DataFrame(frame.toPandas())
    finally:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", previous or "10000")
    batches = out.groupby(["pid", "rows", "loads"]).size()
    assert len(out) == 16_281 and out["rows"].max() <= 500
    assert len(out) / 500 >= 30  # at least 30 batches went through
    workers = out["pid"].nunique()
    assert 1 <= workers <= 4, batches
    # every batch a worker saw found the same, single load: no batch loaded the bundle again
    per_worker = out.groupby("pid")["loads"].agg(["min", "max"])
    assert (per_worker["min"] == per_worker["max"]).all(), per_worker
    assert (per_worker["max"] >= 1).all()
