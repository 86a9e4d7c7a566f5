"""``model.size``: the capacity grid, explicit keys winning, and the search by validation NLL."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from embedlib.core.bundle import load_bundle
from embedlib.core.config import ConfigError, load_config
from embedlib.core.train.errors import TrainError
from embedlib.core.train.sizing import SIZE_TOLERANCE, SIZES, candidates, compare_at_equal_steps, resolve_size

from .conftest import copy_vocab, train_cfg


def model_of(*sets: str):  # type: ignore[no-untyped-def]
    return load_config([], ["source.path=x.csv", "columns.categorical=[a]", *sets]).model


def test_auto_tries_every_size_smallest_first() -> None:
    cands = candidates(model_of())
    assert list(cands) == ["small", "medium", "large"]
    for name, m in cands.items():
        assert (m.hidden, m.bottleneck, m.max_embedding_dim) == (
            SIZES[name].hidden, SIZES[name].bottleneck, SIZES[name].max_embedding_dim)
        assert m.size == name


def test_explicit_keys_win_over_every_size() -> None:
    cands = candidates(model_of("model.hidden=[40, 20]"))
    assert {m.hidden for m in cands.values()} == {(40, 20)}
    assert [m.bottleneck for m in cands.values()] == [8, 16, 32]
    # all three set: nothing to choose, one candidate, no search
    only = candidates(model_of("model.hidden=[40]", "model.bottleneck=5", "model.max_embedding_dim=7"))
    assert len(only) == 1 and next(iter(only.values())).hidden == (40,)
    # a named size is that size, with explicit keys still winning
    large = resolve_size(model_of("model.size=large", "model.bottleneck=3"), "large")
    assert (large.hidden, large.bottleneck, large.max_embedding_dim) == ((256, 128), 3, 64)
    assert list(candidates(model_of("model.size=small"))) == ["small"]


@pytest.mark.parametrize(("override", "key"), [("model.size=huge", "model.size"),
                                                ("model.search_seconds=0", "model.search_seconds"),
                                                ("model.search_steps=0", "model.search_steps"),
                                                ("model.search_rows=0", "model.search_rows")])
def test_bad_size_settings_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        model_of(override)


def test_trials_stopped_by_the_clock_are_compared_at_equal_steps() -> None:
    """The final run is bounded in steps, so a size is not chosen for the extra steps a faster model
    made in the same seconds: here small, stopped by time at 600 steps, is best at its end (4.8) but
    worse than large where large stopped (400 steps: 5.5 vs 5.0)."""
    small = {"stopped": "time", "steps": 600, "validation_loss": 4.8,
             "history": [(200, 6.0), (400, 5.5), (600, 4.8)]}
    large = {"stopped": "time", "steps": 400, "validation_loss": 5.0, "history": [(200, 5.6), (400, 5.0)]}
    horizon, compared = compare_at_equal_steps({"small": small, "large": large})
    assert horizon == 400 and compared == {"small": 5.5, "large": 5.0}
    # a trial that converged before the horizon counts its best; with no trial stopped by time, each its own
    done = {"stopped": "plateau", "steps": 200, "validation_loss": 4.9, "history": [(200, 4.9)]}
    assert compare_at_equal_steps({"small": done, "large": large}) == (400, {"small": 4.9, "large": 5.0})
    assert compare_at_equal_steps({"small": {**small, "stopped": "budget"}, "large": done}) == (
        None, {"small": 4.8, "large": 4.9})


@pytest.mark.timeout(900)
def test_auto_trains_each_size_as_spark_tasks_and_keeps_the_best(spark, adult_trained, tmp_path: Path, monkeypatch,  # type: ignore[no-untyped-def]
                                                                 caplog) -> None:
    """Three trials on a sample, in parallel Spark tasks; the bundle has the chosen size's shape and
    the choice follows the rule (lowest validation NLL, the smaller within the tolerance); while they run,
    the driver's progress lines say each trial's steps (from its checkpoints)."""
    import logging

    from embedlib.core.train import sizing
    from embedlib.spark.train import run_train_job

    monkeypatch.setattr(sizing, "PROGRESS_SECONDS", 0.5)
    caplog.set_level(logging.INFO, logger="embedlib.core.train.sizing")
    cfg, _ = adult_trained
    run = train_cfg(tmp_path, "model.size=auto", "train.max_rows=4000", "train.epochs=3",
                    "model.search_rows=1500")
    copy_vocab(cfg, run)
    result = run_train_job(spark, run)
    search = result.metrics["size_search"]
    trials = search["trials"]
    assert list(trials) == ["small", "medium", "large"]
    losses = {name: t["validation_loss"] for name, t in trials.items()}
    assert all(math.isfinite(v) for v in losses.values())
    assert all(t["epochs_run"] == 3 and t["stopped"] == "epochs" for t in trials.values())
    # no trial stopped by the clock: each is judged by its own best
    assert search["compared_at_steps"] is None and all(t["compared_loss"] == t["validation_loss"] for t in trials.values())
    # the sample: whole shard files, at least search_rows rows, fewer than the training rows
    assert 1500 <= search["sample_rows"] < result.metrics["train_rows"]
    best = min(losses.values())
    expected = next(n for n in losses if losses[n] <= best + SIZE_TOLERANCE * abs(best))
    assert search["size"] == result.metrics["model_size"] == expected
    bundle = load_bundle(result.bundle_path)
    assert tuple(bundle.spec.hidden) == SIZES[expected].hidden
    assert bundle.spec.bottleneck == SIZES[expected].bottleneck
    assert bundle.manifest["model_config"]["size"] == expected
    assert tuple(bundle.manifest["model_config"]["hidden"]) == SIZES[expected].hidden
    progress = [re.fullmatch(r"model.size auto: small (\d+), medium (\d+), large (\d+) of 4000 steps \(\d+ s\)",
                             r.getMessage()) for r in caplog.records]
    reached = [tuple(int(g) for g in m.groups()) for m in progress if m]
    assert reached and max(map(max, reached)) >= 100, [r.getMessage() for r in caplog.records]


def test_the_search_is_bounded_in_steps_and_its_clock_only_guards(spark, adult_trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Every trial stops after model.search_steps steps, compared there, and trains the run's own
    schedule; a clock guard the trials reach fails the run naming the keys (no choice by the clock)."""
    from embedlib.spark.train import run_train_job

    cfg, _ = adult_trained
    sets = ("model.size=auto", "train.max_rows=3000", "train.epochs=4", "model.search_rows=1000",
            "model.bottleneck=4")
    run = train_cfg(tmp_path / "steps", *sets, "model.search_steps=150")
    copy_vocab(cfg, run)
    result = run_train_job(spark, run)
    search = result.metrics["size_search"]
    trials = search["trials"]
    # an epoch is at least 100 steps: the first ends at 100, the second where the bound stops it
    assert trials and all(t["steps"] == 150 and t["stopped"] == "steps" and t["epochs_run"] == 2
                          for t in trials.values())
    assert search["compared_at_steps"] == 150
    assert all(t["compared_loss"] == t["validation_loss"] for t in trials.values())
    assert not any(t["converged"] for t in trials.values())
    # the explicit bottleneck won in every trial and in the bundle
    assert load_bundle(result.bundle_path).spec.bottleneck == 4
    assert result.metrics["epochs_run"] == 4  # the run itself is not bounded by the search
    late = train_cfg(tmp_path / "late", *sets, "model.search_seconds=0.01")
    copy_vocab(cfg, late)
    with pytest.raises(TrainError, match=r"trial reached its share of model.search_seconds .* raise "
                                         r"model.search_seconds, lower model.search_steps"):
        run_train_job(spark, late)


def test_a_winner_trained_on_every_row_is_the_start_of_the_run(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    """On a table within model.search_rows the trials train on every row, so the winning trial is the first
    steps of the run it stands for: the run goes on from its last checkpoint (the same epochs in its history,
    then more) instead of training them again. In memory, ~10 s (three 200-step trials, 200 steps more)."""
    import logging

    import numpy as np
    import pandas as pd

    import embedlib

    caplog.set_level(logging.INFO, logger="embedlib")
    rng = np.random.default_rng(0)
    kind = rng.choice(["a", "b", "c"], 1200)
    frame = pd.DataFrame({"kind": kind, "x": rng.normal(size=1200)})
    frame["y"] = frame["x"] * np.where(kind == "a", 1.0, 2.0)
    bundle = embedlib.fit(frame, categorical=["kind"], numeric=["x", "y"], output_dir=str(tmp_path),
                          settings={"model.search_steps": 200, "train.max_steps": 400, "model.masks": None})
    metrics = bundle.manifest["metrics"]
    search = metrics["size_search"]
    assert search["whole"] and metrics["continued_trial"] == search["size"] == metrics["model_size"]
    trial = search["trials"][search["size"]]
    assert trial["stopped"] == "steps" and trial["steps"] == 200 and metrics["steps"] == 400
    history = metrics["history"]
    steps = [h["steps"] for h in history]  # epochs of 102 steps (34 passes of 3): the trial's second ends at 200
    assert len(steps) == 4 and steps[1] == 200 and steps[-1] == 400, steps
    # the run did not train those epochs again: it resumed from the trial's checkpoint after its second epoch
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("resuming from the checkpoint of epoch 2 ") for m in said), said
    # the run's first two epochs are the trial's: its validation loss where the search compared it
    assert min(h["validation_loss"] for h in history[:2]) == pytest.approx(trial["validation_loss"], abs=0)
