"""Building a vocabulary with Spark: one counting pass over a DataFrame, then :mod:`embedlib.core.vocab.cut`.

:func:`build_vocabulary` counts with one engine (``vocab.engine``):
:class:`~embedlib.spark.vocab.spark_engine.SparkEngine` on any source, or
:class:`~embedlib.spark.vocab.spark_engine.ArrowEngine` on Parquet data files;
``auto`` (default) takes ``arrow`` when the files are known. Both give the same
table; the small merged result is cut by ``min_count``/``max_size`` and
numbered on the driver (:func:`embedlib.core.vocab.cut.build_from_counts`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from embedlib.core.vocab.counts import Counts
from embedlib.core.vocab.cut import build_from_counts
from embedlib.core.vocab.model import VocabError, Vocabulary
from embedlib.spark.vocab.spark_engine import ArrowEngine, SparkEngine

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from embedlib.core.config import Config

__all__ = ["CountEngine", "build_vocabulary", "count_engine"]


class CountEngine(Protocol):
    """Counts every categorical and summarises every numeric in one pass."""

    name: str

    def count(self, spark: SparkSession, df: DataFrame, cfg: Config, files: list[str] | None) -> Counts: ...


def count_engine(cfg: Config, files: list[str] | None, source: str) -> CountEngine:
    """The engine ``vocab.engine`` asks for: ``auto`` is ``arrow`` when data files are known."""
    engine = cfg.vocab.engine
    if engine == "arrow" and files is None:
        raise VocabError(
            f"vocab.engine=arrow needs a Parquet or Delta path source; {source} is neither "
            "(use vocab.engine=auto or spark)"
        )
    if files is not None and engine in ("auto", "arrow"):
        return ArrowEngine()
    return SparkEngine()


def build_vocabulary(
    spark: SparkSession,
    df: DataFrame,
    cfg: Config,
    *,
    source: str,
    files: list[str] | None = None,
) -> Vocabulary:
    """Count every categorical and summarise every numeric in **one** pass over ``df``
    (``files``: its Parquet data files, when known), then cut, number and hash."""
    return build_from_counts(df.schema, cfg, source, lambda: count_engine(cfg, files, source).count(spark, df, cfg, files))
