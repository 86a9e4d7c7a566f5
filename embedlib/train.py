"""One training loop, three ways to launch it: local, TorchDistributor (DDP), Horovod.

:func:`train_loop` is the only loop. It talks to its peers through a small
:class:`Collective` (rank, world size, gradient sync, all-reduce, broadcast,
barrier), so the same code runs in the driver (:class:`SingleProcess`), under
``torchrun`` from ``TorchDistributor`` (:class:`TorchDistributed`, DDP over gloo
or nccl) and under ``horovod.spark.run`` (:class:`HorovodCollective`, handed the
``hvd`` module the worker imported).

Each rank reads its own shard files (rank r takes files r, r + world, …),
shuffles within a buffer, and runs the same number of steps per epoch as every
other rank. Every epoch ends with a validation pass over all ranks and a
checkpoint (weights, best weights, Adam state — safetensors plus JSON, no
pickle) written by rank 0; a rerun on the same run directory resumes after the
last checkpoint. Batch order and input corruption are seeded from
``(seed, epoch, rank)``, so a resumed run ends with the same weights as an
uninterrupted one on the same machine.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import nn

from embedlib.encode import Encoded, Encoder, ShardSet, read_shards
from embedlib.faults import InjectedFault, fault, kill_self
from embedlib.layout import join, read_bytes, read_text, remove_tree, write_bytes_atomic, write_text_atomic
from embedlib.model import EmbeddingAutoencoder, ModelSpec, column_nll, corrupt

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from embedlib.config import Config, TrainConfig
    from embedlib.vocab import Vocabulary

__all__ = [
    "Collective",
    "HorovodCollective",
    "SingleProcess",
    "TorchDistributed",
    "TrainError",
    "TrainFailure",
    "TrainJob",
    "TrainResult",
    "resolve_backend",
    "run_train_job",
    "train_loop",
]

log = logging.getLogger(__name__)

class TrainError(ValueError):
    """Training cannot start as configured; the message says why and what to do.

    A ValueError like every other embedlib input error, so the CLI reports it as a
    message with exit code 2 rather than a stack trace."""


class TrainFailure(RuntimeError):
    """A training worker died or failed; the message names the ranks, what each
    reported, and the checkpoint a rerun resumes from."""


# --------------------------------------------------------------------- collectives


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
        return self.hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())  # type: ignore[no-any-return]

    def broadcast_initial(self, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        self.hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        self.hvd.broadcast_optimizer_state(opt, root_rank=0)

    def allreduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        return self.hvd.allreduce(values.cpu(), op=self.hvd.Sum)  # type: ignore[no-any-return]

    def barrier(self) -> None:
        self.hvd.allreduce(torch.zeros(1), op=self.hvd.Sum)


# -------------------------------------------------------------------------- the job


@dataclass(frozen=True)
class TrainJob:
    """Everything a worker needs; pickled to workers, so plain data only."""

    spec: ModelSpec
    shards: ShardSet
    encoder: Encoder
    checkpoint_dir: str
    fingerprint: str
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    patience: int
    corruption: float
    shuffle_buffer: int
    use_gpu: bool = False
    threads: int = 0  # torch intra-op threads per worker; 0 keeps torch's default


@dataclass
class _State:
    epoch: int = 0  # epochs completed
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_loss: float = math.inf
    bad_epochs: int = 0


@dataclass(frozen=True)
class TrainResult:
    """What training produced: the bundle and the metrics stored in it."""

    bundle_id: str
    bundle_path: str
    metrics: Mapping[str, Any]
    threshold: float
    tracking_run_id: str | None = None  # the MLflow run, with tracking.mlflow: true


def _set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def _batches(
    files: Sequence[str], encoder: Encoder, batch_size: int, buffer_rows: int, rng: np.random.Generator
) -> Iterator[Encoded]:
    """Stream ``files`` in a random order, shuffling within a buffer of rows."""
    pending: list[Encoded] = []
    held = 0

    def drain(final: bool) -> Iterator[Encoded]:
        nonlocal pending, held
        if not pending:
            return
        cat = np.concatenate([p.cat for p in pending])
        num = np.concatenate([p.num for p in pending])
        miss = np.concatenate([p.missing for p in pending])
        order = rng.permutation(len(cat))
        cat, num, miss = cat[order], num[order], miss[order]
        stop = len(cat) if final else len(cat) - len(cat) % batch_size
        for start in range(0, stop, batch_size):
            yield Encoded(cat[start : start + batch_size], num[start : start + batch_size], miss[start : start + batch_size])
        pending = [Encoded(cat[stop:], num[stop:], miss[stop:])] if stop < len(cat) else []
        held = len(cat) - stop

    for idx in rng.permutation(len(files)):
        for chunk in read_shards([files[int(idx)]], encoder):
            pending.append(chunk)
            held += len(chunk)
            if held >= buffer_rows:
                yield from drain(final=False)
    yield from drain(final=True)


def _rows(files: Sequence[str]) -> int:
    import pyarrow.parquet as pq

    from embedlib.layout import filesystem

    total = 0
    for path in files:
        fs, inner = filesystem(path)
        with fs.open_input_file(inner) as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    return total


def _tensors(enc: Encoded, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(enc.cat).to(device),
        torch.from_numpy(enc.num).to(device),
        torch.from_numpy(enc.missing).to(device),
    )


def evaluate(
    model: EmbeddingAutoencoder, files: Sequence[str], encoder: Encoder, device: torch.device
) -> tuple[torch.Tensor, int]:
    """Sum of per-column NLL over ``files`` and the row count (no corruption)."""
    model.eval()
    sums = torch.zeros(len(model.spec.columns), dtype=torch.float64)
    rows = 0
    with torch.inference_mode():
        for enc in read_shards(files, encoder):
            cat, num, miss = _tensors(enc, device)
            logits, pred, _ = model(cat, num, miss)
            sums += column_nll(logits, pred, cat, num, miss).double().sum(0).cpu()
            rows += cat.shape[0]
    return sums, rows


def train_loop(coll: Collective, job: TrainJob) -> dict[str, Any]:
    """Train (or resume) and return the metrics; rank 0 writes checkpoints."""
    device = coll.device
    _set_seed(job.seed)
    model = EmbeddingAutoencoder(job.spec).to(device)
    opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=job.learning_rate)
    state = _State()
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    restored = load_checkpoint(job.checkpoint_dir, job.fingerprint, model, opt)
    if restored is not None:
        state, best_state = restored
        if coll.rank == 0:
            log.info("resuming from the checkpoint of epoch %d in %s", state.epoch, job.checkpoint_dir)
    coll.broadcast_initial(model, opt)
    net = coll.wrap(model)
    opt = coll.optimizer(opt, model)

    # train.batch_size is the global batch: each of the world's ranks takes its share
    batch_size = max(1, job.batch_size // coll.world_size)
    train_files = job.shards.files_for("train", coll.rank, coll.world_size)
    valid_files = job.shards.files_for("valid", coll.rank, coll.world_size)
    my_rows = _rows(train_files)
    if coll.world_size == 1:
        steps = max(1, math.ceil(my_rows / batch_size))
    else:
        too_few = coll.allreduce_sum(torch.tensor([1.0 if my_rows < batch_size else 0.0]))
        if too_few.item() > 0:
            raise TrainError(
                f"a worker has fewer than one batch ({batch_size}) of training rows; "
                "lower train.batch_size or train.num_workers, or raise train.num_shards"
            )
        # every rank runs the same number of steps (DDP/Horovod need it)
        steps = _allreduce_min(coll, my_rows // batch_size)
    fault_after = int(fault("train.after_epoch") or 0)
    kill_rank, _, kill_epoch = (fault("train.kill_rank") or "-1:0").partition(":")
    kill_step = steps // 2 if int(kill_rank) == coll.rank else -1
    show_bar = coll.world_size == 1

    for epoch in range(state.epoch, job.epochs):
        if job.patience and state.bad_epochs >= job.patience:
            break
        started = time.perf_counter()
        rng = np.random.default_rng([job.seed, epoch, coll.rank])
        gen = torch.Generator(device="cpu").manual_seed(job.seed * 1_000_003 + epoch * 1009 + coll.rank)
        net.train()
        total = torch.zeros(2, dtype=torch.float64)
        batches = _batches(train_files, job.encoder, batch_size, job.shuffle_buffer, rng)
        bar = _progress(steps, epoch, job.epochs) if show_bar else None
        for step, enc in enumerate(batches):
            if step >= steps:
                break
            if step == kill_step and epoch + 1 == int(kill_epoch):
                kill_self("train.kill_rank")
            cpu = torch.device("cpu")
            cat, num, miss = _tensors(enc, cpu)
            ccat, cnum = corrupt(cat, num, miss, job.spec.cardinalities, job.corruption, gen)
            cat, num, miss = cat.to(device), num.to(device), miss.to(device)
            logits, pred, _ = net(ccat.to(device), cnum.to(device), miss)
            loss = column_nll(logits, pred, cat, num, miss).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += torch.tensor([loss.item() * cat.shape[0], cat.shape[0]], dtype=torch.float64)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        total = coll.allreduce_sum(total)
        sums, rows = evaluate(model, valid_files, job.encoder, device)
        reduced = coll.allreduce_sum(torch.cat([sums, torch.tensor([float(rows)], dtype=torch.float64)]))
        val_rows = max(reduced[-1].item(), 1.0)
        per_col = (reduced[:-1] / val_rows).tolist()
        val_loss = float(sum(per_col))
        record = {
            "epoch": epoch + 1,
            "train_loss": float(total[0] / max(total[1].item(), 1.0)),
            "validation_loss": val_loss,
            "validation_columns": dict(zip(job.spec.columns, per_col)),
            "seconds": round(time.perf_counter() - started, 3),
        }
        state.history.append(record)
        state.epoch = epoch + 1
        if val_loss < state.best_loss - 1e-9:
            state.best_loss, state.best_epoch, state.bad_epochs = val_loss, epoch + 1, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            state.bad_epochs += 1
        if coll.rank == 0:
            save_checkpoint(job.checkpoint_dir, job.fingerprint, model, opt, state, best_state)
            log.info(
                "epoch %d/%d  train %.4f  validation %.4f nats/row  (%d worker%s, %.1fs)",
                epoch + 1, job.epochs, record["train_loss"], val_loss, coll.world_size,
                "s" if coll.world_size > 1 else "", record["seconds"],
            )
        coll.barrier()
        if fault_after and epoch + 1 == fault_after:
            raise InjectedFault(f"injected fault after epoch {epoch + 1} (train.after_epoch)")
    return {
        "history": state.history,
        "best_epoch": state.best_epoch,
        "validation_loss": state.best_loss,
        "epochs_run": state.epoch,
        "world_size": coll.world_size,
        "steps_per_epoch": steps,
    }


def _allreduce_min(coll: Collective, value: int) -> int:
    # min(x) = -max(-x); with only a sum available, gather every rank's value.
    slots = torch.zeros(coll.world_size, dtype=torch.float64)
    slots[coll.rank] = float(value)
    return int(coll.allreduce_sum(slots).min().item())


def _progress(steps: int, epoch: int, epochs: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", leave=False, mininterval=2.0, file=sys.stderr)


# ---------------------------------------------------------------------- checkpoints


def save_checkpoint(
    folder: str,
    fingerprint: str,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    state: _State,
    best: Mapping[str, torch.Tensor],
) -> None:
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
        "fingerprint": fingerprint,
        "state": asdict(state),
        "param_groups": osd["param_groups"],
        "optimizer_scalars": scalars,
    }
    name = f"epoch-{state.epoch:04d}"
    write_bytes_atomic(join(folder, f"{name}.safetensors"), save(tensors))
    write_text_atomic(join(folder, f"{name}.json"), json.dumps(meta, indent=1))
    write_text_atomic(join(folder, "latest.json"), json.dumps({"name": name, "fingerprint": fingerprint}))


def load_checkpoint(
    folder: str, fingerprint: str, model: nn.Module, opt: torch.optim.Optimizer
) -> tuple[_State, dict[str, torch.Tensor]] | None:
    """Restore the latest checkpoint into ``model``/``opt``; None if there is none."""
    from safetensors.torch import load

    pointer = read_text(join(folder, "latest.json"))
    if pointer is None:
        return None
    latest = json.loads(pointer)
    if latest.get("fingerprint") != fingerprint:
        raise TrainError(
            f"the checkpoints in {folder} belong to another training setup (data, model or "
            "parameters changed); delete that folder to start over, or use another run name"
        )
    meta = json.loads(read_text(join(folder, f"{latest['name']}.json")) or "{}")
    tensors = load(read_bytes(join(folder, f"{latest['name']}.safetensors")))
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
    saved = meta["state"]
    return _State(**saved), best


# ------------------------------------------------------------------------ backends


def _device(use_gpu: bool, local_rank: int = 0) -> torch.device:
    if use_gpu:
        if not torch.cuda.is_available():
            raise TrainError("train.use_gpu is true but this worker sees no CUDA device")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def _limit_threads(job: TrainJob) -> None:
    # Several workers on one host each running os.cpu_count() OpenMP threads
    # oversubscribe the cores and slow training down by an order of magnitude.
    if job.threads > 0:
        torch.set_num_threads(job.threads)


def ddp_worker(job: TrainJob) -> dict[str, Any]:
    """Entry point run by ``TorchDistributor`` on every process (under torchrun)."""
    import torch.distributed as dist

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _log_worker("torch_distributor", os.environ.get("RANK", "?"))
    _limit_threads(job)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _device(job.use_gpu, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    rank = int(os.environ.get("RANK", "0"))

    def run() -> dict[str, Any]:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        try:
            return train_loop(TorchDistributed(device), job)
        finally:
            dist.destroy_process_group()

    return _reporting(job, rank, run)


def _log_worker(backend: str, rank: Any) -> None:
    """Which embedlib a worker runs (the installed package, or the wheel from --py-files)."""
    import embedlib

    log.info("%s rank %s: embedlib %s from %s, torch %s, pid %d", backend, rank, embedlib.__version__,
             os.path.dirname(embedlib.__file__ or "?"), torch.__version__, os.getpid())


def horovod_worker(job: TrainJob) -> dict[str, Any]:
    """Entry point run by ``horovod.spark.run`` on every rank."""
    import horovod.torch as hvd

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    hvd.init()
    _log_worker("horovod", hvd.rank())
    _limit_threads(job)
    device = _device(job.use_gpu, hvd.local_rank())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return _reporting(job, int(hvd.rank()), lambda: train_loop(HorovodCollective(hvd, device), job))


def _report_path(job: TrainJob, rank: int) -> str:
    return join(job.checkpoint_dir, "workers", f"rank-{rank}.json")


def _reporting(job: TrainJob, rank: int, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run a worker, leaving ``running`` / ``failed`` / ``done`` in its report file.

    A worker that is killed leaves ``running``: the driver reads the reports of a
    failed run to say which rank died and which only lost their peers.
    """
    import socket

    def report(state: str, **extra: Any) -> None:
        doc = {"rank": rank, "state": state, "host": socket.gethostname(), "pid": os.getpid(), **extra}
        write_text_atomic(_report_path(job, rank), json.dumps(doc))

    report("running")
    try:
        out = run()
    except BaseException as exc:
        report("failed", error=f"{type(exc).__name__}: {_one_line(exc)}")
        raise
    report("done")
    return out


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _failure(job: TrainJob, backend: str, world: int, exc: BaseException) -> TrainFailure:
    """What the worker reports say about a failed distributed run, and how to resume."""
    died, failed = [], []
    for rank in range(world):
        raw = read_text(_report_path(job, rank))
        doc = json.loads(raw) if raw else {"state": "missing"}
        where = f"rank {rank}" + (f" (pid {doc['pid']} on {doc['host']})" if "pid" in doc else "")
        if doc["state"] == "running":
            died.append(f"{where} died without reporting an error (killed, out of memory, or its "
                        "executor was lost)")
        elif doc["state"] == "missing":
            died.append(f"{where} never started")
        elif doc["state"] == "failed":
            failed.append(f"{where} failed: {doc['error']}")
    pointer = read_text(join(job.checkpoint_dir, "latest.json"))
    epoch = int(json.loads(pointer)["name"].split("-")[1]) if pointer else 0
    if epoch:
        resume = (f"the last checkpoint is epoch {epoch}, in {job.checkpoint_dir}; rerun the same "
                  f"`embedlib train` to resume from epoch {epoch + 1}")
    else:
        resume = "no epoch was checkpointed yet; a rerun starts from the beginning"
    what = "; ".join(died + failed) or f"{type(exc).__name__}: {_one_line(exc)}"
    return TrainFailure(f"training on {backend} with {world} workers failed: {what}. {resume}")


def _is_local_master(spark: SparkSession) -> bool:
    return str(spark.sparkContext.master or "").startswith("local")


def _resolve_gpu(spark: SparkSession | None, t: TrainConfig, on_driver: bool) -> bool:
    if t.use_gpu != "auto":
        return bool(t.use_gpu)
    if on_driver or spark is None:
        return torch.cuda.is_available()
    amount = spark.conf.get("spark.executor.resource.gpu.amount", "0") or "0"
    return float(amount) > 0


def _check_slots(spark: SparkSession, t: TrainConfig, on_driver: bool) -> None:
    if on_driver:
        available = os.cpu_count() or 1
        where = "this driver's CPU cores"
    else:
        available = spark.sparkContext.defaultParallelism
        where = "task slots in the cluster (spark.default.parallelism)"
    if t.num_workers > available:
        raise TrainError(
            f"train.num_workers={t.num_workers} but there are only {available} {where}; "
            f"lower train.num_workers to at most {available} or add executors"
        )


def _threads_per_worker(spark: SparkSession, t: TrainConfig, on_driver: bool) -> int:
    if on_driver:
        return max(1, (os.cpu_count() or 1) // t.num_workers)
    return max(1, int(spark.conf.get("spark.task.cpus", "1") or 1))


def resolve_backend(t: TrainConfig) -> TrainConfig:
    """``train.backend: auto`` made concrete: ``torch_distributor`` on Databricks
    (``DATABRICKS_RUNTIME_VERSION`` is set), ``local`` elsewhere.

    Databricks deprecates HorovodRunner after Runtime 15.4 LTS ML and ships
    TorchDistributor; on a single-node cluster (a local master) its processes
    run on the driver (``train.local_mode: auto``).
    """
    if t.backend != "auto":
        return t
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        return replace(t, backend="torch_distributor")
    return replace(t, backend="local")


def check_backend(spark: SparkSession | None, t: TrainConfig) -> bool:
    """Fail fast (before any data is encoded) if the backend cannot run here.

    Returns whether the workers run on the driver.
    """
    t = resolve_backend(t)
    if t.backend == "local":
        return True
    if spark is None:
        raise TrainError(f"train.backend={t.backend} needs a Spark session")
    if t.backend == "horovod":
        try:
            import horovod.spark  # noqa: F401
            import horovod.torch  # noqa: F401
        except ImportError as exc:
            raise TrainError(
                "train.backend=horovod but Horovod is not importable here "
                f"({exc}); install it with `make horovod` (builds horovod 0.28.1 with the C++17 fix, "
                "see .ci/build_horovod.sh) or use train.backend=torch_distributor"
            ) from exc
        on_driver = False
    elif t.backend == "torch_distributor":
        on_driver = _is_local_master(spark) if t.local_mode == "auto" else bool(t.local_mode)
    else:
        raise TrainError(f"unknown train.backend {t.backend!r}; use local, torch_distributor or horovod")
    _check_slots(spark, t, on_driver=on_driver)
    return on_driver


def launch(spark: SparkSession | None, job: TrainJob, t: TrainConfig) -> dict[str, Any]:
    """Run :func:`train_loop` on the configured backend; return rank 0's metrics."""
    t = resolve_backend(t)
    on_driver = check_backend(spark, t)
    if t.backend == "local":
        job = replace(job, use_gpu=_resolve_gpu(spark, t, on_driver=True))
        # Leave a core to Spark's own driver processes: torch's spinning threads on a
        # fully used machine slow each step down ~200x (measured, benchmarks/train_bench.py).
        before = torch.get_num_threads()
        torch.set_num_threads(max(1, min(before, (os.cpu_count() or 1) - 1)))
        try:
            return train_loop(SingleProcess(_device(job.use_gpu)), job)
        finally:
            torch.set_num_threads(before)
    assert spark is not None  # check_backend refused otherwise
    job = replace(
        job,
        use_gpu=_resolve_gpu(spark, t, on_driver=on_driver),
        threads=_threads_per_worker(spark, t, on_driver=on_driver),
    )
    remove_tree(join(job.checkpoint_dir, "workers"))
    try:
        if t.backend == "torch_distributor":
            from pyspark.ml.torch.distributor import TorchDistributor

            distributor = TorchDistributor(num_processes=t.num_workers, local_mode=on_driver, use_gpu=job.use_gpu)
            result = distributor.run(ddp_worker, job)
        else:
            import horovod.spark

            results = horovod.spark.run(horovod_worker, args=(job,), num_proc=t.num_workers)
            result = results[0] if results else None
    except Exception as exc:
        raise _failure(job, t.backend, t.num_workers, exc) from exc
    if result is None:
        raise TrainFailure(f"{t.backend} returned no result from rank 0")
    return dict(result)


# ------------------------------------------------------------------------------ job


def spec_for(vocab: Vocabulary, cfg: Config) -> ModelSpec:
    m = cfg.model
    return ModelSpec.build(
        vocab.categorical,
        [vocab.size(c) for c in vocab.categorical],
        vocab.numeric_columns,
        max_embedding_dim=m.max_embedding_dim,
        embedding_dims=m.embedding_dims,
        hidden=m.hidden,
        bottleneck=m.bottleneck,
    )


def check_vocab_matches(vocab: Vocabulary, cfg: Config) -> None:
    """The configured columns must be exactly the vocabulary's (same order)."""
    from embedlib.vocab import SchemaError

    if tuple(vocab.categorical) != cfg.columns.categorical or tuple(vocab.numeric_columns) != cfg.columns.numeric:
        raise SchemaError(
            "the configured columns do not match the vocabulary at "
            f"{cfg.layout.vocab}: vocabulary has categorical {list(vocab.categorical)} and numeric "
            f"{list(vocab.numeric_columns)}, config has categorical {list(cfg.columns.categorical)} and "
            f"numeric {list(cfg.columns.numeric)}; rerun `embedlib vocab` for this config"
        )


def threshold_of(model: EmbeddingAutoencoder, shards: ShardSet, encoder: Encoder, quantile: float,
                 max_rows: int = 200_000) -> float:
    """The ``quantile`` of training-row scores (on at most ``max_rows`` rows)."""
    model.eval()
    scores: list[np.ndarray] = []
    seen = 0
    with torch.inference_mode():
        for enc in read_shards(shards.train_files, encoder):
            cat, num, miss = _tensors(enc, torch.device("cpu"))
            logits, pred, _ = model(cat, num, miss)
            scores.append(column_nll(logits, pred, cat, num, miss).sum(1).double().numpy())
            seen += len(scores[-1])
            if seen >= max_rows:
                break
    return float(np.quantile(np.concatenate(scores), quantile))


def run_train_job(spark: SparkSession, cfg: Config) -> TrainResult:
    """vocab (read) → encode shards → train on the backend → bundle."""
    from embedlib.bundle import save_bundle
    from embedlib.encode import encode_to_shards
    from embedlib.tables import delta_version, read_source
    from embedlib.tracking import check_tracking, log_training
    from embedlib.vocab import Vocabulary, check_columns

    layout = cfg.layout
    cfg = replace(cfg, train=resolve_backend(cfg.train))
    check_backend(spark, cfg.train)
    check_tracking(cfg)
    vocab = Vocabulary.load(spark, layout.vocab)
    check_vocab_matches(vocab, cfg)
    df = read_source(spark, cfg.source)
    source = cfg.source.table or str(cfg.source.path)
    check_columns(df.schema, source, categorical=cfg.columns.categorical, numeric=cfg.columns.numeric,
                  ids=cfg.columns.id, trained=vocab.meta.get("source_types"))
    version = ""
    if cfg.source.format == "delta" and cfg.source.path is not None:
        version = str(delta_version(spark, cfg.source.path))
    shards = encode_to_shards(spark, df, vocab, cfg, source_version=version)
    spec = spec_for(vocab, cfg)
    t = cfg.train
    job = TrainJob(
        spec=spec,
        shards=shards,
        encoder=Encoder.for_vocab(vocab),
        checkpoint_dir=layout.checkpoints,
        fingerprint=_job_fingerprint(spec, shards, cfg),
        epochs=t.epochs,
        batch_size=t.batch_size,
        learning_rate=t.learning_rate,
        seed=t.seed,
        patience=t.patience,
        corruption=cfg.model.corruption,
        shuffle_buffer=t.shuffle_buffer,
    )
    started = time.perf_counter()
    metrics = launch(spark, job, t)
    metrics = {**metrics, "backend": t.backend, "train_seconds": round(time.perf_counter() - started, 2),
               "train_rows": shards.train_rows, "validation_rows": shards.valid_rows}
    model = best_model(job)
    threshold = threshold_of(model, shards, job.encoder, cfg.score.threshold_quantile)
    bundle_id = save_bundle(
        layout.bundle,
        model=model,
        vocab=vocab,
        threshold=threshold,
        threshold_quantile=cfg.score.threshold_quantile,
        metrics=metrics,
        model_config=asdict(cfg.model),
    )
    tracked = log_training(cfg, layout.bundle, bundle_id, metrics, threshold)
    return TrainResult(bundle_id=bundle_id, bundle_path=layout.bundle, metrics=metrics, threshold=threshold,
                       tracking_run_id=tracked)


def best_model(job: TrainJob) -> EmbeddingAutoencoder:
    """The best-validation weights from the last checkpoint."""
    model = EmbeddingAutoencoder(job.spec)
    opt = torch.optim.Adam(model.parameters(), lr=job.learning_rate)
    restored = load_checkpoint(job.checkpoint_dir, job.fingerprint, model, opt)
    if restored is None:
        raise TrainError(f"training wrote no checkpoint in {job.checkpoint_dir}")
    model.load_state_dict(restored[1])
    model.eval()
    return model


def _job_fingerprint(spec: ModelSpec, shards: ShardSet, cfg: Config) -> str:
    import hashlib

    t = cfg.train
    key = {
        "spec": spec.to_dict(),
        "shards": shards.fingerprint,
        "corruption": cfg.model.corruption,
        "lr": t.learning_rate,
        "batch_size": t.batch_size,
        "seed": t.seed,
        "shuffle_buffer": t.shuffle_buffer,
        "world": 1 if t.backend == "local" else t.num_workers,
        "backend": t.backend,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
