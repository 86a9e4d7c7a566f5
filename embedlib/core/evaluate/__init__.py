"""Measuring detection quality without Spark: the options, planting and metrics, the figures."""
