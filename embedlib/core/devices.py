"""Where the model runs, in one place: the device settings resolved (``score.device``, and the
training backends' ``train.use_gpu``), bf16 autocast (``train.precision``), and host-to-device copies
(through pinned memory on CUDA, so the copy overlaps the previous batch's kernels).

``auto`` picks CUDA when this process sees a device; naming a device that is not there is an error
that names the setting, never a silent fallback to the CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch

__all__ = ["DEVICES", "PRECISIONS", "DeviceError", "autocast", "model_device", "resolve_device", "to_device"]

#: What ``score.device`` takes.
DEVICES = ("auto", "cpu", "cuda")
#: What ``train.precision`` takes: ``bf16`` runs the training forward pass under bf16 autocast.
PRECISIONS = ("fp32", "bf16")
Precision = Literal["fp32", "bf16"]


class DeviceError(RuntimeError):
    """A device setting asks for a device this process does not have; the message names the setting."""


def resolve_device(setting: str | bool, key: str, local_rank: int = 0) -> torch.device:
    """The device ``setting`` (of configuration ``key``) means in this process: ``auto`` (CUDA when
    present, else the CPU), ``cpu``, ``cuda`` (or ``cuda:N``), or a boolean (``train.use_gpu``).
    ``local_rank`` picks among several GPUs (``local_rank % device_count``) where no index is named."""
    name = ("cuda" if setting else "cpu") if isinstance(setting, bool) else str(setting).strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name != "cuda" and not name.startswith("cuda:"):
        raise DeviceError(f"{key}={setting!r} is not a device: use one of auto, cpu, cuda (or cuda:N)")
    if not torch.cuda.is_available():
        raise DeviceError(f"{key}={setting!r} but this process sees no CUDA device "
                          f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}): "
                          f"set {key}=auto to use one where present, or cpu")
    count = torch.cuda.device_count()
    index = int(name.split(":", 1)[1]) if ":" in name else local_rank % max(count, 1)
    if index >= count:
        raise DeviceError(f"{key}={setting!r} but this process sees {count} CUDA device(s) (0..{count - 1})")
    return torch.device("cuda", index)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s parameters (the CPU for a model without any)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` (on the CPU) on ``device``: through pinned memory and an asynchronous copy on CUDA,
    as is on the CPU."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """The forward pass's precision: ``fp32`` as is, ``bf16`` under ``torch.autocast`` on ``device``'s
    type (matrix products in bf16; softmax, log-softmax and the losses stay fp32, as autocast keeps them)."""
    if precision not in PRECISIONS:
        raise DeviceError(f"train.precision={precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        yield
