"""The ``spark`` counting engine: one ``groupBy`` over exploded rows. Works on any source.

Each row is exploded into one ``(column id, value, x)`` entry per declared
column and a single ``groupBy(column id, value)`` aggregates them all:
categorical groups give value counts, each numeric column is one group with its
count / nulls / NaN / ±inf / mean / std / min / max.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embedlib.vocab.counts import Counts

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

    from embedlib.config import Config

__all__ = ["SparkEngine", "normalize_spark"]


def normalize_spark(column: Column, *, trim: bool = False, lowercase: bool = False) -> Column:
    """The same normalisation as :func:`embedlib.vocab.normalize_arrow`, as a Spark expression."""
    from pyspark.sql import functions as F

    out = column.cast("string")
    if trim:
        out = F.trim(out)
    if lowercase:
        out = F.lower(out)
    return out


def _signed_log1p(x: Column) -> Column:
    from pyspark.sql import functions as F

    return F.signum(x) * F.log1p(F.abs(x))


class SparkEngine:
    """Counts through Spark SQL; any source (CSV, catalog tables, Delta through the connector)."""

    name = "spark"

    def count(self, spark: SparkSession, df: DataFrame, cfg: Config, files: list[str] | None) -> Counts:
        from pyspark.sql import functions as F

        cats, nums = cfg.columns.categorical, cfg.columns.numeric
        trim, lower = cfg.vocab.trim, cfg.vocab.lowercase
        entries = []
        for i, name in enumerate(cats):
            entries.append(
                F.struct(
                    F.lit(i).alias("cid"),
                    normalize_spark(F.col(f"`{name}`"), trim=trim, lowercase=lower).alias("value"),
                    F.lit(None).cast("double").alias("x"),
                )
            )
        for j, name in enumerate(nums):
            x = F.col(f"`{name}`").cast("double")
            if name in cfg.columns.log1p:
                x = _signed_log1p(x)
            entries.append(
                F.struct(F.lit(len(cats) + j).alias("cid"), F.lit(None).cast("string").alias("value"), x.alias("x"))
            )
        inf = float("inf")
        x = F.col("x")
        finite = F.when(~F.isnan(x) & (F.abs(x) != inf), x)
        stream = df.select(F.explode(F.array(*entries)).alias("e")).select("e.*")
        agg = stream.groupBy("cid", "value").agg(
            F.count(F.lit(1)).alias("n"),
            F.count(x).alias("n_x"),
            F.count(F.when(F.isnan(x), 1)).alias("nans"),
            F.count(F.when(x == inf, 1)).alias("pos_inf"),
            F.count(F.when(x == -inf, 1)).alias("neg_inf"),
            F.avg(finite).alias("mean"),
            F.stddev_pop(finite).alias("std"),
            F.min(finite).alias("min"),
            F.max(finite).alias("max"),
        )
        agg = agg.persist()
        try:
            totals = {r["cid"]: int(r["total"]) for r in agg.groupBy("cid").agg(F.sum("n").alias("total")).collect()}
            kept = agg.where(
                (F.col("cid") >= len(cats)) | F.col("value").isNull() | (F.col("n") >= cfg.vocab.min_count)
            ).toArrow()
        finally:
            agg.unpersist()
        return Counts(kept, totals)

