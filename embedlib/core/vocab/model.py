"""The vocabulary value objects: what scoring imports. No Spark, no torch.

The index convention is defined in :mod:`embedlib.core.indices` (0 null, 1 out of
vocabulary, 2.. the values by count descending, then value ascending in UTF-8
byte order). Values are compared as strings: Spark's ``CAST(x AS STRING)`` for
integer and boolean columns (Arrow's cast gives the same text), then the
configured normalisation — none by default; ``trim`` strips ASCII spaces at both
ends (Spark's ``trim``), ``lowercase`` folds case. The empty string is a value,
not a null.

The vocabulary table is ``(column, value, index, count)``, one row per index
including the null row (index 0, its count the number of nulls) and the OOV row
(index 1, its count the number of values that went there); both have a null
``value``. Its metadata — source, row count, parameters, build time, numeric
statistics, the source's Spark type of every declared column (``source_types``)
and a content hash — is the JSON ``userMetadata`` of the commit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedlib.core.indices import FIRST_INDEX, NULL_INDEX, OOV_INDEX

if TYPE_CHECKING:
    pass

__all__ = [
    "SCHEMA_VERSION",
    "VOCAB_SCHEMA",
    "ColumnVocab",
    "NumericStats",
    "SchemaError",
    "VocabError",
    "Vocabulary",
    "normalize_arrow",
]

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
    def load_delta(cls, path: str) -> Vocabulary:
        """Load a vocabulary Delta table with delta-rs only — no Spark."""
        from embedlib.core.delta import is_delta_table, open_delta
        from embedlib.core.layout import check_path, local_path

        check_path(path, what="vocabulary table")
        location = local_path(path) or path
        if not is_delta_table(location):
            raise VocabError(f"no vocabulary table at {path}; run `embedlib vocab` first")
        table = open_delta(location)
        history = table.history(1)
        meta = json.loads(history[0].get("userMetadata") or "{}") if history else {}
        return cls.from_arrow(pa.table(table.to_pyarrow_table()), meta)

    def summary(self) -> list[str]:
        """Readable lines describing the vocabulary (for the CLI)."""
        meta = self.meta
        lines = [
            f"source: {meta.get('source')}  rows: {meta.get('row_count'):,}  "
            f"min_count: {meta['params'].get('min_count')}  max_size: {meta['params'].get('max_size')}",
            f"content hash: {self.content_hash}" + (
                f"  (extends version {meta['extends'].get('version')}, hash {str(meta['extends'].get('content_hash'))[:12]})"
                if meta.get("extends") else ""),
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


