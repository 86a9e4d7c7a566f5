"""What a score run did: the :class:`ScoreRun` record (a ``score_runs`` row) and the per-column counts
the workers add up for it (:class:`CountLayout`, :func:`batch_counts`). Core: no pyspark.

A neutral module: scoring writes these records (:mod:`embedlib.spark.runs` holds the table's reads and
writes), tracking logs them, reports print them, and none of those import each other for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from embedlib.core.drift import bin_counts, n_bins

__all__ = ["FLAG_INF", "FLAG_MISSING", "FLAG_OOV", "SCORE_RUNS_SCHEMA", "CountLayout", "ScoreRun", "batch_counts"]

#: Per-cell marks a score run counts into its summary: missing (null/NaN), out of vocabulary,
#: ±inf read as missing (``inf_policy: null``); 0 is an ordinary value.
FLAG_MISSING, FLAG_OOV, FLAG_INF = 1, 2, 3

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
    #: rows per drift bin of each column (:mod:`embedlib.core.drift`)
    bin_counts: Mapping[str, list[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class CountLayout:
    """Where each figure of a score run's summary sits in the counts vector the workers add up
    (:func:`batch_counts`): rows, then per column the missing cells, per categorical the
    out-of-vocabulary ones, per column its drift bins (:func:`embedlib.core.drift.column_bins`), and
    the rows with a ±inf numeric."""

    columns: int
    categorical: int  # the first ``categorical`` columns

    @property
    def bins(self) -> tuple[int, ...]:
        """The drift bins of each column (:func:`embedlib.core.drift.n_bins`)."""
        return tuple(n_bins(k < self.categorical) for k in range(self.columns))

    @property
    def size(self) -> int:
        return 1 + self.columns + self.categorical + sum(self.bins) + 1

    def unpack(self, counts: np.ndarray) -> tuple[int, list[int], list[int], list[list[int]], int]:
        """``(rows, missing per column, OOV per categorical, bins per column, ±inf rows)``."""
        values = [int(v) for v in counts]
        at = 1 + self.columns + self.categorical
        bins = []
        for width in self.bins:
            bins.append(values[at:at + width])
            at += width
        return (values[0], values[1:1 + self.columns], values[1 + self.columns:1 + self.columns + self.categorical],
                bins, values[-1])


def batch_counts(layout: CountLayout, marks: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """A batch's counts in ``layout`` from its per-cell ``marks`` and drift ``bins`` (``[rows, columns]``)."""
    missing = ((marks == FLAG_MISSING) | (marks == FLAG_INF)).sum(0)
    oov = (marks[:, : layout.categorical] == FLAG_OOV).sum(0)
    per_bin = bin_counts(bins, layout.categorical)
    inf_rows = int((marks == FLAG_INF).any(1).sum())
    return np.concatenate([[marks.shape[0]], missing, oov, *per_bin, [inf_rows]]).astype(np.int64)
