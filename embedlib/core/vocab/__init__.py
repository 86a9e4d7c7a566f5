"""Vocabularies and numeric statistics without Spark: the value objects, the schema checks, the
counts and the Arrow counting engine, the cut and the content hash.

=====================  =============================================================
module                 owns
=====================  =============================================================
``vocab.model``        the value objects scoring imports (:class:`Vocabulary`,
                       :class:`ColumnVocab`, :class:`NumericStats`), normalisation
``vocab.schema``       declared columns against a table's schema (vocab, train, score)
``vocab.counts``       :class:`Counts`, what every counting engine returns
``vocab.arrow_engine`` counting Arrow tables and Parquet files with pyarrow
``vocab.cut``          counts → vocabulary: the cut, numbering, statistics, content hash
=====================  =============================================================

The index convention lives in :mod:`embedlib.core.indices` and is re-exported here. The distributed
pass (``embedlib vocab``) is :mod:`embedlib.spark.vocab`.
"""

from __future__ import annotations

from embedlib.core.indices import FIRST_INDEX, NULL_INDEX, OOV_INDEX
from embedlib.core.vocab.cut import build_vocabulary_in_memory, content_hash
from embedlib.core.vocab.model import (
    SCHEMA_VERSION,
    VOCAB_SCHEMA,
    ColumnVocab,
    NumericStats,
    SchemaError,
    VocabError,
    Vocabulary,
    normalize_arrow,
)
from embedlib.core.vocab.schema import check_columns, type_family

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
    "build_vocabulary_in_memory",
    "check_columns",
    "content_hash",
    "normalize_arrow",
    "type_family",
]
