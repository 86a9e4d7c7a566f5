"""The one training loop, whatever launches it.

:func:`train_loop` talks to its peers through a
:class:`~embedlib.train.collective.Collective`. Each rank reads its own shard
files (rank r takes files r, r + world, …), shuffles within a buffer, and runs
the same number of steps per epoch as every other rank. Every epoch ends with a
validation pass over all ranks and a checkpoint written by rank 0 (the
:class:`~embedlib.train.checkpoint.CheckpointStore`); a rerun on the same run
directory resumes after the last checkpoint. Batch order and input corruption
are seeded from ``(seed, epoch, rank)``, so a resumed run ends with the same
weights as an uninterrupted one on the same machine.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from embedlib.encode import Encoded, Encoder, ShardSet, read_shards
from embedlib.faults import InjectedFault, fault, kill_self
from embedlib.model import EmbeddingAutoencoder, ModelSpec, column_nll, corrupt
from embedlib.train.checkpoint import CheckpointStore, TrainState
from embedlib.train.collective import Collective, allreduce_min
from embedlib.train.errors import TrainError

__all__ = ["TrainJob", "evaluate", "tensors", "train_loop"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainJob:
    """Everything a worker needs; pickled to workers, so plain data only."""

    spec: ModelSpec
    shards: ShardSet
    encoder: Encoder
    store: CheckpointStore
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    patience: int
    corruption: float
    shuffle_buffer: int
    use_gpu: bool = False
    threads: int = 0  # torch intra-op threads per worker; 0 keeps torch's default


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


def tensors(enc: Encoded, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
            cat, num, miss = tensors(enc, device)
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
        steps = allreduce_min(coll, my_rows // batch_size)
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
            cat, num, miss = tensors(enc, cpu)
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
            job.store.save(model, opt, state, best_state)
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


def _progress(steps: int, epoch: int, epochs: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", leave=False, mininterval=2.0, file=sys.stderr)
