"""The one interface of the counting engines (:mod:`.spark_engine`, :mod:`.arrow_engine`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import pyarrow as pa

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from embedlib.config import Config

__all__ = ["CountEngine", "Counts"]


@dataclass(frozen=True)
class Counts:
    """One pass over the source, before cutting and numbering.

    ``kept`` has a row per categorical value that passed ``min_count`` (and the
    null group) — ``cid`` (the column's position among categoricals), ``value``,
    ``n`` — and one row per numeric column (``cid`` = number of categoricals + its
    position) with ``n, n_x, nans, pos_inf, neg_inf, mean, std, min, max``.
    ``totals`` maps each ``cid`` to the rows it saw (the source's row count).
    """

    kept: pa.Table
    totals: Mapping[int, int]


class CountEngine(Protocol):
    """Counts every categorical and summarises every numeric in one pass."""

    name: str

    def count(self, spark: SparkSession, df: DataFrame, cfg: Config, files: list[str] | None) -> Counts: ...
