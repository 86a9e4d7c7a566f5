"""Launching training and ``embedlib train``.

====================  ===============================================================
module                owns
====================  ===============================================================
``train.backends``    :class:`Backend`: local, TorchDistributor, Horovod; resolved once
``train.job``         ``embedlib train``: shards → size → backend → bundle
====================  ===============================================================

The loop itself is :mod:`embedlib.core.train`.
"""

from __future__ import annotations

from embedlib.spark.train.backends import Backend, backend_name, resolve_backend
from embedlib.spark.train.job import (
    TrainResult,
    best_model,
    run_train_job,
    spec_for,
    train_on_shards,
    warm_start_of,
)

__all__ = [
    "Backend",
    "TrainResult",
    "backend_name",
    "best_model",
    "resolve_backend",
    "run_train_job",
    "spec_for",
    "train_on_shards",
    "warm_start_of",
]
