"""The Spark layer: everything that takes a ``SparkSession`` or a ``DataFrame``.

Written against the DataFrame API that classic Spark and Spark Connect share (``mapInArrow``,
aggregations, ``Observation``, ``spark.conf``, readers and writers, ``foreachBatch``); the few
classic-only calls ask :func:`embedlib.core.connect.is_connect` first. It imports only the core
(:mod:`embedlib.core`) below it; ``tests/test_architecture.py`` holds the rule. Sessions are
built in :mod:`embedlib.spark.session`.
"""
