"""``embedlib vocab``: read the source, build (or ``--update``) the vocabulary, write it; read it back.

The Spark layer's vocabulary table: :func:`run_vocab_job`, :func:`write_vocabulary` and
:func:`load_vocabulary` (through a run's :class:`~embedlib.spark.tables.Tables`). Without Spark,
``Vocabulary.load_delta`` reads the same table with delta-rs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from embedlib.core.vocab.model import VocabError, Vocabulary
from embedlib.spark.vocab.build import build_vocabulary
from embedlib.spark.vocab.update import check_extendable, update_vocabulary

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from embedlib.core.config import Config
    from embedlib.spark.tables import Tables

__all__ = ["load_vocabulary", "run_vocab_job", "write_vocabulary"]

log = logging.getLogger(__name__)


def load_vocabulary(tables: Tables, path: str) -> Vocabulary:
    """Load a vocabulary Delta table through a run's tables (connector or delta-rs; outside a run,
    ``open_tables(spark)``)."""
    meta = tables.commit_metadata(path)
    return Vocabulary.from_arrow(tables.read(path).toArrow(), meta)


def write_vocabulary(tables: Tables, vocab: Vocabulary, path: str) -> None:
    """Write the vocabulary table (one file, one commit) with its metadata."""
    frame = tables.spark.createDataFrame(vocab.to_arrow()).coalesce(1)
    tables.write(frame, path, mode="overwrite", user_metadata=vocab.meta)


def run_vocab_job(spark: SparkSession, cfg: Config, *, update: bool = False) -> Vocabulary:
    """Read the source, build the vocabulary and write it to ``<run>/vocab``; with ``update``, count
    the source into the vocabulary already there instead (:mod:`embedlib.spark.vocab.update`)."""
    from embedlib.spark.tables import open_tables

    tables = open_tables(spark, cfg.delta)
    tables.check_writable(cfg.layout.vocab)
    old, version = None, None
    if update:
        version = tables.version(cfg.layout.vocab)
        if version is None:
            raise VocabError(f"vocab --update: there is no vocabulary at {cfg.layout.vocab} to update; build one "
                             "first (embedlib vocab, without --update)")
        old = load_vocabulary(tables, cfg.layout.vocab)
        check_extendable(old, cfg, cfg.layout.vocab)
    source = cfg.source.table or str(cfg.source.path)
    df = tables.read_source(cfg.source)
    files = tables.source_files(cfg.source, cfg.feature_columns)
    if old is None:
        vocab = build_vocabulary(spark, df, cfg, source=source, files=files)
    else:
        vocab = update_vocabulary(spark, old, df, cfg, source=source, files=files,
                                  extends={"content_hash": old.content_hash, "version": version})
    write_vocabulary(tables, vocab, cfg.layout.vocab)
    log.info(
        "vocabulary of %d categorical and %d numeric column(s) over %d rows written to %s (hash %s)",
        len(vocab.columns),
        len(vocab.numeric),
        vocab.meta["row_count"],
        cfg.layout.vocab,
        vocab.content_hash[:12],
    )
    return vocab
