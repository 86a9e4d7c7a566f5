"""Vocabularies built in one distributed pass (``embedlib vocab``).

=====================  =============================================================
module                 owns
=====================  =============================================================
``vocab.spark_engine`` counting with Spark SQL (any source), or pyarrow inside tasks
``vocab.build``        the engine's choice, one counting pass over a DataFrame
``vocab.update``       ``vocab --update``: new counts merged without moving an index
``vocab.job``          ``embedlib vocab``: run, write and load a run's vocabulary
=====================  =============================================================

The value objects, the cut and the content hash are :mod:`embedlib.core.vocab`.
"""

from __future__ import annotations

from embedlib.spark.vocab.build import build_vocabulary
from embedlib.spark.vocab.job import load_vocabulary, run_vocab_job, write_vocabulary
from embedlib.spark.vocab.spark_engine import normalize_spark

__all__ = ["build_vocabulary", "load_vocabulary", "normalize_spark", "run_vocab_job", "write_vocabulary"]
