"""``embedlib vocab``: read the source, build (or ``--update``) the vocabulary, write it; read it back.

The Spark layer's vocabulary table: :func:`run_vocab_job`, :func:`write_vocabulary` and
:func:`load_vocabulary` (through the session's Delta engine). Without Spark,
``Vocabulary.load_delta`` reads the same table with delta-rs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from embedlib.vocab.build import build_vocabulary
from embedlib.vocab.model import VocabError, Vocabulary
from embedlib.vocab.update import check_extendable, update_vocabulary

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from embedlib.config import Config

__all__ = ["load_vocabulary", "run_vocab_job", "write_vocabulary"]

log = logging.getLogger(__name__)


def load_vocabulary(spark: SparkSession, path: str) -> Vocabulary:
    """Load a vocabulary Delta table through the session (connector or delta-rs)."""
    from embedlib.tables import commit_metadata, read_table

    meta = commit_metadata(spark, path)
    return Vocabulary.from_arrow(read_table(spark, path).toArrow(), meta)


def write_vocabulary(spark: SparkSession, vocab: Vocabulary, path: str) -> None:
    """Write the vocabulary table (one file, one commit) with its metadata."""
    from embedlib.tables import write_table

    frame = spark.createDataFrame(vocab.to_arrow()).coalesce(1)
    write_table(spark, frame, path, mode="overwrite", user_metadata=vocab.meta)


def run_vocab_job(spark: SparkSession, cfg: Config, *, update: bool = False) -> Vocabulary:
    """Read the source, build the vocabulary and write it to ``<run>/vocab``; with ``update``, count
    the source into the vocabulary already there instead (:mod:`embedlib.vocab.update`)."""
    from embedlib.tables import check_writable, delta_version, read_source, source_files, use_engine

    use_engine(spark, cfg.delta)
    check_writable(spark, cfg.layout.vocab)
    old, version = None, None
    if update:
        version = delta_version(spark, cfg.layout.vocab)
        if version is None:
            raise VocabError(f"vocab --update: there is no vocabulary at {cfg.layout.vocab} to update; build one "
                             "first (embedlib vocab, without --update)")
        old = load_vocabulary(spark, cfg.layout.vocab)
        check_extendable(old, cfg, cfg.layout.vocab)
    source = cfg.source.table or str(cfg.source.path)
    df = read_source(spark, cfg.source)
    files = source_files(spark, cfg.source, cfg.feature_columns)
    if old is None:
        vocab = build_vocabulary(spark, df, cfg, source=source, files=files)
    else:
        vocab = update_vocabulary(spark, old, df, cfg, source=source, files=files,
                                  extends={"content_hash": old.content_hash, "version": version})
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
