"""Training the embedding autoencoder: one loop, three ways to launch it.

====================  ===============================================================
module                owns
====================  ===============================================================
``train.collective``  how ranks talk: :class:`Collective` and its three implementations
``train.loop``        :func:`train_loop`, the only loop, and :class:`TrainJob`
``train.checkpoint``  :class:`CheckpointStore`: checkpoints and worker reports
``train.backends``    :class:`Backend`: local, TorchDistributor, Horovod; resolved once
``train.sizing``      ``model.size``: the capacity grid and the choice by validation NLL
``train.job``         ``embedlib train``: shards → size → backend → bundle
====================  ===============================================================
"""

from __future__ import annotations

from embedlib.train.backends import Backend, backend_name, resolve_backend
from embedlib.train.checkpoint import CheckpointStore, TrainState
from embedlib.train.collective import Collective, HorovodCollective, SingleProcess, TorchDistributed
from embedlib.train.errors import TrainError, TrainFailure
from embedlib.train.job import (
    TrainResult,
    best_model,
    run_train_job,
    spec_for,
    train_on_shards,
    warm_start_of,
)
from embedlib.train.loop import TrainJob, train_loop

__all__ = [
    "Backend",
    "CheckpointStore",
    "Collective",
    "HorovodCollective",
    "SingleProcess",
    "TorchDistributed",
    "TrainError",
    "TrainFailure",
    "TrainJob",
    "TrainResult",
    "TrainState",
    "backend_name",
    "best_model",
    "resolve_backend",
    "run_train_job",
    "spec_for",
    "train_loop",
    "train_on_shards",
    "warm_start_of",
]
