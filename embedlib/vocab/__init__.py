"""Vocabularies and numeric statistics, built in one distributed pass.

=====================  =============================================================
module                 owns
=====================  =============================================================
``vocab.model``        the value objects scoring imports (:class:`Vocabulary`,
                       :class:`ColumnVocab`, :class:`NumericStats`), normalisation;
                       no Spark, no torch
``vocab.schema``       declared columns against a table's schema (vocab, train, score)
``vocab.counts``       the counting engines' interface
``vocab.spark_engine`` counting with Spark SQL (any source)
``vocab.arrow_engine`` counting Parquet files with pyarrow inside Spark tasks
``vocab.build``        engine choice, cut, numbering, content hash, the job
=====================  =============================================================

The index convention lives in :mod:`embedlib.indices` and is re-exported here.
"""

from __future__ import annotations

from embedlib.indices import FIRST_INDEX, NULL_INDEX, OOV_INDEX
from embedlib.vocab.build import build_vocabulary
from embedlib.vocab.cut import build_vocabulary_in_memory, content_hash
from embedlib.vocab.job import load_vocabulary, run_vocab_job, write_vocabulary
from embedlib.vocab.model import (
    SCHEMA_VERSION,
    VOCAB_SCHEMA,
    ColumnVocab,
    NumericStats,
    SchemaError,
    VocabError,
    Vocabulary,
    normalize_arrow,
)
from embedlib.vocab.schema import check_columns, type_family
from embedlib.vocab.spark_engine import normalize_spark

__all__ = [
    "FIRST_INDEX",
    "NULL_INDEX",
    "OOV_INDEX",
    "SCHEMA_VERSION",
    "VOCAB_SCHEMA",
    "ColumnVocab",
    "NumericStats",
    "SchemaError",
    "VocabError",
    "Vocabulary",
    "build_vocabulary",
    "load_vocabulary",
    "build_vocabulary_in_memory",
    "check_columns",
    "content_hash",
    "normalize_arrow",
    "normalize_spark",
    "run_vocab_job",
    "type_family",
    "write_vocabulary",
]
