"""Training the embedding autoencoder: the one loop and what it needs, without Spark.

====================  ===============================================================
module                owns
====================  ===============================================================
``train.collective``  how ranks talk: :class:`Collective` and its three implementations
``train.loop``        :func:`train_loop`, the only loop, and :class:`TrainJob`
``train.checkpoint``  :class:`CheckpointStore`: checkpoints and worker reports
``train.lazy``        :class:`LazyAdam`, sparse gradients for the wide embedding tables
``train.sizing``      ``model.size``: the capacity grid and the choice by validation NLL
``train.warm``        ``train.warm_start``: a parent bundle's weights copied by index
====================  ===============================================================

How a run is launched (local, TorchDistributor, Horovod) and ``embedlib train`` are
:mod:`embedlib.spark.train`.
"""

from __future__ import annotations

from embedlib.core.train.checkpoint import CheckpointStore, TrainState
from embedlib.core.train.collective import Collective, HorovodCollective, SingleProcess, TorchDistributed
from embedlib.core.train.errors import TrainError, TrainFailure
from embedlib.core.train.loop import TrainJob, train_loop

__all__ = [
    "CheckpointStore",
    "Collective",
    "HorovodCollective",
    "SingleProcess",
    "TorchDistributed",
    "TrainError",
    "TrainFailure",
    "TrainJob",
    "TrainState",
    "train_loop",
]
