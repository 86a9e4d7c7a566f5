"""The core layer: no pyspark anywhere in it.

Configuration, vocabularies and their Arrow counting engine, encoding, the model and its heads,
the training loop and its local launch, the bundle, and the one scoring function
(:func:`embedlib.core.output.build_output`, an Arrow batch → the scores table's columns) with its
pandas adapter (:func:`embedlib.core.output.score_pandas`). ``pip install embedlib`` (no extras)
fits and scores pandas frames on this layer alone; the Spark layer (:mod:`embedlib.spark`) and the
front doors are built on it. ``tests/test_architecture.py`` holds the rule.
"""
