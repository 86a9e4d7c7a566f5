"""Numerics that know how sure they are (``model.numeric_head``): exact nats for every head, the masked
kind's hidden numeric cell predicted without its own value, and a learned spread that makes a broken
exact relation cost many nats where the unit-variance Gaussian charges little."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

import embedlib
from embedlib.core.densities import NUMERIC_HEADS, SIGMA_FLOOR, log_sigma_of, numeric_mean, numeric_nll
from embedlib.core.model import EmbeddingAutoencoder, ModelSpec, column_nll

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _blocks(pred: torch.Tensor, n: int) -> list[torch.Tensor]:
    return [pred[:, p * n : (p + 1) * n] for p in range(pred.shape[1] // n)]


def test_every_numeric_head_gives_exact_nats_and_its_mean() -> None:
    torch.manual_seed(0)
    rows, n = 64, 3
    x = torch.randn(rows, n) * 3
    missing = (torch.rand(rows, n) < 0.2).float()
    unit = torch.randn(rows, n)
    np.testing.assert_allclose(numeric_nll(unit, x, missing), 0.5 * (x - unit) ** 2 * (1 - missing), rtol=1e-6)
    g = torch.randn(rows, 2 * n) * 4  # raw scales far below the floor too
    mean, raw = _blocks(g, n)
    normal = torch.distributions.Normal(mean, torch.exp(log_sigma_of(raw)))
    want = (-normal.log_prob(x) - HALF_LOG_2PI) * (1 - missing)
    np.testing.assert_allclose(numeric_nll(g, x, missing), want, rtol=1e-5, atol=1e-5)
    assert (torch.exp(log_sigma_of(raw)) >= SIGMA_FLOOR).all()
    m = torch.randn(rows, NUMERIC_HEADS["mixture"] * n)
    b = _blocks(m, n)
    k = len(b) // 3
    mix = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=torch.stack(b[:k], 2)),
        torch.distributions.Normal(torch.stack(b[k : 2 * k], 2), torch.exp(log_sigma_of(torch.stack(b[2 * k :], 2)))))
    np.testing.assert_allclose(numeric_nll(m, x, missing), (-mix.log_prob(x) - HALF_LOG_2PI) * (1 - missing),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(numeric_mean(m, n), mix.mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(numeric_mean(g, n), mean)


@pytest.mark.parametrize("head", sorted(NUMERIC_HEADS))
def test_a_hidden_numeric_cell_is_predicted_from_the_others_alone(head: str) -> None:
    """The masked kind's scoring shortcut (one first-layer product, per group a subtraction) gives each
    numeric the head output of the pass that hides it: the same as a plain forward pass with that group's
    mask, and the same whatever the hidden cell holds."""
    torch.manual_seed(1)
    spec = ModelSpec.build(["a", "b"], [6, 9], ["x", "y", "z"], kind="masked", masks=2, numeric_head=head)
    net = EmbeddingAutoencoder(spec).eval()
    rows = 16
    cat = torch.randint(0, 6, (rows, 2))
    num, missing = torch.randn(rows, 3), torch.zeros(rows, 3)
    with torch.no_grad():
        logits, pred = net.reconstruct(cat, num, missing)
        assert pred.shape == (rows, 3 * spec.numeric_params)
        for group in spec.mask_groups():
            mask = torch.zeros(rows, len(spec.columns))
            mask[:, group] = 1.0
            _, plain, _ = net(cat, num, missing, mask)
            cols = [p * 3 + j - 2 for p in range(spec.numeric_params) for j in group if j >= 2]
            np.testing.assert_allclose(pred[:, cols], plain[:, cols], rtol=1e-4, atol=1e-5)
        moved = num.clone()
        moved[:, 2] += 50.0  # z (column 4) is hidden, with a and x, by group 0 (column j in group j mod 2)
        _, again = net.reconstruct(cat, moved, missing)
        z = [p * 3 + 2 for p in range(spec.numeric_params)]
        np.testing.assert_allclose(again[:, z], pred[:, z], rtol=1e-4, atol=1e-4)
        nll = column_nll(logits, pred, cat, num, missing)
        assert nll.shape == (rows, 5) and torch.isfinite(nll).all()


@pytest.fixture(scope="module")
def exact_relation() -> pd.DataFrame:
    """``total = rate × quantity`` exactly (the issue's near-exact numeric relation), a category that sets the
    rate's level, and noise columns."""
    rng = np.random.default_rng(0)
    rows = 1500
    kind = rng.choice(["a", "b", "c"], rows)
    rate = np.where(kind == "a", 1.0, np.where(kind == "b", 3.0, 9.0)) * rng.uniform(0.9, 1.1, rows)
    quantity = rng.uniform(1, 10, rows)
    return pd.DataFrame({"kind": kind, "rate": rate, "quantity": quantity, "total": rate * quantity})


def test_a_learned_spread_makes_a_broken_exact_relation_cost_many_nats(exact_relation: pd.DataFrame) -> None:
    """Trained in memory for 600 steps (~4 s a head): the heads that learn a spread learn that ``total`` follows
    from ``rate`` and ``quantity`` to a fraction of its column's spread (its normal cells cost negative nats), so
    a row whose total is off by 30 % of that spread costs many more nats than under the unit-variance head; the
    mixture (a narrow component beside a wide one) ranks every broken row above the normal rows' 95th percentile."""
    normal = exact_relation.iloc[:1400]
    probe = exact_relation.iloc[1400:].copy()
    broken = probe.copy()
    broken["total"] = broken["total"] + 0.3 * exact_relation["total"].std()
    settings = {"model.size": "small", "train.max_steps": 600, "train.seed": 3, "model.masks": None}
    extra, usual, ranks = {}, {}, {}
    for head in ("unit", "gaussian", "mixture"):
        bundle = embedlib.fit(normal, categorical=["kind"], numeric=["rate", "quantity", "total"],
                              settings={**settings, "model.numeric_head": head})
        assert bundle.spec.numeric_head == head
        ok, bad = bundle.score_frame(probe), bundle.score_frame(broken)
        extra[head] = float(np.median([b["total"] - o["total"] for b, o in zip(bad["contributions"], ok["contributions"])]))
        usual[head] = float(np.median([o["total"] for o in ok["contributions"]]))
        ranks[head] = float(np.mean(bad["calibrated_score"].to_numpy() > ok["calibrated_score"].quantile(0.95)))
    assert usual["gaussian"] < -0.5 and usual["mixture"] < -0.5, usual  # σ well below the column's spread
    assert min(extra["gaussian"], extra["mixture"]) > 10 * max(extra["unit"], 0.05), extra
    assert ranks["mixture"] >= 0.95 and ranks["mixture"] > ranks["unit"], ranks
