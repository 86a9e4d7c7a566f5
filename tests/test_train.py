"""Training on the local backend: repeatability, resume after a fault, bad input, the MSE trap."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from embedlib.bundle import load_bundle
from embedlib.config import ConfigError
from embedlib.faults import ENV as FAULTS
from embedlib.faults import InjectedFault
from embedlib.train import TrainError, run_train_job
from embedlib.vocab import SchemaError

from .conftest import copy_vocab, train_cfg


def same_weights(a: str, b: str) -> bool:
    sa, sb = load_bundle(a).model.state_dict(), load_bundle(b).model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_training_learns_and_writes_a_bundle(adult_trained) -> None:  # type: ignore[no-untyped-def]
    cfg, result = adult_trained
    history = result.metrics["history"]
    assert len(history) == 6
    assert history[-1]["validation_loss"] < 0.6 * history[0]["validation_loss"]
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


def test_resume_after_injected_fault_matches_uninterrupted_run(
    spark, adult_trained, tmp_path: Path, monkeypatch, caplog  # type: ignore[no-untyped-def]
) -> None:
    cfg, result = adult_trained
    run = train_cfg(tmp_path)
    copy_vocab(cfg, run)
    monkeypatch.setenv(FAULTS, "train.after_epoch=3")
    with pytest.raises(InjectedFault, match="injected fault after epoch 3"):
        run_train_job(spark, run)
    assert not Path(run.layout.bundle).exists()
    monkeypatch.delenv(FAULTS)
    with caplog.at_level(logging.INFO, logger="embedlib.train"):
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
    from embedlib.baselines import embedding_spread, fit_mse_autoencoder
    from embedlib.encode import Encoded, ShardSet, read_shards
    from embedlib.layout import read_text
    from embedlib.model import EmbeddingAutoencoder, EmbeddingMSEAutoencoder

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
    # ours keeps (or grows) the spread in every column; the trap shrinks every column
    assert ours.min() > 0.9, ours
    assert mse.max() < 0.9 and np.median(mse) < 0.6, mse
