"""Which kind of SparkSession a function was handed: classic, or Spark Connect.

A Spark Connect session (Databricks serverless, standard-access clusters, Databricks Connect,
``SparkSession.builder.remote``) has no ``SparkContext``, no broadcast variables, no accumulators
and no JVM on the client. embedlib is written against the DataFrame API both kinds share; the few
places that use what only a classic session has ask :func:`is_connect` first. No pyspark import.
"""

from __future__ import annotations

from typing import Any

__all__ = ["is_connect"]


def is_connect(spark: Any) -> bool:
    """Whether ``spark`` (a session, or a DataFrame) is Spark Connect's."""
    return type(spark).__module__.startswith("pyspark.sql.connect")
