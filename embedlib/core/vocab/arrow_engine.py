"""Counting with pyarrow: a table in memory, or the Parquet files a Spark task is given (core: no pyspark).

The ``arrow`` counting engine (:class:`embedlib.spark.vocab.spark_engine.ArrowEngine`) runs this in Spark tasks:

For Parquet files (a Parquet path, or a Delta table read through delta-rs),
Spark spreads the data files over its executors (a table of fewer files than
task slots has each file split by row groups, so every core counts) and each
task reads them with pyarrow, counting dictionary-encoded columns natively and keeping mergeable
numeric moments; one Spark job merges the partial counts. Several times faster
than the row path (``benchmarks/vocab_bench.py``).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedlib.core.vocab.counts import Counts
from embedlib.core.vocab.model import SchemaError, normalize_arrow
from embedlib.core.vocab.schema import arrow_family

if TYPE_CHECKING:
    from embedlib.core.config import Config

__all__ = ["ArrowCountSpec", "count_table", "counts_of", "work_units"]

def work_units(files: list[str], slots: int) -> list[tuple[str, int, int]]:
    """What the counting tasks read: ``(file, part, parts)``, part ``part`` of a file being its row
    groups ``part, part + parts, …``. Each file whole when there are at least ``slots`` files; else
    each split in ``slots // len(files)`` parts, so that a table of a few large files keeps every
    slot busy."""
    parts = max(1, slots // max(1, len(files)))
    return [(f, k, parts) for f in files for k in range(parts)]


def count_table(table: pa.Table, cfg: Config) -> Counts:
    """The arrow engine's counts of a table in memory — no Spark: one "task" over the whole table,
    whose partial counts are already merged."""
    wanted = list(dict.fromkeys(cfg.columns.categorical + cfg.columns.numeric))
    spec = ArrowCountSpec.of(cfg, table.select(wanted).schema)
    partials = pa.Table.from_batches(list(spec.count_tables([table])), schema=_partial_arrow_schema())
    return counts_of(partials, cfg)


def counts_of(merged: pa.Table, cfg: Config) -> Counts:
    """Merged partial counts → :class:`Counts`: categorical values cut by ``min_count`` (the null
    group kept), numeric moments combined, the row count."""
    ncat = len(cfg.columns.categorical)
    cid = merged["cid"]
    keep = pc.or_kleene(pc.or_kleene(pc.less(cid, 0), pc.greater_equal(cid, ncat)),
                        pc.or_kleene(pc.is_null(merged["value"]), pc.greater_equal(merged["n"], cfg.vocab.min_count)))
    table = merged.filter(keep)
    records = table.filter(pc.invert(pc.and_(pc.greater_equal(table["cid"], 0), pc.less(table["cid"], ncat)))).to_pylist()
    row_count = sum(int(r["n"]) for r in records if r["cid"] < 0)
    kept_cats = table.filter(pc.and_(pc.greater_equal(table["cid"], 0), pc.less(table["cid"], ncat)))
    numeric_rows = _merge_moments([r for r in records if r["cid"] >= ncat])
    totals = {i: row_count for i in range(ncat + len(cfg.columns.numeric))}
    kept = pa.concat_tables(
        [kept_cats.select(["cid", "value", "n"]), pa.Table.from_pylist(numeric_rows)], promote_options="permissive"
    )
    return Counts(kept, totals)


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
class ArrowCountSpec:
    """What an executor needs to count Parquet files with pyarrow (pickled to tasks)."""

    categorical: tuple[str, ...]
    numeric: tuple[str, ...]
    log1p: tuple[str, ...]
    trim: bool
    lowercase: bool
    schema_bytes: bytes

    @classmethod
    def of(cls, cfg: Config, schema: pa.Schema) -> ArrowCountSpec:
        """The spec of ``cfg``'s columns, whose types are ``schema``'s (the source's)."""
        return cls(categorical=tuple(cfg.columns.categorical), numeric=tuple(cfg.columns.numeric),
                   log1p=tuple(cfg.columns.log1p), trim=cfg.vocab.trim, lowercase=cfg.vocab.lowercase,
                   schema_bytes=schema.serialize().to_pybytes())

    @property
    def schema(self) -> pa.Schema:
        return pa.ipc.read_schema(pa.py_buffer(self.schema_bytes))

    def count_files(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """``mapInArrow`` body: the partial counts of the parts of Parquet files named in ``batches``
        (``file``, ``part``, ``parts``: :func:`work_units`)."""
        yield from self.count_tables(self._row_groups(batches))

    def _row_groups(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.Table]:
        import pyarrow.parquet as pq

        from embedlib.core.layout import local_path

        schema = self.schema
        for batch in batches:
            for path, part, parts in zip(*(batch.column(i).to_pylist() for i in range(3)), strict=True):
                pf = pq.ParquetFile(local_path(path) or path, read_dictionary=list(self.categorical))
                present = set(pf.schema_arrow.names)
                self._check_types(pf.schema_arrow, schema, path)
                for rg in range(part, pf.num_row_groups, parts):
                    yield pf.read_row_group(rg, columns=[c for c in schema.names if c in present])

    def count_tables(self, tables: Iterable[pa.Table]) -> Iterator[pa.RecordBatch]:
        """Partial counts of ``tables`` (a column a table lacks counts as null): one record per
        categorical value, the moments of each numeric and the row count (keyed by a task id)."""
        schema = self.schema
        counts: list[list[pa.Table]] = [[] for _ in self.categorical]
        moments = [_Moments() for _ in self.numeric]
        total_rows = 0
        for table in tables:
            present = set(table.schema.names)
            rows = table.num_rows
            total_rows += rows
            for i, name in enumerate(self.categorical):
                col = table.column(name) if name in present else pa.chunked_array([pa.nulls(rows, pa.string())])
                counts[i].append(self._value_counts(col, schema.field(name).type))
            for j, name in enumerate(self.numeric):
                col = table.column(name) if name in present else pa.chunked_array([pa.nulls(rows, pa.float64())])
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
            have, want = arrow_family(have_t), arrow_family(want_t)
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

