"""Finding the odd rows: calibration, masked-cell scoring, training that converges by default."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from embedlib.core.bundle import load_bundle
from embedlib.core.calibration import LEVELS, Calibration
from embedlib.core.inference import score_encoded, score_rows

from .conftest import ADULT_TEST, adult_pandas, copy_vocab, train_cfg


def test_calibration_is_the_surprise_of_a_contribution() -> None:
    rng = np.random.default_rng(0)
    normal = np.column_stack([rng.exponential(1.0, 5000), 4.0 + rng.normal(0, 0.3, 5000).clip(-3, 3)])
    cal = Calibration.fit(normal)
    assert cal.quantiles.shape == (2, LEVELS) and cal.rows == 5000
    grid = np.column_stack([np.linspace(0, 12, 200), np.linspace(0, 12, 200)])
    terms = cal.terms(grid)
    assert (np.diff(terms, axis=0) >= -1e-12).all()  # more nats are never less surprising
    assert terms[0].max() == 0.0  # below every normal row: no surprise
    # the share of normal rows at or above x, as the quantiles see it (within one level)
    for j, x in ((0, 1.0), (1, 4.3)):
        expected = -np.log((normal[:, j] >= x).mean())
        got = cal.terms(np.array([[x, x]]))[0, j]
        assert abs(got - expected) < 0.05 + 1.0 / LEVELS * 10, (j, got, expected)
    # the same 4 nats are ordinary for column 1 (it always adds about 4) and rare for column 0
    four = cal.terms(np.array([[4.0, 4.0]]))[0]
    assert four[0] > 3.5 and four[1] < 1.0
    # beyond the largest normal contribution the surprise keeps growing
    far = cal.terms(np.array([[30.0, 30.0], [60.0, 60.0]]))
    assert (far[1] > far[0]).all() and (far[0] > np.log(LEVELS)).all()


def test_calibrated_terms_add_up_and_are_stored_in_the_bundle(adult_trained) -> None:  # type: ignore[no-untyped-def]
    _, result = adult_trained
    bundle = load_bundle(result.bundle_path)
    assert bundle.calibration is not None and bundle.rank_by == "calibrated"
    rows = pa.Table.from_pandas(adult_pandas(ADULT_TEST).head(2000), preserve_index=False)
    scored = score_rows(bundle, rows)
    assert scored.calibrated is not None and scored.calibrated_score is not None
    np.testing.assert_allclose(scored.calibrated.sum(axis=1), scored.calibrated_score, rtol=0, atol=1e-9)
    np.testing.assert_allclose(scored.contributions.sum(axis=1), scored.score, rtol=0, atol=1e-9)
    assert (scored.calibrated >= 0).all()
    assert np.array_equal(scored.ranking, scored.calibrated_score)
    assert np.array_equal(score_rows(bundle, rows, rank_by="nats").ranking, scored.score)
    # on held-out normal rows each column's surprise averages about 1 nat (−log of a uniform share)
    mean = scored.calibrated.mean(axis=0)
    assert ((mean > 0.3) & (mean < 2.5)).all(), dict(zip(bundle.spec.columns, mean.round(2)))
    # the bundle's thresholds are quantiles of training-row scores, both ways
    assert set(bundle.manifest["thresholds"]) == {"nats", "calibrated"}
    assert bundle.threshold == bundle.threshold_for("calibrated")
    assert 0.002 < (scored.calibrated_score > bundle.threshold).mean() < 0.05


def test_masked_prediction_of_a_cell_ignores_its_own_value(adult_trained) -> None:  # type: ignore[no-untyped-def]
    """With the cell hidden, the model's distribution for it is the same whatever the cell holds:
    summed over every index the cell could take, exp(−nats) is 1 for every row."""
    _, result = adult_trained
    bundle = load_bundle(result.bundle_path)
    assert bundle.spec.masked and len(bundle.spec.mask_groups()) == min(8, len(bundle.spec.columns))
    enc = bundle.encoder.arrays(pa.Table.from_pandas(adult_pandas(ADULT_TEST).head(300), preserve_index=False))
    j = bundle.spec.categorical.index("education")
    total = np.zeros(len(enc))
    expected = None
    for value in range(bundle.spec.cardinalities[j]):
        cat = enc.cat.copy()
        cat[:, j] = value
        out = score_encoded(bundle, type(enc)(cat=cat, num=enc.num, missing=enc.missing))
        total += np.exp(-out.contributions[:, j])
        if expected is None:
            expected = (out.expected[:, j], out.expected_prob[:, j])
        else:  # the prediction for the hidden cell does not move with its value (float32 rounding of
            # the first layer's shortcut, which subtracts the hidden inputs, aside)
            assert np.array_equal(out.expected[:, j], expected[0])
            np.testing.assert_allclose(out.expected_prob[:, j], expected[1], rtol=2e-5)
    np.testing.assert_allclose(total, 1.0, rtol=1e-5)
    # the plain autoencoder sees the value it predicts: the same sum is far from 1
    from embedlib.core.model import EmbeddingAutoencoder, ModelSpec

    spec = ModelSpec.from_dict({**bundle.spec.to_dict(), "kind": "autoencoder", "masks": 0})
    torch.manual_seed(0)
    ae = EmbeddingAutoencoder(spec)
    with torch.no_grad():
        sums = np.zeros(len(enc))
        for value in range(spec.cardinalities[j]):
            cats = torch.from_numpy(enc.cat.copy())
            cats[:, j] = value
            logits, _ = ae.reconstruct(cats, torch.from_numpy(enc.num), torch.from_numpy(enc.missing))
            lg = logits[j]
            assert isinstance(lg, torch.Tensor)  # a full softmax head: its logits
            sums += torch.softmax(lg, dim=1)[:, value].numpy()
    assert np.abs(sums - 1.0).max() > 1e-3


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_default_training_converges_on_a_small_real_table(spark, adult_trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The default schedule stops on a plateau, and a run allowed 3x the steps with a stricter plateau
    reaches a validation NLL within 2% of it."""
    cfg, _ = adult_trained
    small = ["train.max_rows=3000", "train.epochs=null", "train.patience=3", "model.masks=4"]
    default = train_cfg(tmp_path / "default", *small)
    copy_vocab(cfg, default)
    from embedlib.spark.train import run_train_job

    first = run_train_job(spark, default)
    assert first.metrics["converged"] and first.metrics["stopped"] == "plateau", first.metrics["stopped"]
    assert first.metrics["lr_decays"] == 2
    assert load_bundle(first.bundle_path).manifest["metrics"]["converged"] is True
    longer = train_cfg(tmp_path / "long", *small, f"train.max_steps={3 * first.metrics['steps']}",
                       "train.patience=6", "train.min_improvement=0")
    copy_vocab(cfg, longer)
    second = run_train_job(spark, longer)
    assert second.metrics["steps"] > first.metrics["steps"]
    gap = (first.metrics["validation_loss"] - second.metrics["validation_loss"]) / second.metrics["validation_loss"]
    assert gap < 0.02, (first.metrics["validation_loss"], second.metrics["validation_loss"])
