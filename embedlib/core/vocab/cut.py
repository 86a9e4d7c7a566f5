"""A vocabulary from counts: the cut by ``min_count``/``max_size``, the numbering by the convention of
:mod:`embedlib.core.indices`, the statistics of numerics, the content hash. Core: no pyspark.

:func:`build_vocabulary_in_memory` counts a table in this process (pyarrow,
:mod:`embedlib.core.vocab.arrow_engine`); the Spark job's counts come from :mod:`embedlib.spark.vocab.build`.
Both end in :func:`build_from_counts`, so the same rows give the same vocabulary.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from embedlib.core.indices import FIRST_INDEX, NULL_INDEX, OOV_INDEX
from embedlib.core.vocab.arrow_engine import count_table
from embedlib.core.vocab.counts import Counts
from embedlib.core.vocab.model import SCHEMA_VERSION, ColumnVocab, NumericStats, VocabError, Vocabulary
from embedlib.core.vocab.schema import SparkSchema, check_columns, column_types

if TYPE_CHECKING:
    from embedlib.core.config import Config

__all__ = ["build_from_counts", "build_vocabulary_in_memory", "content_hash"]

log = logging.getLogger(__name__)


def build_vocabulary_in_memory(table: pa.Table, cfg: Config, *, source: str) -> Vocabulary:
    """The vocabulary of a table in memory, counted by the arrow engine without Spark; equal to
    the vocabulary job's on the same rows (its Spark types read from the Arrow schema)."""
    return build_from_counts(table.schema, cfg, source, lambda: count_table(table, cfg))


def build_from_counts(schema: SparkSchema | pa.Schema, cfg: Config, source: str, count: Callable[[], Counts]) -> Vocabulary:
    check_columns(schema, source, categorical=cfg.columns.categorical, numeric=cfg.columns.numeric,
                  ids=cfg.columns.id)
    named = column_types(schema)
    types = {c: named[c] for c in cfg.feature_columns}
    counts = count()
    row_count = counts.totals.get(0, 0)
    if row_count == 0:
        raise VocabError(f"source {source} has no rows; nothing to build a vocabulary from")
    if cfg.columns.categorical and cfg.vocab.min_count > row_count:
        raise VocabError(
            f"vocab.min_count={cfg.vocab.min_count} is larger than the {row_count:,} row(s) of {source}: every "
            "categorical value would go to the out-of-vocabulary row; lower vocab.min_count"
        )
    return _assemble(cfg, counts, row_count, source, types)


def _assemble(cfg: Config, counts: Counts, row_count: int, source: str, types: Mapping[str, str]) -> Vocabulary:
    cats, nums = cfg.columns.categorical, cfg.columns.numeric
    kept, totals = counts.kept, counts.totals
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
        value_counts = [int(c) for c in part["n"].to_pylist()]
        oov = int(totals.get(i, 0)) - nulls - sum(value_counts)
        columns[name] = ColumnVocab(
            name=name, values=tuple(values), counts=tuple(value_counts), null_count=nulls, oov_count=oov
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
