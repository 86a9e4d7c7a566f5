"""The lazy Adam of wide embedding tables (``train.lazy_above``, :mod:`embedlib.core.train.lazy`)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import cast

import pytest
import torch
from torch import nn

from embedlib.core.train.lazy import LazyAdam, lazy_tables


def _model() -> nn.ModuleDict:
    torch.manual_seed(0)
    return nn.ModuleDict({"wide": nn.Embedding(50, 3), "narrow": nn.Embedding(5, 3), "out": nn.Linear(6, 1)})


def _weight(model: nn.ModuleDict) -> torch.Tensor:
    return cast(nn.Embedding, model["wide"]).weight


def _loss(model: nn.ModuleDict, wide: list[int], narrow: list[int]) -> torch.Tensor:
    emb = torch.cat([model["wide"](torch.tensor(wide)), model["narrow"](torch.tensor(narrow))], dim=1)
    return (model["out"](emb) ** 2).sum()


#: twelve steps' batches of the wide table's rows, with gaps of every length: 7 in every batch (twice
#: in the first), 1 and 2 in the first and then back after 2 and 9 steps, 30 in the third and fifth; most
#: rows never
BATCHES = [([7, 1, 7, 2], [0, 1, 2, 3]), ([7, 9, 9, 4], [4, 0, 1, 1]), ([7, 30, 4, 9], [2, 2, 3, 0]),
           ([7, 1, 4, 9], [1, 3, 0, 2]), ([7, 11, 30, 9], [1, 1, 0, 2]), ([7, 9, 12, 4], [3, 2, 1, 0]),
           ([7, 11, 12, 13], [0, 0, 4, 4]), ([7, 9, 4, 13], [1, 2, 3, 4]), ([7, 9, 4, 11], [0, 1, 0, 1]),
           ([7, 13, 12, 9], [2, 3, 2, 3]), ([7, 9, 2, 4], [4, 3, 2, 1]), ([7, 1, 11, 4], [0, 4, 0, 4])]


def _pair(lr: float = 0.1) -> tuple[nn.ModuleDict, LazyAdam, nn.ModuleDict, torch.optim.Optimizer]:
    lazy, dense = _model(), _model()
    lazy_tables(lazy, 10)
    lazy_opt = LazyAdam(lazy.parameters(), lr=lr)
    lazy_opt.keep_current(lazy)
    return lazy, lazy_opt, dense, torch.optim.Adam(dense.parameters(), lr=lr, fused=True)


def _train(model: nn.ModuleDict, opt: torch.optim.Optimizer, batches: list[tuple[list[int], list[int]]],
           lrs: list[float] | None = None) -> list[float]:
    losses = []
    for i, (wide, narrow) in enumerate(batches):
        for group in opt.param_groups:
            group["lr"] = lrs[i] if lrs else group["lr"]
        opt.zero_grad()
        loss = _loss(model, wide, narrow)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_lazy_tables_turn_only_the_wide_tables_sparse() -> None:
    model = _model()
    assert lazy_tables(model, 10) == ["wide"]
    assert model["wide"].sparse and not model["narrow"].sparse
    assert lazy_tables(model, 50) == [] and not model["wide"].sparse  # 50 rows is not more than 50
    assert lazy_tables(model, None) == []


def test_lazy_adam_takes_the_dense_adams_steps_writing_only_the_rows_it_reads() -> None:
    """Under a learning rate that changes every step: every forward pass reads what the dense fused
    Adam's reads (the same losses), every dense parameter and every row a step has read moves as the
    dense Adam's; the rows it has not read stay where they were written (the dense Adam moves them on
    their momentum), and ``flush`` takes them through the missed steps to the dense Adam's weights and
    moments."""
    lazy, lazy_opt, dense, dense_opt = _pair()
    lrs = [0.1 * (1 + i % 4) / (1 + i // 4) for i in range(len(BATCHES))]
    for i, batch in enumerate(BATCHES):
        before = _weight(lazy).detach().clone()
        lazy_loss = _train(lazy, lazy_opt, [batch], lrs[i:i + 1])
        dense_loss = _train(dense, dense_opt, [batch], lrs[i:i + 1])
        assert lazy_loss == pytest.approx(dense_loss, rel=1e-5)
        grad = _weight(lazy).grad
        assert grad is not None and grad.is_sparse
        for a, b in zip(lazy.parameters(), dense.parameters(), strict=True):
            if a is not _weight(lazy):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        held = sorted(set(batch[0]))
        torch.testing.assert_close(_weight(lazy)[held], _weight(dense)[held], rtol=1e-5, atol=1e-6)
        others = [r for r in range(50) if r not in held]
        assert torch.equal(_weight(lazy)[others], before[others])  # not read this step: not written
    lagging = [2, 12, 30]  # read last 1, 2 and 7 steps ago: the dense Adam moved them on since
    assert (_weight(dense)[lagging] - _weight(lazy)[lagging]).abs().amin(dim=1).min() > 1e-4
    lazy_opt.flush()
    torch.testing.assert_close(_weight(lazy), _weight(dense), rtol=1e-5, atol=1e-6)
    lazy_state, dense_state = lazy_opt.state[_weight(lazy)], dense_opt.state[_weight(dense)]
    assert lazy_state["step"].item() == dense_state["step"].item() == len(BATCHES)
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(lazy_state[key], dense_state[key], rtol=1e-5, atol=1e-9)


def test_rows_another_rank_read_are_brought_up_before_their_step() -> None:
    """Under DDP or Horovod a step's reduced gradient holds the rows every rank read, and this rank's
    forward brought up only its own: the step brings up the others before Adam moves them."""
    lazy, lazy_opt, dense, dense_opt = _pair()
    _train(lazy, lazy_opt, BATCHES[:6])
    _train(dense, dense_opt, BATCHES[:6])
    rows = torch.tensor([2, 30, 40, 7])  # read 5, 2, never and 1 step(s) ago
    values = torch.linspace(-1.0, 1.0, 12).reshape(4, 3)
    for opt in (lazy_opt, dense_opt):
        opt.zero_grad()
    _weight(lazy).grad = torch.sparse_coo_tensor(rows[None], values, (50, 3), check_invariants=True)
    _weight(dense).grad = torch.zeros(50, 3).index_add_(0, rows, values)
    lazy_opt.step()
    dense_opt.step()
    torch.testing.assert_close(_weight(lazy)[rows], _weight(dense)[rows], rtol=1e-5, atol=1e-6)


def test_lazy_adam_state_round_trips_through_the_checkpoints_format() -> None:
    """``state_dict`` is the dense Adam's (``step``, ``exp_avg``, ``exp_avg_sq`` per parameter, every row
    current, the weights too): a run stopped after five steps and resumed from the state dict takes the
    last seven as the uninterrupted run did, and a plain Adam loads it (``best_model`` reads checkpoints
    with one)."""
    whole, whole_opt, dense, dense_opt = _pair()
    _train(whole, whole_opt, BATCHES)
    _train(dense, dense_opt, BATCHES)
    whole_opt.flush()

    first, first_opt, _, _ = _pair()
    _train(first, first_opt, BATCHES[:5])
    saved = copy.deepcopy(first_opt.state_dict())  # flushes: the weights are current too
    weights = copy.deepcopy(first.state_dict())
    resumed, resumed_opt, _, _ = _pair()
    resumed.load_state_dict(weights)
    resumed_opt.load_state_dict(saved)
    _train(resumed, resumed_opt, BATCHES[5:])
    resumed_opt.flush()
    for a, b, c in zip(resumed.parameters(), whole.parameters(), dense.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)
    torch.optim.Adam(_model().parameters(), lr=0.1).load_state_dict(saved)


def test_lazy_adam_refuses_betas_whose_missed_steps_do_not_fade() -> None:
    model = _model()
    lazy_tables(model, 10)
    opt = LazyAdam(model.parameters(), lr=0.1)
    opt.param_groups[0]["betas"] = (0.9, 0.5)  # beta1 >= sqrt(beta2): a row's drift never dies out
    with pytest.raises(ValueError, match="betas"):
        _train(model, opt, BATCHES[:1])


def test_lazy_adam_refuses_a_closure() -> None:
    model = _model()
    with pytest.raises(ValueError, match="closure"):
        LazyAdam(model.parameters(), lr=0.1).step(lambda: 0.0)


def test_training_with_the_deferred_adam_gives_the_dense_tables_model(tmp_path: Path) -> None:
    """``embedlib.fit`` twice on a table with a 400-value column, its embedding table sparse
    (``train.lazy_above: 100``) and dense (``null``), the same seed and steps: the bundles' weights
    agree — the loop brings every row up to date before the epoch's validation and checkpoint,
    whichever rows the last steps read — and the run records the sparse table."""
    import numpy as np
    import pyarrow as pa

    import embedlib

    rng = np.random.default_rng(0)
    c = np.minimum(np.exp(rng.uniform(0, np.log(401), 4_000)).astype(int) - 1, 399)  # log-uniform: most rare
    table = pa.table({"c": [f"v{v}" for v in c], "d": [f"d{v % 7}" for v in c], "x": rng.normal(size=4_000)})
    # 40 steps: a row whose gradient is near Adam's eps is brought up slightly off the dense Adam's move (the
    # lazy module's docstring); on this table, after 80 steps one rare row was 0.03 off and the dense layers
    # followed it (5e-3: Adam's steps are the sign of near-zero gradients), so the run is kept where the
    # approximation's own error is measured (1.3e-4 on the sparse table, 2e-7 on the dense layers, at 40)
    settings = {"model.size": "small", "train.max_steps": 40, "vocab.min_count": 1}
    bundles = {lazy: embedlib.fit(table, categorical=["c", "d"], numeric=["x"], output_dir=str(tmp_path / str(lazy)),
                                  settings={**settings, "train.lazy_above": lazy})
               for lazy in (100, None)}
    assert bundles[100].manifest["metrics"]["lazy_tables"] == ["c"]
    assert bundles[None].manifest["metrics"]["lazy_tables"] == []
    losses = [b.manifest["metrics"]["validation_loss"] for b in (bundles[100], bundles[None])]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    deferred, dense = bundles[100].model.state_dict(), bundles[None].model.state_dict()
    assert deferred.keys() == dense.keys()
    for name in dense:  # the sparse table: within Adam's eps's share (the lazy module's docstring); a step moves
        # a weight by ~3e-3 (lr), and a row the last steps read but not brought up would be that far off
        atol = 3e-4 if name == "embeddings.0.weight" else 1e-5
        torch.testing.assert_close(deferred[name], dense[name], rtol=1e-4, atol=atol, msg=name)
