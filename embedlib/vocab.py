"""Vocabularies and numeric statistics, built in one distributed pass.

Index convention (the one place it is defined; every other module imports it):

* ``NULL_INDEX = 0`` — the value is null / missing.
* ``OOV_INDEX = 1`` — out of vocabulary: values seen fewer than ``min_count``
  times at build time, values cut by ``max_size``, and values never seen at
  scoring time. Rare values are what train this row, so an unseen value lands on
  a trained vector, not a random one.
* ``FIRST_INDEX = 2`` … ``K + 1`` — the vocabulary, ordered by count descending,
  then value ascending (UTF-8 byte order), which is the same whatever the
  partitioning of the source.

Values are compared as strings: Spark's ``CAST(x AS STRING)`` for integer and
boolean columns (Arrow's cast gives the same text), then the configured
normalisation — none by default; ``trim`` strips ASCII spaces at both ends
(Spark's ``trim``), ``lowercase`` folds case. The empty string is a value, not a
null.

The vocabulary table is ``(column, value, index, count)``, one row per index
including the null row (index 0, its count the number of nulls) and the OOV row
(index 1, its count the number of values that went there); both have a null
``value``. Its metadata — source, row count, parameters, build time, numeric
statistics, the source's Spark type of every declared column (``source_types``)
and a content hash — is the JSON ``userMetadata`` of the commit.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.types import StructType

    from embedlib.config import Config

__all__ = [
    "FIRST_INDEX",
    "NULL_INDEX",
    "OOV_INDEX",
    "ColumnVocab",
    "NumericStats",
    "SchemaError",
    "Vocabulary",
    "VocabError",
    "build_vocabulary",
    "check_columns",
    "normalize_arrow",
    "type_family",
    "run_vocab_job",
]

log = logging.getLogger(__name__)

NULL_INDEX = 0
OOV_INDEX = 1
FIRST_INDEX = 2
SCHEMA_VERSION = 1

VOCAB_SCHEMA = pa.schema(
    [
        pa.field("column", pa.string(), nullable=False),
        pa.field("value", pa.string()),
        pa.field("index", pa.int32(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
    ]
)


class VocabError(ValueError):
    """The vocabulary cannot be built or used as asked; the message says why."""


class SchemaError(VocabError):
    """The source's columns do not match what the configuration declares."""


# ------------------------------------------------------------------- value objects


@dataclass(frozen=True)
class NumericStats:
    """Statistics of one numeric column over the source (after optional log1p).

    ``mean``/``std`` are over finite values; ``std`` is the population standard
    deviation. :attr:`scale` is what standardization divides by: ``std``, or 1.0
    for a constant or empty column.
    """

    rows: int
    nulls: int
    nans: int
    pos_inf: int
    neg_inf: int
    mean: float
    std: float
    min: float | None
    max: float | None
    log1p: bool = False

    @property
    def scale(self) -> float:
        return self.std if self.std > 0 and math.isfinite(self.std) else 1.0

    @property
    def missing(self) -> int:
        return self.nulls + self.nans


@dataclass(frozen=True)
class ColumnVocab:
    """The vocabulary of one categorical column: ``values[i]`` has index ``i + 2``."""

    name: str
    values: tuple[str, ...]
    counts: tuple[int, ...]
    null_count: int
    oov_count: int
    _index: Any = field(default=None, repr=False, compare=False)
    _labels: Any = field(default=None, repr=False, compare=False)

    @property
    def size(self) -> int:
        """Number of embedding rows: the vocabulary plus the null and OOV rows."""
        return len(self.values) + FIRST_INDEX

    def value_of(self, index: int) -> str | None:
        """The category value of an index (None for the null and OOV rows)."""
        return self.values[index - FIRST_INDEX] if index >= FIRST_INDEX else None

    def label_of(self, index: int) -> str:
        """A readable label: the value, ``<null>`` or ``<other>``."""
        if index == NULL_INDEX:
            return "<null>"
        if index == OOV_INDEX:
            return "<other>"
        return self.values[index - FIRST_INDEX]

    def labels(self) -> np.ndarray:
        """:meth:`label_of` for every index, as an object array (built once)."""
        if self._labels is None:
            labels = np.array(["<null>", "<other>", *self.values], dtype=object)
            object.__setattr__(self, "_labels", labels)
        return self._labels  # type: ignore[no-any-return]

    def positions(self, uniques: pa.Array) -> np.ndarray:
        """Index of each (normalised, non-null) unique value; OOV where unseen."""
        import pandas as pd

        if self._index is None:
            object.__setattr__(self, "_index", pd.Index(list(self.values), dtype=object))
        pos = self._index.get_indexer(uniques.to_pandas())
        return np.where(pos >= 0, pos + FIRST_INDEX, OOV_INDEX).astype(np.int32)


@dataclass(frozen=True)
class Vocabulary:
    """Vocabularies of the categorical columns plus numeric statistics; no Spark needed."""

    columns: Mapping[str, ColumnVocab]
    numeric: Mapping[str, NumericStats]
    meta: Mapping[str, Any]

    # -- lookups -------------------------------------------------------------------
    @property
    def categorical(self) -> tuple[str, ...]:
        return tuple(self.columns)

    @property
    def numeric_columns(self) -> tuple[str, ...]:
        return tuple(self.numeric)

    @property
    def content_hash(self) -> str:
        return str(self.meta["content_hash"])

    def size(self, column: str) -> int:
        return self[column].size

    def __getitem__(self, column: str) -> ColumnVocab:
        try:
            return self.columns[column]
        except KeyError:
            raise VocabError(
                f"column '{column}' is not in the vocabulary (it has {', '.join(self.columns)})"
            ) from None

    def lookup(self, column: str, values: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Map an Arrow array of raw values to int32 indices in one vectorized call.

        Null → 0, unseen or cut → 1, vocabulary → 2.. . Integer and boolean arrays
        are compared by their string form, as the build did.
        """
        cv = self[column]
        arr = normalize_arrow(values, trim=self.trim, lowercase=self.lowercase)
        encoded = pc.dictionary_encode(arr)
        codes = cv.positions(encoded.dictionary)
        out = np.full(len(arr), NULL_INDEX, dtype=np.int32)
        idx = encoded.indices
        valid = np.asarray(idx.is_valid())
        if valid.any():
            out[valid] = codes[np.asarray(idx.drop_null(), dtype=np.int64)]
        return out

    @property
    def trim(self) -> bool:
        return bool(self.meta.get("params", {}).get("trim", False))

    @property
    def lowercase(self) -> bool:
        return bool(self.meta.get("params", {}).get("lowercase", False))

    # -- (de)serialisation -----------------------------------------------------------
    def to_arrow(self) -> pa.Table:
        """The vocabulary table ``(column, value, index, count)``, reserved rows included."""
        cols: list[str] = []
        vals: list[str | None] = []
        idxs: list[int] = []
        cnts: list[int] = []
        for name, cv in self.columns.items():
            cols += [name, name]
            vals += [None, None]
            idxs += [NULL_INDEX, OOV_INDEX]
            cnts += [cv.null_count, cv.oov_count]
            cols += [name] * len(cv.values)
            vals += list(cv.values)
            idxs += list(range(FIRST_INDEX, cv.size))
            cnts += list(cv.counts)
        return pa.table(
            [pa.array(cols), pa.array(vals, pa.string()), pa.array(idxs, pa.int32()), pa.array(cnts, pa.int64())],
            schema=VOCAB_SCHEMA,
        )

    @classmethod
    def from_arrow(cls, table: pa.Table, meta: Mapping[str, Any]) -> Vocabulary:
        """Rebuild from the vocabulary table and its metadata, checking the convention."""
        missing = {"column", "value", "index", "count"} - set(table.column_names)
        if missing:
            raise VocabError(f"vocabulary table lacks columns {sorted(missing)}")
        if "categorical" not in meta:
            raise VocabError("vocabulary metadata lacks 'categorical'; was it written by embedlib?")
        rows: dict[str, list[tuple[int, str | None, int]]] = {}
        for rec in table.select(["column", "value", "index", "count"]).to_pylist():
            rows.setdefault(rec["column"], []).append((rec["index"], rec["value"], rec["count"]))
        columns: dict[str, ColumnVocab] = {}
        for name in meta["categorical"]:
            entries = sorted(rows.get(name, []), key=lambda r: r[0])
            if [r[0] for r in entries] != list(range(len(entries))) or len(entries) < FIRST_INDEX:
                raise VocabError(f"vocabulary of column '{name}' does not number 0, 1, 2, … without gaps")
            columns[name] = ColumnVocab(
                name=name,
                values=tuple(str(r[1]) for r in entries[FIRST_INDEX:]),
                counts=tuple(int(r[2]) for r in entries[FIRST_INDEX:]),
                null_count=int(entries[NULL_INDEX][2]),
                oov_count=int(entries[OOV_INDEX][2]),
            )
        stats = meta.get("numeric", {})
        order = meta.get("numeric_columns", list(stats))
        numeric = {k: NumericStats(**stats[k]) for k in order}
        return cls(columns=columns, numeric=numeric, meta=dict(meta))

    @classmethod
    def load(cls, spark: SparkSession, path: str) -> Vocabulary:
        """Load a vocabulary Delta table through the session (connector or delta-rs)."""
        from embedlib.tables import commit_metadata, read_table

        meta = commit_metadata(spark, path)
        return cls.from_arrow(read_table(spark, path).toArrow(), meta)

    @classmethod
    def load_delta(cls, path: str) -> Vocabulary:
        """Load a vocabulary Delta table with delta-rs only — no Spark."""
        from deltalake import DeltaTable

        from embedlib.layout import check_path, local_path

        check_path(path, what="vocabulary table")
        location = local_path(path) or path
        if not DeltaTable.is_deltatable(location):
            raise VocabError(f"no vocabulary table at {path}; run `embedlib vocab` first")
        table = DeltaTable(location)
        history = table.history(1)
        meta = json.loads(history[0].get("userMetadata") or "{}") if history else {}
        return cls.from_arrow(pa.table(table.to_pyarrow_table()), meta)

    def summary(self) -> list[str]:
        """Readable lines describing the vocabulary (for the CLI)."""
        meta = self.meta
        lines = [
            f"source: {meta.get('source')}  rows: {meta.get('row_count'):,}  "
            f"min_count: {meta['params'].get('min_count')}  max_size: {meta['params'].get('max_size')}",
            f"content hash: {self.content_hash}",
            "categorical columns (values kept / rows in OOV / nulls; most frequent):",
        ]
        for name, cv in self.columns.items():
            top = ", ".join(f"{v} ({c:,})" for v, c in zip(cv.values[:3], cv.counts[:3]))
            lines.append(
                f"  {name:<18} {len(cv.values):>7,} kept {cv.oov_count:>8,} oov {cv.null_count:>8,} null   {top}"
            )
        if self.numeric:
            lines.append("numeric columns (mean ± std [min, max]; missing):")
        for name, st in self.numeric.items():
            lines.append(
                f"  {name:<18} {st.mean:>12.4g} ± {st.std:<10.4g} [{st.min}, {st.max}]; "
                f"{st.missing:,} missing{' (log1p)' if st.log1p else ''}"
            )
        return lines


# ------------------------------------------------------------------ normalisation


def normalize_arrow(
    values: pa.Array | pa.ChunkedArray, *, trim: bool = False, lowercase: bool = False
) -> pa.Array:
    """String form of categorical values, normalised as at build time (Arrow side)."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = pc.cast(arr, pa.string())
    if trim:
        arr = pc.utf8_trim(arr, characters=" ")
    if lowercase:
        arr = pc.utf8_lower(arr)
    return arr


def normalize_spark(column: Column, *, trim: bool = False, lowercase: bool = False) -> Column:
    """The same normalisation as :func:`normalize_arrow`, as a Spark expression."""
    from pyspark.sql import functions as F

    out = column.cast("string")
    if trim:
        out = F.trim(out)
    if lowercase:
        out = F.lower(out)
    return out


# ---------------------------------------------------------------- schema checks

_CATEGORICAL_TYPES = ("string", "varchar", "char", "int", "bigint", "smallint", "tinyint", "boolean")
_NUMERIC_TYPES = ("int", "bigint", "smallint", "tinyint", "float", "double", "decimal")


def type_family(simple_type: str) -> str:
    """``string``, ``integer``, ``float``, ``boolean``, … of a Spark type's simple string."""
    kind = simple_type.split("(")[0]
    if kind in ("string", "varchar", "char"):
        return "string"
    if kind in ("int", "bigint", "smallint", "tinyint"):
        return "integer"
    if kind in ("float", "double", "decimal"):
        return "float"
    return kind


def check_columns(
    schema: StructType,
    table: str,
    *,
    categorical: Sequence[str],
    numeric: Sequence[str],
    ids: Sequence[str] = (),
    trained: Mapping[str, str] | None = None,
) -> None:
    """Raise :class:`SchemaError` if the declared columns do not fit ``schema``.

    ``trained`` maps columns to their Spark types when the vocabulary was built
    (a bundle's ``source_types``): a categorical whose type family changed since
    (string ↔ integer ↔ boolean: its values would no longer match the vocabulary)
    or a numeric that is no longer numeric is refused, naming both types.
    Runs on the schema only — no Spark job.
    """
    types = {f.name: f.dataType.simpleString() for f in schema.fields}
    declared = list(categorical) + list(numeric) + list(ids)
    trained = trained or {}
    if not categorical and not numeric:
        raise SchemaError("no columns declared: set columns.categorical and/or columns.numeric")
    missing = [c for c in dict.fromkeys(declared) if c not in types]
    if missing:
        at_training = [f"{c} {trained[c]}" for c in missing if c in trained]
        raise SchemaError(
            f"{table} lacks column(s) {', '.join(missing)}; it has: {', '.join(types)}"
            + (f" (the model was trained with {', '.join(at_training)})" if at_training else "")
        )
    for name in list(categorical) + list(numeric):
        before = trained.get(name)
        if before is None or type_family(before) == type_family(types[name]):
            continue
        if name in categorical or type_family(types[name]) not in ("integer", "float"):
            raise SchemaError(
                f"{'categorical' if name in categorical else 'numeric'} column '{name}' of {table} is "
                f"{types[name]} now but was {before} when the vocabulary was built; cast it back to {before} "
                "(e.g. with source.schema), or rebuild the vocabulary and retrain"
            )
    for name in categorical:
        kind = types[name].split("(")[0]
        if kind not in _CATEGORICAL_TYPES:
            raise SchemaError(
                f"categorical column '{name}' of {table} has type {types[name]}; categoricals must "
                "be string, integer or boolean (cast it, or declare it numeric)"
            )
    for name in numeric:
        kind = types[name].split("(")[0]
        if kind not in _NUMERIC_TYPES:
            raise SchemaError(
                f"numeric column '{name}' of {table} has type {types[name]}, which is not numeric; "
                "cast it to double, or declare it categorical"
            )


# ------------------------------------------------------------------------- build


def _signed_log1p(x: Column) -> Column:
    from pyspark.sql import functions as F

    return F.signum(x) * F.log1p(F.abs(x))


def build_vocabulary(
    spark: SparkSession,
    df: DataFrame,
    cfg: Config,
    *,
    source: str,
    files: list[str] | None = None,
) -> Vocabulary:
    """Count every categorical and summarise every numeric in **one** pass over ``df``.

    Two engines make the same pass (``vocab.engine``):

    * ``spark`` — each row is exploded into one ``(column id, value, x)`` entry per
      declared column and a single ``groupBy(column id, value)`` aggregates them
      all: categorical groups give value counts, each numeric column is one group
      with its count / nulls / NaN / ±inf / mean / std / min / max. Works on any
      source (CSV, catalog tables, Delta through the connector).
    * ``arrow`` — for Parquet files (a Parquet path, or a Delta table read through
      delta-rs), Spark distributes the data ``files`` over its executors and each
      task reads them with pyarrow, counting dictionary-encoded columns natively
      and keeping mergeable numeric moments; Spark merges the partial counts.
      Several times faster than the row path (``benchmarks/vocab_bench.py``).

    ``auto`` (default) takes ``arrow`` when ``files`` are given, else ``spark``.
    Both give the same table; the small merged result is cut by
    ``min_count``/``max_size`` and numbered on the driver.
    """
    check_columns(df.schema, source, categorical=cfg.columns.categorical, numeric=cfg.columns.numeric,
                  ids=cfg.columns.id)
    types = {c: df.schema[c].dataType.simpleString() for c in cfg.feature_columns}
    engine = cfg.vocab.engine
    if engine == "arrow" and files is None:
        raise VocabError(
            f"vocab.engine=arrow needs a Parquet or Delta path source; {source} is neither "
            "(use vocab.engine=auto or spark)"
        )
    if files is not None and engine in ("auto", "arrow"):
        kept, totals = _count_arrow(spark, df, cfg, files)
    else:
        kept, totals = _count_spark(df, cfg)
    row_count = totals.get(0, 0)
    if row_count == 0:
        raise VocabError(f"source {source} has no rows; nothing to build a vocabulary from")
    if cfg.columns.categorical and cfg.vocab.min_count > row_count:
        raise VocabError(
            f"vocab.min_count={cfg.vocab.min_count} is larger than the {row_count:,} row(s) of {source}: every "
            "categorical value would go to the out-of-vocabulary row; lower vocab.min_count"
        )
    return _assemble(cfg, kept, totals, row_count, source, types)


def _count_spark(df: DataFrame, cfg: Config) -> tuple[pa.Table, dict[int, int]]:
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
    return kept, totals


_PARTIAL_SCHEMA = (
    "cid INT, value STRING, n LONG, n_x LONG, nans LONG, pos_inf LONG, neg_inf LONG, "
    "n_fin LONG, mean DOUBLE, m2 DOUBLE, min DOUBLE, max DOUBLE"
)


def _count_arrow(
    spark: SparkSession, df: DataFrame, cfg: Config, files: list[str]
) -> tuple[pa.Table, dict[int, int]]:
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import to_arrow_schema

    if not files:
        return pa.table({"cid": pa.array([], pa.int32())}), {}
    wanted = list(dict.fromkeys(cfg.columns.categorical + cfg.columns.numeric))
    schema = to_arrow_schema(df.select(*[f"`{c}`" for c in wanted]).schema, timezone="UTC")
    spec = _ArrowCountSpec(
        categorical=tuple(cfg.columns.categorical),
        numeric=tuple(cfg.columns.numeric),
        log1p=tuple(cfg.columns.log1p),
        trim=cfg.vocab.trim,
        lowercase=cfg.vocab.lowercase,
        schema_bytes=schema.serialize().to_pybytes(),
    )
    tasks = max(1, min(len(files), spark.sparkContext.defaultParallelism * 2))
    paths = spark.createDataFrame([(f,) for f in files], "file STRING").repartition(tasks)
    partials = paths.mapInArrow(spec.count_files, _PARTIAL_SCHEMA)
    # One job: categorical partial counts merge by (cid, value); numeric moments and
    # row counts carry a per-task key in `value`, so they pass through unmerged and
    # are combined on the driver (Chan's formula needs more than a sum).
    ncat = len(cfg.columns.categorical)
    moment_cols = ["n_x", "nans", "pos_inf", "neg_inf", "n_fin", "mean", "m2", "min", "max"]
    merged = partials.groupBy("cid", "value").agg(
        F.sum("n").alias("n"), *[F.first(c).alias(c) for c in moment_cols]
    )
    cid, value = F.col("cid"), F.col("value")
    table = merged.where(
        (cid < 0) | (cid >= ncat) | value.isNull() | (F.col("n") >= cfg.vocab.min_count)
    ).toArrow()
    records = table.to_pylist()
    row_count = sum(int(r["n"]) for r in records if r["cid"] < 0)
    kept_cats = table.filter(pc.and_(pc.greater_equal(table["cid"], 0), pc.less(table["cid"], ncat)))
    numeric_rows = _merge_moments([r for r in records if r["cid"] >= ncat])
    totals = {i: row_count for i in range(ncat + len(cfg.columns.numeric))}
    kept = pa.concat_tables(
        [kept_cats.select(["cid", "value", "n"]), pa.Table.from_pylist(numeric_rows)], promote_options="permissive"
    )
    return kept, totals


def _merge_moments(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge per-task numeric moments (Chan et al.) into one record per column."""
    merged: dict[int, dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: (r["cid"], r["n"], r["mean"] or 0.0)):
        m = merged.get(r["cid"])
        if m is None:
            merged[r["cid"]] = dict(r)
            continue
        for k in ("n", "n_x", "nans", "pos_inf", "neg_inf"):
            m[k] += r[k]
        na, nb = m["n_fin"], r["n_fin"]
        if nb:
            if na:
                delta = r["mean"] - m["mean"]
                total = na + nb
                m["mean"] += delta * nb / total
                m["m2"] += r["m2"] + delta * delta * na * nb / total
                m["min"], m["max"] = min(m["min"], r["min"]), max(m["max"], r["max"])
            else:
                m.update(mean=r["mean"], m2=r["m2"], min=r["min"], max=r["max"])
            m["n_fin"] = na + nb
    out = []
    for cid in sorted(merged):
        m = merged[cid]
        fin = m.pop("n_fin")
        m2 = m.pop("m2")
        m["std"] = math.sqrt(max(m2, 0.0) / fin) if fin else None
        if not fin:
            m["mean"] = m["min"] = m["max"] = None
        m["value"] = None
        out.append(m)
    return out


@dataclass(frozen=True)
class _ArrowCountSpec:
    """What an executor needs to count Parquet files with pyarrow (pickled to tasks)."""

    categorical: tuple[str, ...]
    numeric: tuple[str, ...]
    log1p: tuple[str, ...]
    trim: bool
    lowercase: bool
    schema_bytes: bytes

    def count_files(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq

        schema = pa.ipc.read_schema(pa.py_buffer(self.schema_bytes))
        counts: list[list[pa.Table]] = [[] for _ in self.categorical]
        moments = [_Moments() for _ in self.numeric]
        total_rows = 0
        for batch in batches:
            for path in batch.column(0).to_pylist():
                from embedlib.layout import local_path

                pf = pq.ParquetFile(local_path(path) or path, read_dictionary=list(self.categorical))
                present = set(pf.schema_arrow.names)
                self._check_types(pf.schema_arrow, schema, path)
                for rg in range(pf.num_row_groups):
                    table = pf.read_row_group(rg, columns=[c for c in schema.names if c in present])
                    rows = table.num_rows
                    total_rows += rows
                    for i, name in enumerate(self.categorical):
                        col = table.column(name) if name in present else pa.nulls(rows, pa.string())
                        counts[i].append(self._value_counts(col, schema.field(name).type))
                    for j, name in enumerate(self.numeric):
                        col = table.column(name) if name in present else pa.nulls(rows, pa.float64())
                        moments[j].add(col, signed_log1p=name in self.log1p)
        for i in range(len(self.categorical)):
            if not counts[i]:
                continue
            merged = pa.concat_tables(counts[i]).group_by("value").aggregate([("n", "sum")])
            schema_out = _partial_arrow_schema()
            rows = merged.num_rows
            arrays = {
                "cid": pa.array([i] * rows, pa.int32()),
                "value": merged.column("value").combine_chunks().cast(pa.string()),
                "n": merged.column("n_sum").combine_chunks(),
            }
            yield pa.RecordBatch.from_arrays(
                [arrays.get(f.name, pa.nulls(rows, f.type)) for f in schema_out], schema=schema_out
            )
        base = len(self.categorical)
        task = uuid.uuid4().hex
        rows_out = [{**m.record(base + j), "value": task} for j, m in enumerate(moments) if m.n]
        rows_out.append({"cid": -1, "value": task, "n": total_rows})
        yield pa.RecordBatch.from_pylist(rows_out, schema=_partial_arrow_schema())

    def _check_types(self, found: pa.Schema, expected: pa.Schema, path: str) -> None:
        """Every file must hold each column with the source's type (numerics: any number type)."""
        for name in (*self.categorical, *self.numeric):
            if name not in found.names:
                continue
            have_t, want_t = found.field(name).type, expected.field(name).type
            if pa.types.is_dictionary(have_t):
                have_t = have_t.value_type
            have, want = _arrow_family(have_t), _arrow_family(want_t)
            numbers = ("integer", "float")
            if have != want and not (name in self.numeric and have in numbers and want in numbers):
                raise SchemaError(
                    f"column '{name}' is {have_t} in file {path} but "
                    f"{expected.field(name).type} in the source's schema (Spark took it from the other "
                    "files); the files of one source must agree on each column's type: rewrite that file "
                    f"with '{name}' as {expected.field(name).type}, or the others with its type"
                )

    def _value_counts(self, col: pa.ChunkedArray, target: pa.DataType) -> pa.Table:
        parts = []
        for chunk in col.chunks:
            if pa.types.is_dictionary(chunk.type):
                vc = pc.value_counts(chunk.indices)
                values = pc.take(chunk.dictionary, vc.field(0))
                parts.append((values, vc.field(1)))
            else:
                vc = pc.value_counts(chunk)
                parts.append((vc.field(0), vc.field(1)))
        tables = []
        for values, n in parts:
            if values.type != target and not pa.types.is_string(target):
                values = pc.cast(values, target)
            values = normalize_arrow(values, trim=self.trim, lowercase=self.lowercase)
            tables.append(pa.table({"value": values.cast(pa.string()), "n": n.cast(pa.int64())}))
        if not tables:
            return pa.table({"value": pa.array([], pa.string()), "n": pa.array([], pa.int64())})
        return pa.concat_tables(tables)


def _arrow_family(t: pa.DataType) -> str:
    """The :func:`type_family` of an Arrow type (dictionaries by their values)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "float"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_boolean(t):
        return "boolean"
    return str(t)


def _partial_arrow_schema() -> pa.Schema:
    return pa.schema(
        [("cid", pa.int32()), ("value", pa.string())]
        + [(k, pa.int64()) for k in ("n", "n_x", "nans", "pos_inf", "neg_inf", "n_fin")]
        + [(k, pa.float64()) for k in ("mean", "m2", "min", "max")]
    )


class _Moments:
    """Count, NaN/inf counts and mergeable moments of one numeric column."""

    def __init__(self) -> None:
        self.n = self.n_x = self.nans = self.pos_inf = self.neg_inf = self.n_fin = 0
        self.mean = self.m2 = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, col: pa.ChunkedArray, *, signed_log1p: bool) -> None:
        arr = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
        if signed_log1p:
            arr = np.sign(arr) * np.log1p(np.abs(arr))
        self.n += len(arr)
        self.n_x += len(arr) - col.null_count
        nan_mask = np.isnan(arr)
        self.nans += int(nan_mask.sum()) - col.null_count
        self.pos_inf += int(np.count_nonzero(arr == np.inf))
        self.neg_inf += int(np.count_nonzero(arr == -np.inf))
        fin = arr[np.isfinite(arr)]
        if not len(fin):
            return
        nb, mb = len(fin), float(fin.mean())
        m2b = float(((fin - mb) ** 2).sum())
        na = self.n_fin
        total = na + nb
        delta = mb - self.mean
        self.mean += delta * nb / total
        self.m2 += m2b + delta * delta * na * nb / total
        self.n_fin = total
        self.min, self.max = min(self.min, float(fin.min())), max(self.max, float(fin.max()))

    def record(self, cid: int) -> dict[str, Any]:
        return {
            "cid": cid, "value": None, "n": self.n, "n_x": self.n_x, "nans": self.nans,
            "pos_inf": self.pos_inf, "neg_inf": self.neg_inf, "n_fin": self.n_fin,
            "mean": self.mean, "m2": self.m2,
            "min": self.min if self.n_fin else None, "max": self.max if self.n_fin else None,
        }


def _assemble(
    cfg: Config, kept: pa.Table, totals: Mapping[int, int], row_count: int, source: str,
    types: Mapping[str, str],
) -> Vocabulary:
    cats, nums = cfg.columns.categorical, cfg.columns.numeric
    kept = kept.select(["cid", "value", "n"] + [c for c in kept.column_names if c not in ("cid", "value", "n")])
    by_cid = {int(r["cid"]): r for r in kept.filter(pc.greater_equal(kept["cid"], len(cats))).to_pylist()}
    columns: dict[str, ColumnVocab] = {}
    for i, name in enumerate(cats):
        part = kept.filter(pc.equal(kept["cid"], i)).select(["value", "n"])
        nulls = int(pc.sum(part.filter(pc.is_null(part["value"]))["n"]).as_py() or 0)
        part = part.filter(pc.is_valid(part["value"]))
        # count descending, then value ascending in UTF-8 byte order (Arrow's string order)
        part = part.take(pc.sort_indices(part, sort_keys=[("n", "descending"), ("value", "ascending")]))
        if cfg.vocab.max_size is not None:
            part = part.slice(0, cfg.vocab.max_size)
        values = part["value"].to_pylist()
        counts = [int(c) for c in part["n"].to_pylist()]
        oov = int(totals.get(i, 0)) - nulls - sum(counts)
        columns[name] = ColumnVocab(
            name=name, values=tuple(values), counts=tuple(counts), null_count=nulls, oov_count=oov
        )
        if len(values) <= 1:
            why = ""
            if not values:
                why = (f" (its {oov:,} non-null value(s) are all rarer than vocab.min_count={cfg.vocab.min_count})"
                       if oov else " (every value is null)")
            log.warning(
                "categorical column '%s' has %d value(s) in its vocabulary%s; it carries no information",
                name,
                len(values),
                why,
            )
    numeric: dict[str, NumericStats] = {}
    for j, name in enumerate(nums):
        rec = by_cid[len(cats) + j]
        n_x, nans, pinf, ninf = (int(rec[k]) for k in ("n_x", "nans", "pos_inf", "neg_inf"))
        if (pinf or ninf) and cfg.vocab.inf_policy == "error":
            raise VocabError(
                f"numeric column '{name}' of {source} has {pinf + ninf:,} infinite value(s) "
                f"({pinf:,} +inf, {ninf:,} -inf); clean them, or set vocab.inf_policy=null "
                "to treat them as missing"
            )
        stats = NumericStats(
            rows=row_count,
            nulls=row_count - n_x + (pinf + ninf),
            nans=nans,
            pos_inf=pinf,
            neg_inf=ninf,
            mean=float(rec["mean"]) if rec["mean"] is not None else 0.0,
            std=float(rec["std"]) if rec["std"] is not None else 0.0,
            min=rec["min"],
            max=rec["max"],
            log1p=name in cfg.columns.log1p,
        )
        if stats.std == 0.0:
            log.warning("numeric column '%s' is constant or empty; it is standardized with scale 1", name)
        numeric[name] = stats
    params = {
        "min_count": cfg.vocab.min_count,
        "max_size": cfg.vocab.max_size,
        "trim": cfg.vocab.trim,
        "lowercase": cfg.vocab.lowercase,
        "inf_policy": cfg.vocab.inf_policy,
    }
    meta: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "source": source,
        "row_count": row_count,
        "params": params,
        "categorical": list(cats),
        "numeric_columns": list(nums),
        "numeric": {k: asdict(v) for k, v in numeric.items()},
        "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source_types": dict(types),  # Spark types at build time; not part of the content hash
    }
    vocab = Vocabulary(columns=columns, numeric=numeric, meta=meta)
    meta["content_hash"] = content_hash(vocab)
    return vocab


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return format(value, ".12g")
    return value


def content_hash(vocab: Vocabulary) -> str:
    """sha256 of what the vocabulary means: parameters, every (column, value, index,
    count) row and the numeric statistics (floats to 12 significant digits, so the
    last bits of a distributed sum cannot change it). Build time and source are
    not part of it."""
    h = hashlib.sha256()
    header = {
        "schema_version": SCHEMA_VERSION,
        "row_count": vocab.meta["row_count"],
        "params": vocab.meta["params"],
        "categorical": list(vocab.columns),
        "numeric": {k: {f: _fmt(v) for f, v in asdict(s).items()} for k, s in vocab.numeric.items()},
    }
    h.update(json.dumps(header, sort_keys=True).encode())
    for rec in _iter_rows(vocab):
        h.update(json.dumps(rec, ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def _iter_rows(vocab: Vocabulary) -> Iterable[list[Any]]:
    for name, cv in vocab.columns.items():
        yield [name, None, NULL_INDEX, cv.null_count]
        yield [name, None, OOV_INDEX, cv.oov_count]
        for i, (v, c) in enumerate(zip(cv.values, cv.counts)):
            yield [name, v, i + FIRST_INDEX, c]


# ----------------------------------------------------------------------------- job


def write_vocabulary(spark: SparkSession, vocab: Vocabulary, path: str) -> None:
    """Write the vocabulary table (one file, one commit) with its metadata."""
    from embedlib.tables import write_table

    frame = spark.createDataFrame(vocab.to_arrow()).coalesce(1)
    write_table(spark, frame, path, mode="overwrite", user_metadata=vocab.meta)


def run_vocab_job(spark: SparkSession, cfg: Config) -> Vocabulary:
    """Read the source, build the vocabulary and write it to ``<run>/vocab``."""
    from embedlib.tables import check_writable, read_source, source_files

    check_writable(spark, cfg.layout.vocab)
    source = cfg.source.table or str(cfg.source.path)
    df = read_source(spark, cfg.source)
    files = source_files(spark, cfg.source, cfg.feature_columns)
    vocab = build_vocabulary(spark, df, cfg, source=source, files=files)
    write_vocabulary(spark, vocab, cfg.layout.vocab)
    log.info(
        "vocabulary of %d categorical and %d numeric column(s) over %d rows written to %s (hash %s)",
        len(vocab.columns),
        len(vocab.numeric),
        vocab.meta["row_count"],
        cfg.layout.vocab,
        vocab.content_hash[:12],
    )
    return vocab
