"""The bundle reaches the executors once: loaded once per Python worker, whatever the batch count."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from embedlib.core.bundle import load_bundle

from .conftest import ADULT_TEST, tables_of


def test_bundle_is_loaded_once_per_python_worker_across_many_batches(spark, adult_trained) -> None:  # type: ignore[no-untyped-def]
    from pyspark.sql.types import LongType, StructField

    from embedlib.spark.workers import map_with_bundle

    cfg, result = adult_trained
    bundle = load_bundle(result.bundle_path)
    df = tables_of(spark).read(str(ADULT_TEST), format="csv", options=dict(cfg.source.options),
                    schema=cfg.source.schema).repartition(4)

    def loads(b, features: pa.Table) -> dict[str, pa.Array]:  # type: ignore[no-untyped-def]
        import os

        from embedlib.spark.workers import bundle_loads

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


def test_a_large_bundle_is_read_from_its_path_by_each_worker_and_scores_the_same(  # type: ignore[no-untyped-def]
        spark, adult_trained, tmp_path, monkeypatch) -> None:
    """Above ``workers.INLINE_BUNDLE_BYTES`` the function carries the bundle's path, not its bytes (no
    broadcast variable: the same code runs over Spark Connect); each worker reads and verifies it, and
    the scores are the in-process scores. A bundle replaced at that path while the job runs is refused."""
    import numpy as np
    import pytest

    from embedlib.core.bundle import BundleError, save_bundle
    from embedlib.spark import workers
    from embedlib.spark.score import score_frame
    from tests.conftest import adult_pandas

    shared = load_bundle(adult_trained[1].bundle_path)

    def saved(tag: str) -> str:  # the shared model under a new bundle id (no worker has it cached)
        return save_bundle(str(tmp_path / "bundle"), model=shared.model, vocab=shared.vocab, threshold=shared.threshold,
                           threshold_quantile=shared.manifest["threshold_quantile"], metrics={"copy": tag},
                           model_config=shared.manifest["model_config"])

    saved(str(tmp_path))
    bundle = load_bundle(str(tmp_path / "bundle"))
    assert isinstance(workers.bundle_files_or_path(bundle), dict)  # small: carried inline by default
    monkeypatch.setattr(workers, "INLINE_BUNDLE_BYTES", -1)
    assert workers.bundle_files_or_path(bundle) == bundle.path
    rows = adult_pandas(ADULT_TEST).head(2000)
    frame = spark.createDataFrame(rows).repartition(2)
    got = pd.DataFrame(score_frame(spark, frame, bundle, ids=()).select("anomaly_score").toPandas())["anomaly_score"]
    np.testing.assert_allclose(np.sort(got.to_numpy()), np.sort(bundle.score_frame(rows)["anomaly_score"].to_numpy()),
                               rtol=1e-9, atol=1e-9)
    # what a worker that has not loaded it yet does when the path holds another bundle by then
    saved("replaced")
    with pytest.raises(BundleError, match="was replaced while the job ran"):
        workers.cached_bundle(bundle.bundle_id, bundle.path)
