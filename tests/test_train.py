"""Training on the local backend: repeatability, resume after a fault, bad input, the MSE trap."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from embedlib.core.bundle import load_bundle
from embedlib.core.config import ConfigError
from embedlib.core.faults import ENV as FAULTS
from embedlib.core.faults import InjectedFault
from embedlib.core.train import TrainError
from embedlib.core.vocab import SchemaError
from embedlib.spark.train import run_train_job

from .conftest import copy_vocab, train_cfg


def same_weights(a: str, b: str) -> bool:
    sa, sb = load_bundle(a).model.state_dict(), load_bundle(b).model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_training_learns_and_writes_a_bundle(adult_trained) -> None:  # type: ignore[no-untyped-def]
    cfg, result = adult_trained
    history = result.metrics["history"]
    assert len(history) == 6
    assert history[-1]["validation_loss"] < 0.7 * history[0]["validation_loss"]
    assert set(history[-1]["validation_columns"]) == set(cfg.feature_columns)
    assert result.metrics["validation_loss"] == min(h["validation_loss"] for h in history)
    assert result.metrics["train_rows"] + result.metrics["validation_rows"] == 32561
    # ~10% of rows held out by the row hash
    assert 0.08 < result.metrics["validation_rows"] / 32561 < 0.12
    bundle = load_bundle(result.bundle_path)
    assert bundle.bundle_id == result.bundle_id
    assert bundle.threshold == pytest.approx(result.threshold)
    assert bundle.manifest["metrics"]["best_epoch"] == result.metrics["best_epoch"]


def test_same_seed_gives_identical_weights(spark, adult_trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, result = adult_trained
    again = train_cfg(tmp_path)
    copy_vocab(cfg, again)
    second = run_train_job(spark, again)
    assert same_weights(result.bundle_path, second.bundle_path)
    other_seed = train_cfg(tmp_path / "s", "train.seed=8")
    copy_vocab(cfg, other_seed)
    third = run_train_job(spark, other_seed)
    assert not same_weights(result.bundle_path, third.bundle_path)


def test_resume_after_injected_fault_matches_uninterrupted_run(  # type: ignore[no-untyped-def]
    spark, adult_trained, tmp_path: Path, monkeypatch, caplog
) -> None:
    cfg, result = adult_trained
    run = train_cfg(tmp_path)
    copy_vocab(cfg, run)
    monkeypatch.setenv(FAULTS, "train.after_epoch=3")
    with pytest.raises(InjectedFault, match="injected fault after epoch 3"):
        run_train_job(spark, run)
    assert not Path(run.layout.bundle).exists()
    monkeypatch.delenv(FAULTS)
    with caplog.at_level(logging.INFO, logger="embedlib"):
        resumed = run_train_job(spark, run)
    assert "resuming from the checkpoint of epoch 3" in caplog.text
    assert [h["epoch"] for h in resumed.metrics["history"]] == [1, 2, 3, 4, 5, 6]
    assert same_weights(result.bundle_path, resumed.bundle_path)


def test_bad_training_input(spark, adult_trained, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    cfg, _ = adult_trained
    with pytest.raises(ConfigError, match="train.backend' must be one of 'local', 'torch_distributor', 'horovod'"):
        train_cfg(tmp_path, "train.backend=mpi")
    many = train_cfg(tmp_path / "many", "train.backend=torch_distributor", "train.num_workers=64")
    copy_vocab(cfg, many)
    with pytest.raises(TrainError, match="train.num_workers=64 but there are only"):
        run_train_job(spark, many)
    other = train_cfg(tmp_path / "cols", "columns.numeric=[age, hours-per-week]", "columns.log1p=[]")
    copy_vocab(cfg, other)
    with pytest.raises(SchemaError, match="do not match the vocabulary"):
        run_train_job(spark, other)
    hvd = train_cfg(tmp_path / "hvd", "train.backend=horovod")
    copy_vocab(cfg, hvd)
    monkeypatch.setitem(sys.modules, "horovod", None)  # as if not installed
    with pytest.raises(TrainError, match="make horovod.*train.backend=torch_distributor"):
        run_train_job(spark, hvd)


def test_mse_on_embedding_output_collapses_ours_does_not(adult_trained) -> None:  # type: ignore[no-untyped-def]
    """The trap: reconstructing the embedding vectors with MSE shrinks them together.

    Measured quantity: the spread of each column's category vectors (mean distance
    to their centroid) after training, relative to its value at initialisation.
    Both models start from the same seed and train on the same rows with the same
    optimizer, learning rate and batch size for the same number of epochs.
    """
    from embedlib.core.baselines import EmbeddingMSEAutoencoder, embedding_spread, fit_mse_autoencoder
    from embedlib.core.encode import Encoded, ShardSet, read_shards
    from embedlib.core.layout import read_text
    from embedlib.core.model import EmbeddingAutoencoder

    cfg, result = adult_trained
    bundle = load_bundle(result.bundle_path)
    shards = ShardSet.from_dict(json.loads(read_text(f"{cfg.layout.work}/encoded/_shards.json") or "{}"))
    parts = list(read_shards(shards.train_files, bundle.encoder))
    enc = Encoded(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("cat", "num", "missing")))

    torch.manual_seed(cfg.train.seed)
    ours_init = embedding_spread(EmbeddingAutoencoder(bundle.spec).embeddings)
    ours = embedding_spread(bundle.model.embeddings) / ours_init

    epochs = cfg.train.epochs * 3
    torch.manual_seed(cfg.train.seed)
    mse_init = embedding_spread(EmbeddingMSEAutoencoder(bundle.spec).embeddings)
    mse_model = fit_mse_autoencoder(enc, bundle.spec, epochs=epochs, batch_size=cfg.train.batch_size,
                                    learning_rate=cfg.train.learning_rate, seed=cfg.train.seed)
    mse = embedding_spread(mse_model.embeddings) / mse_init
    # ours keeps the spread (each column within 20%, typically ±5%); the trap shrinks every column
    assert ours.min() > 0.8 and np.median(ours) > 0.95, ours
    assert mse.max() < 0.9 and np.median(mse) < 0.6, mse


class _ThreadGroup:
    """What ranks running as threads of one process share: a barrier and one slot per rank."""

    def __init__(self, world: int) -> None:
        import threading

        self.world = world
        self.barrier = threading.Barrier(world, timeout=120)
        self.slots: list[torch.Tensor | None] = [None] * world


class _AveragingOptimizer:
    """Averages each gradient over the ranks before stepping (what DDP and Horovod do)."""

    def __init__(self, opt: torch.optim.Optimizer, model: torch.nn.Module, coll: _ThreadCollective) -> None:
        self.opt, self.model, self.coll = opt, model, coll
        self.param_groups = opt.param_groups

    def zero_grad(self) -> None:
        self.opt.zero_grad()

    def step(self) -> None:
        for p in self.model.parameters():
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            p.grad = self.coll.allreduce_sum(grad) / self.coll.world_size
        self.opt.step()

    def state_dict(self):  # type: ignore[no-untyped-def]
        return self.opt.state_dict()


class _ThreadCollective:
    """An in-process stand-in for DDP: rank r of a world of threads."""

    def __init__(self, group: _ThreadGroup, rank: int) -> None:
        self.group, self.rank, self.world_size = group, rank, group.world
        self.device = torch.device("cpu")

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def optimizer(self, opt, model):  # type: ignore[no-untyped-def]
        self.model = model  # the test reads each rank's weights after training
        return _AveragingOptimizer(opt, model, self)

    def broadcast_initial(self, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(self.allreduce_sum(p.detach() if self.rank == 0 else torch.zeros_like(p)))

    def allreduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        g = self.group
        g.slots[self.rank] = values.detach().clone()
        g.barrier.wait()
        total = torch.stack([s for s in g.slots if s is not None]).sum(0)
        g.barrier.wait()  # nobody overwrites a slot before every rank has read them all
        return total

    def barrier(self) -> None:
        self.group.barrier.wait()


def test_train_loop_with_two_in_process_ranks(adult_trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """train_loop over a two-rank collective: the ranks agree on every metric and end with the same
    weights (the averaged gradients keep them in step), and validation improves."""
    import dataclasses
    import threading

    from embedlib.core.encode import ShardSet
    from embedlib.core.layout import read_text
    from embedlib.core.train import CheckpointStore, train_loop
    from embedlib.core.vocab import Vocabulary
    from embedlib.spark.train.backends import LocalBackend
    from embedlib.spark.train.job import make_job

    cfg, _ = adult_trained
    vocab = Vocabulary.load_delta(cfg.layout.vocab)
    shards = ShardSet.from_dict(json.loads(read_text(cfg.layout.shards_manifest) or "{}"))
    job = make_job(cfg, vocab, shards, LocalBackend())
    job = dataclasses.replace(job, epochs=3, store=CheckpointStore(str(tmp_path), str(tmp_path / "workers"), "two"))
    group = _ThreadGroup(2)
    results: dict[int, dict] = {}  # type: ignore[type-arg]
    models: dict[int, dict[str, torch.Tensor]] = {}
    errors: list[BaseException] = []

    def rank(r: int) -> None:
        try:
            coll = _ThreadCollective(group, r)
            results[r] = train_loop(coll, job)
            models[r] = {k: v.detach().clone() for k, v in coll.model.state_dict().items()}
        except BaseException as exc:  # noqa: BLE001  (re-raised in the test thread)
            errors.append(exc)
            group.barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    first, second = results[0], results[1]
    assert first["world_size"] == second["world_size"] == 2
    assert [h["validation_loss"] for h in first["history"]] == [h["validation_loss"] for h in second["history"]]
    assert first["steps_per_epoch"] == second["steps_per_epoch"] > 0
    losses = [h["validation_loss"] for h in first["history"]]
    assert losses[-1] < losses[0]
    assert models[0].keys() == models[1].keys()
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])
    # the two ranks trained on different shard files: without the averaging they would part ways
    assert set(shards.files_for("train", 0, 2)).isdisjoint(shards.files_for("train", 1, 2))
