"""What a score run did: the :class:`ScoreRun` record and the ``score_runs`` table it goes to.

A neutral module: scoring writes these records, tracking logs them, reports
print them, and none of those import each other for it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["SCORE_RUNS_SCHEMA", "ScoreRun", "has_summary", "write_summary"]

SCORE_RUNS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()), ("bundle_id", pa.string()), ("source", pa.string()),
        ("output", pa.string()), ("rows", pa.int64()), ("anomalies", pa.int64()),
        ("threshold", pa.float64()),
        ("score_quantiles", pa.map_(pa.string(), pa.float64())),
        ("null_rate", pa.map_(pa.string(), pa.float64())),
        ("oov_rate", pa.map_(pa.string(), pa.float64())),
        ("started_at", pa.timestamp("us", tz="UTC")), ("seconds", pa.float64()),
        ("inf_rows", pa.int64()),
        ("rank_by", pa.string()),
        ("bin_counts", pa.map_(pa.string(), pa.list_(pa.int64()))),
    ]
)


@dataclass(frozen=True)
class ScoreRun:
    """What a score run did (also the row written to ``score_runs``)."""

    run_id: str
    bundle_id: str
    source: str
    output: str
    written: bool
    rows: int
    anomalies: int
    threshold: float
    quantiles: Mapping[str, float]
    null_rate: Mapping[str, float]
    oov_rate: Mapping[str, float]
    started_at: str
    seconds: float
    #: rows with at least one ±inf numeric read as missing (vocabulary ``inf_policy: null``)
    inf_rows: int = 0
    #: what rows were flagged by: "calibrated" or "nats" (the threshold is on that score)
    rank_by: str = "nats"
    tracking_run_id: str | None = None  # the MLflow run, with tracking.mlflow: true
    #: rows per drift bin of each column (:mod:`embedlib.drift`)
    bin_counts: Mapping[str, list[int]] = field(default_factory=dict)


def has_summary(spark: SparkSession, path: str, run_id: str) -> bool:
    from pyspark.sql import functions as F

    from embedlib.tables import delta_version, read_table

    if delta_version(spark, path) is None:
        return False
    return not read_table(spark, path).where(F.col("run_id") == run_id).isEmpty()


def write_summary(spark: SparkSession, run: ScoreRun, path: str, txn: tuple[str, int]) -> None:
    from embedlib.tables import write_table

    row = {
        "run_id": run.run_id,
        "bundle_id": run.bundle_id,
        "source": run.source,
        "output": run.output,
        "rows": run.rows,
        "anomalies": run.anomalies,
        "threshold": run.threshold,
        "score_quantiles": list(run.quantiles.items()),
        "null_rate": list(run.null_rate.items()),
        "oov_rate": list(run.oov_rate.items()),
        "started_at": dt.datetime.fromisoformat(run.started_at),
        "seconds": run.seconds,
        "inf_rows": run.inf_rows,
        "rank_by": run.rank_by,
        "bin_counts": [(k, list(v)) for k, v in run.bin_counts.items()],
    }
    frame = spark.createDataFrame(pa.Table.from_pylist([row], schema=SCORE_RUNS_SCHEMA)).coalesce(1)
    write_table(spark, frame, path, mode="append", txn=txn)
