"""The two Spark counting engines: ``spark`` (one ``groupBy`` over exploded rows, any source) and
``arrow`` (:class:`ArrowEngine`: Spark spreads Parquet files over tasks that count them with pyarrow,
:mod:`embedlib.core.vocab.arrow_engine`).

The ``spark`` engine:

Each row is exploded into one ``(column id, value, x)`` entry per declared
column and a single ``groupBy(column id, value)`` aggregates them all:
categorical groups give value counts, each numeric column is one group with its
count / nulls / NaN / ±inf / mean / std / min / max.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from embedlib.core.vocab.arrow_engine import ArrowCountSpec, counts_of, work_units
from embedlib.core.vocab.counts import Counts

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

    from embedlib.core.config import Config

__all__ = ["ArrowEngine", "SparkEngine", "normalize_spark", "units_frame"]


def normalize_spark(column: Column, *, trim: bool = False, lowercase: bool = False) -> Column:
    """The same normalisation as :func:`embedlib.core.vocab.normalize_arrow`, as a Spark expression."""
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


_PARTIAL_SCHEMA = (
    "cid INT, value STRING, n LONG, n_x LONG, nans LONG, pos_inf LONG, neg_inf LONG, "
    "n_fin LONG, mean DOUBLE, m2 DOUBLE, min DOUBLE, max DOUBLE"
)


class ArrowEngine:
    """Counts Parquet data files with pyarrow inside Spark tasks; needs the files' list."""

    name = "arrow"

    def count(self, spark: SparkSession, df: DataFrame, cfg: Config, files: list[str] | None) -> Counts:
        from pyspark.sql import functions as F
        from pyspark.sql.pandas.types import to_arrow_schema

        if not files:
            return Counts(pa.table({"cid": pa.array([], pa.int32())}), {})
        wanted = list(dict.fromkeys(cfg.columns.categorical + cfg.columns.numeric))
        spec = ArrowCountSpec.of(cfg, to_arrow_schema(df.select(*[f"`{c}`" for c in wanted]).schema, timezone="UTC"))
        partials = units_frame(spark, files).mapInArrow(spec.count_files, _PARTIAL_SCHEMA)
        # One job: categorical partial counts merge by (cid, value); numeric moments and
        # row counts carry a per-task key in `value`, so they pass through unmerged and
        # are combined on the driver (Chan's formula needs more than a sum). The cut by
        # min_count runs here too, so that rare values are not shipped to the driver.
        ncat = len(cfg.columns.categorical)
        moment_cols = ["n_x", "nans", "pos_inf", "neg_inf", "n_fin", "mean", "m2", "min", "max"]
        merged = partials.groupBy("cid", "value").agg(
            F.sum("n").alias("n"), *[F.first(c).alias(c) for c in moment_cols]
        )
        cid, value = F.col("cid"), F.col("value")
        table = merged.where(
            (cid < 0) | (cid >= ncat) | value.isNull() | (F.col("n") >= cfg.vocab.min_count)
        ).toArrow()
        return counts_of(table, cfg)


def units_frame(spark: SparkSession, files: list[str]) -> DataFrame:
    """The :func:`work_units` of ``files`` for 2 task slots per core, at most one unit per task while
    they fit. A ``range`` with that many partitions deals out contiguous equal slices of unit numbers
    (each looked up in the plan's list of units), as ``parallelize`` did, on a classic session and
    over Spark Connect alike; a ``repartition()`` of a few rows may put them all in one task (it put
    both files of a 2-file table in the same one of two partitions: one core counted everything)."""
    from pyspark.sql import functions as F

    from embedlib.spark.session import default_parallelism

    slots = default_parallelism(spark) * 2
    units = work_units(files, slots)
    listed = F.array(*[F.struct(F.lit(f).alias("file"), F.lit(k).alias("part"), F.lit(n).alias("parts"))
                       for f, k, n in units])
    return (spark.range(0, len(units), 1, min(len(units), slots))
            .select(F.element_at(listed, (F.col("id") + 1).cast("int")).alias("unit"))
            .select("unit.file", "unit.part", "unit.parts"))
