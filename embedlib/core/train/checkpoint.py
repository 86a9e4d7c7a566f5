"""Training state on storage: per-epoch checkpoints and the workers' reports.

A :class:`CheckpointStore` is the one object that knows where training keeps its
files (both folders come from :class:`~embedlib.core.layout.RunLayout`): every epoch,
rank 0 writes the weights, the best weights and the Adam state as safetensors
(no pickle) plus the loop's :class:`TrainState` as JSON, then points
``latest.json`` at them; a rerun with the same fingerprint resumes there. Each
rank leaves ``running`` / ``failed`` / ``done`` in its report file, so the
driver can say which rank of a failed run died.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from embedlib.core.layout import (
    join,
    read_bytes,
    read_text,
    remove_tree,
    write_bytes_atomic,
    write_text_atomic,
)
from embedlib.core.train.errors import TrainError

if TYPE_CHECKING:
    from embedlib.core.layout import RunLayout

__all__ = ["CheckpointStore", "TrainState"]

LATEST = "latest.json"


@dataclass
class TrainState:
    """Where the loop stands; saved with every checkpoint."""

    epoch: int = 0  # epochs completed
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_loss: float = math.inf
    bad_epochs: int = 0  # epochs since the validation loss last improved by train.min_improvement
    steps: int = 0  # optimizer steps taken
    decays: int = 0  # learning-rate cuts on plateaus so far
    plateau_ref: float = math.inf  # the loss an epoch must beat by train.min_improvement
    stopped: str = ""  # "", "plateau" (converged), "budget", "epochs", "steps" or "time"


@dataclass(frozen=True)
class CheckpointStore:
    """The checkpoint folder and the worker-report folder of one training setup."""

    folder: str
    reports: str
    fingerprint: str

    @classmethod
    def for_run(cls, layout: RunLayout, fingerprint: str) -> CheckpointStore:
        return cls(folder=layout.checkpoints, reports=layout.worker_reports, fingerprint=fingerprint)

    # -- checkpoints ------------------------------------------------------------------
    def save(self, model: nn.Module, opt: torch.optim.Optimizer, state: TrainState,
             best: Mapping[str, torch.Tensor]) -> None:
        """Weights, best weights and optimizer state as safetensors; the rest as JSON."""
        from safetensors.torch import save

        tensors: dict[str, torch.Tensor] = {}
        for k, v in model.state_dict().items():
            tensors[f"model.{k}"] = v.detach().cpu().contiguous()
        for k, v in best.items():
            tensors[f"best.{k}"] = v.detach().cpu().contiguous()
        osd = opt.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for idx, pstate in osd["state"].items():
            for name, value in pstate.items():
                if torch.is_tensor(value):
                    tensors[f"opt.{idx}.{name}"] = value.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(idx), {})[name] = value
        meta = {
            "fingerprint": self.fingerprint,
            "state": asdict(state),
            "param_groups": osd["param_groups"],
            "optimizer_scalars": scalars,
        }
        name = f"epoch-{state.epoch:04d}"
        write_bytes_atomic(join(self.folder, f"{name}.safetensors"), save(tensors))
        write_text_atomic(join(self.folder, f"{name}.json"), json.dumps(meta, indent=1))
        write_text_atomic(join(self.folder, LATEST), json.dumps({"name": name, "fingerprint": self.fingerprint}))

    def load(self, model: nn.Module, opt: torch.optim.Optimizer) -> tuple[TrainState, dict[str, torch.Tensor]] | None:
        """Restore the latest checkpoint into ``model``/``opt``; None if there is none."""
        from safetensors.torch import load

        latest = self._latest()
        if latest is None:
            return None
        if latest.get("fingerprint") != self.fingerprint:
            raise TrainError(
                f"the checkpoints in {self.folder} belong to another training setup (data, model or "
                "parameters changed); delete that folder to start over, or use another run name"
            )
        meta = json.loads(read_text(join(self.folder, f"{latest['name']}.json")) or "{}")
        tensors = load(read_bytes(join(self.folder, f"{latest['name']}.safetensors")))
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        state_dict: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("opt."):
                _, idx, name = key.split(".", 2)
                state_dict.setdefault(int(idx), {})[name] = value
        for idx, scalars in meta.get("optimizer_scalars", {}).items():
            state_dict.setdefault(int(idx), {}).update(scalars)
        opt.load_state_dict({"state": state_dict, "param_groups": meta["param_groups"]})
        return TrainState(**meta["state"]), best

    def adopt(self, other: CheckpointStore) -> bool:
        """Make ``other``'s latest checkpoint this store's (its files copied, under this fingerprint), so that
        a run of the same job resumes where ``other`` stopped: the size search's winner, trained on every
        training row, is the first steps of the run it stands for. False when ``other`` has none or this
        store already has its own (a rerun resumes from that)."""
        latest = other._latest()
        if latest is None or self._latest() is not None:
            return False
        name = latest["name"]
        meta = json.loads(read_text(join(other.folder, f"{name}.json")) or "{}")
        write_bytes_atomic(join(self.folder, f"{name}.safetensors"), read_bytes(join(other.folder, f"{name}.safetensors")))
        write_text_atomic(join(self.folder, f"{name}.json"), json.dumps({**meta, "fingerprint": self.fingerprint}, indent=1))
        write_text_atomic(join(self.folder, LATEST), json.dumps({"name": name, "fingerprint": self.fingerprint}))
        return True

    def latest_steps(self) -> int:
        """The optimizer steps of the latest checkpoint (0: none yet): a run's progress, from any process."""
        latest = self._latest()
        meta = read_text(join(self.folder, f"{latest['name']}.json")) if latest else None
        return int(json.loads(meta)["state"]["steps"]) if meta else 0

    def latest_epoch(self) -> int:
        """The epoch of the latest checkpoint (0: none yet)."""
        latest = self._latest()
        return int(latest["name"].split("-")[1]) if latest else 0

    def _latest(self) -> dict[str, Any] | None:
        pointer = read_text(join(self.folder, LATEST))
        return None if pointer is None else dict(json.loads(pointer))

    # -- worker reports ----------------------------------------------------------------
    def report_path(self, rank: int) -> str:
        return join(self.reports, f"rank-{rank}.json")

    def write_report(self, rank: int, doc: Mapping[str, Any]) -> None:
        write_text_atomic(self.report_path(rank), json.dumps(dict(doc)))

    def read_report(self, rank: int) -> dict[str, Any]:
        raw = read_text(self.report_path(rank))
        return dict(json.loads(raw)) if raw else {"state": "missing"}

    def clear_reports(self) -> None:
        remove_tree(self.reports)
