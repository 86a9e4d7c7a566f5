"""What every counting engine returns (:mod:`.spark_engine`, :mod:`.arrow_engine`; the engines' interface is
:class:`embedlib.spark.vocab.build.CountEngine`). Core: no pyspark."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa

__all__ = ["Counts"]


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
