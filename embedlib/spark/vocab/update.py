"""``embedlib vocab --update``: new data counted into an existing vocabulary, no index moved.

The new rows are counted by the same engines as a build (every value, ``min_count`` 1), then
merged on the driver:

* every value already numbered keeps its index; its count grows by its count in the new rows;
* a new value whose count **in the new rows** reaches ``vocab.min_count`` gets the next index
  after the last one (new values in the build's order: count descending, then value), while
  ``vocab.max_size`` allows; every other new value is counted in the OOV row (its earlier
  occurrences were already counted there, so an old rare value is judged on new rows only);
* the null row's count, the row count and each numeric column's statistics (pooled mean, standard
  deviation, extremes and missing counts) cover both;
* the metadata records what it extends: the previous version's content hash and Delta version.

Indices past the old ones are no longer ordered by count; that only costs an adaptive softmax
head some speed (its clusters assume frequent values first), never exactness.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import pyarrow.compute as pc

from embedlib.core.vocab.cut import content_hash
from embedlib.core.vocab.model import ColumnVocab, NumericStats, VocabError, Vocabulary
from embedlib.core.vocab.schema import check_columns
from embedlib.spark.vocab.build import count_engine

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from embedlib.core.config import Config
    from embedlib.core.vocab.counts import Counts

__all__ = ["check_extendable", "merge_counts", "update_vocabulary"]

log = logging.getLogger(__name__)


def check_extendable(old: Vocabulary, cfg: Config, path: str) -> None:
    """The configuration must describe the vocabulary it updates: the same columns (in order) and
    the same normalisation and ``inf_policy`` (a value must mean what it meant)."""
    if tuple(old.categorical) != cfg.columns.categorical or tuple(old.numeric_columns) != cfg.columns.numeric:
        raise VocabError(
            f"vocab --update: the vocabulary at {path} has categorical {list(old.categorical)} and numeric "
            f"{list(old.numeric_columns)}, the configuration categorical {list(cfg.columns.categorical)} and "
            f"numeric {list(cfg.columns.numeric)}; an update keeps the columns — build a new vocabulary "
            "(embedlib vocab, without --update) for other columns"
        )
    params = old.meta.get("params", {})
    for key in ("trim", "lowercase", "inf_policy"):
        if params.get(key) != getattr(cfg.vocab, key):
            raise VocabError(f"vocab --update: vocab.{key} is {getattr(cfg.vocab, key)!r} but the vocabulary at "
                             f"{path} was built with {params.get(key)!r}; set it back, or build a new vocabulary")


def update_vocabulary(spark: SparkSession, old: Vocabulary, df: DataFrame, cfg: Config, *, source: str,
                      files: list[str] | None, extends: dict[str, Any]) -> Vocabulary:
    """``old`` extended by the rows of ``df`` (one counting pass; see the module docstring)."""
    check_columns(df.schema, source, categorical=cfg.columns.categorical, numeric=cfg.columns.numeric,
                  ids=cfg.columns.id, trained=old.meta.get("source_types"))
    every = dataclasses.replace(cfg, vocab=dataclasses.replace(cfg.vocab, min_count=1))
    counts = count_engine(cfg, files, source).count(spark, df, every, files)
    return merge_counts(old, counts, cfg, source=source, extends=extends)


def merge_counts(old: Vocabulary, counts: Counts, cfg: Config, *, source: str,
                 extends: dict[str, Any]) -> Vocabulary:
    """``old`` with ``counts`` (every value of the new rows) merged in."""
    rows = int(counts.totals.get(0, 0))
    if rows == 0:
        raise VocabError(f"vocab --update: source {source} has no rows; nothing to add")
    cats = cfg.columns.categorical
    kept = counts.kept
    columns: dict[str, ColumnVocab] = {}
    for i, name in enumerate(cats):
        part = kept.filter(pc.equal(kept["cid"], i)).select(["value", "n"])
        new = {v: int(n) for v, n in zip(part["value"].to_pylist(), part["n"].to_pylist())}
        nulls = new.pop(None, 0)
        cv = old[name]
        value_counts = [c + new.pop(v, 0) for v, c in zip(cv.values, cv.counts)]
        room = math.inf if cfg.vocab.max_size is None else max(0, cfg.vocab.max_size - len(cv.values))
        admitted = sorted(((v, n) for v, n in new.items() if n >= cfg.vocab.min_count),
                          key=lambda vn: (-vn[1], vn[0].encode("utf-8")))
        admitted = admitted[: int(min(room, len(admitted)))]
        oov = cv.oov_count + sum(new.values()) - sum(n for _, n in admitted)
        columns[name] = ColumnVocab(
            name=name, values=(*cv.values, *(v for v, _ in admitted)),
            counts=(*value_counts, *(n for _, n in admitted)), null_count=cv.null_count + nulls, oov_count=oov,
        )
        if admitted:
            log.info("column '%s': %d new value(s) numbered %d..%d", name, len(admitted), cv.size, cv.size + len(admitted) - 1)
    by_cid = {int(r["cid"]): r for r in kept.filter(pc.greater_equal(kept["cid"], len(cats))).to_pylist()}
    numeric = {name: _pooled(old.numeric[name], by_cid[len(cats) + j], rows, name, source, cfg)
               for j, name in enumerate(cfg.columns.numeric)}
    meta: dict[str, Any] = {
        **old.meta,
        "source": source,
        "row_count": int(old.meta["row_count"]) + rows,
        "numeric": {k: asdict(v) for k, v in numeric.items()},
        "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "extends": extends,
    }
    meta.pop("content_hash", None)
    vocab = Vocabulary(columns=columns, numeric=numeric, meta=meta)
    meta["content_hash"] = content_hash(vocab)
    return vocab


def _pooled(old: NumericStats, rec: dict[str, Any], rows: int, name: str, source: str, cfg: Config) -> NumericStats:
    """One numeric column's statistics over the old rows and the new ones."""
    n_x, nans, pinf, ninf = (int(rec[k]) for k in ("n_x", "nans", "pos_inf", "neg_inf"))
    if (pinf or ninf) and cfg.vocab.inf_policy == "error":
        raise VocabError(f"numeric column '{name}' of {source} has {pinf + ninf:,} infinite value(s); clean them, "
                         "or build a new vocabulary with vocab.inf_policy=null")
    new_nulls = rows - n_x + pinf + ninf
    n_old = old.rows - old.nulls - old.nans  # finite values behind mean and std
    n_new = rows - new_nulls - nans
    mean_new = float(rec["mean"]) if rec["mean"] is not None else 0.0
    std_new = float(rec["std"]) if rec["std"] is not None else 0.0
    total = n_old + n_new
    mean = (n_old * old.mean + n_new * mean_new) / total if total else 0.0
    second = (n_old * (old.std ** 2 + old.mean ** 2) + n_new * (std_new ** 2 + mean_new ** 2)) / total if total else 0.0
    extremes = [x for x in (old.min, old.max, rec["min"], rec["max"]) if x is not None]
    return NumericStats(
        rows=old.rows + rows, nulls=old.nulls + new_nulls, nans=old.nans + nans, pos_inf=old.pos_inf + pinf,
        neg_inf=old.neg_inf + ninf, mean=mean, std=math.sqrt(max(0.0, second - mean * mean)),
        min=min(extremes) if extremes else None, max=max(extremes) if extremes else None, log1p=old.log1p,
    )
