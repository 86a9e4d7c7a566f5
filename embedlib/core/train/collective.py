"""How the training loop talks to its peers: rank, world size, gradient sync, all-reduce.

The same loop runs in the driver (:class:`SingleProcess`), under ``torchrun``
from ``TorchDistributor`` (:class:`TorchDistributed`, DDP over gloo or nccl) and
under ``horovod.spark.run`` (:class:`HorovodCollective`, handed the ``hvd``
module the worker imported).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

__all__ = ["Collective", "HorovodCollective", "SingleProcess", "TorchDistributed", "allreduce_min"]


class Collective(Protocol):
    """What the loop needs from its peers."""

    rank: int
    world_size: int
    device: torch.device

    def wrap(self, model: nn.Module) -> nn.Module: ...

    def optimizer(self, opt: torch.optim.Optimizer, model: nn.Module) -> torch.optim.Optimizer: ...

    def broadcast_initial(self, model: nn.Module, opt: torch.optim.Optimizer) -> None: ...

    def allreduce_sum(self, values: torch.Tensor) -> torch.Tensor: ...

    def barrier(self) -> None: ...


class SingleProcess:
    """World of one: the local backend, and the driver-side helpers."""

    rank = 0
    world_size = 1

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device or torch.device("cpu")

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def optimizer(self, opt: torch.optim.Optimizer, model: nn.Module) -> torch.optim.Optimizer:
        return opt

    def broadcast_initial(self, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        return None

    def allreduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        return values

    def barrier(self) -> None:
        return None


class TorchDistributed:
    """``torch.distributed`` after ``init_process_group``: DDP for gradients."""

    def __init__(self, device: torch.device) -> None:
        import torch.distributed as dist

        self._dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.device = device

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def optimizer(self, opt: torch.optim.Optimizer, model: nn.Module) -> torch.optim.Optimizer:
        return opt

    def broadcast_initial(self, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        # DDP broadcasts parameters when it wraps; the optimizer state (after a
        # resume every rank loaded the same checkpoint) needs nothing more.
        return None

    def allreduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        out = values.to(self.device).clone()
        self._dist.all_reduce(out, op=self._dist.ReduceOp.SUM)
        return out.cpu()

    def barrier(self) -> None:
        self._dist.barrier()


class HorovodCollective:
    """Horovod: ``hvd.DistributedOptimizer`` and explicit broadcasts."""

    def __init__(self, hvd: Any, device: torch.device) -> None:
        self.hvd = hvd
        self.rank = int(hvd.rank())
        self.world_size = int(hvd.size())
        self.device = device

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def optimizer(self, opt: torch.optim.Optimizer, model: nn.Module) -> torch.optim.Optimizer:
        wrapped = self.hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())
        # the wrapper is a new optimizer over opt's parameter groups: it takes opt's state too (a resumed
        # run's moments, and those broadcast_optimizer_state set), or Adam would start again from zero
        wrapped.load_state_dict(opt.state_dict())
        return wrapped  # type: ignore[no-any-return]

    def broadcast_initial(self, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        self.hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        # a resumed run's moments. When no rank has any, Horovod would fill the empty states by a step of zero
        # gradients, which Adam counts (its bias corrections then ran one step ahead): skipped. Decided by all
        # ranks together, so that every rank makes the same collective calls.
        if self.allreduce_sum(torch.tensor([float(bool(opt.state))])).item() > 0:
            self.hvd.broadcast_optimizer_state(opt, root_rank=0)

    def allreduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        return self.hvd.allreduce(values.cpu(), op=self.hvd.Sum)  # type: ignore[no-any-return]

    def barrier(self) -> None:
        self.hvd.allreduce(torch.zeros(1), op=self.hvd.Sum)


def allreduce_min(coll: Collective, value: int) -> int:
    """The smallest ``value`` over all ranks (gathered through a sum: one slot per rank)."""
    slots = torch.zeros(coll.world_size, dtype=torch.float64)
    slots[coll.rank] = float(value)
    return int(coll.allreduce_sum(slots).min().item())
