"""The lazy Adam of wide embedding tables (``train.lazy_above``, :mod:`embedlib.train.lazy`)."""

from __future__ import annotations

import copy
from typing import cast

import pytest
import torch
from torch import nn

from embedlib.train.lazy import LazyAdam, lazy_tables


def _model() -> nn.ModuleDict:
    torch.manual_seed(0)
    return nn.ModuleDict({"wide": nn.Embedding(50, 3), "narrow": nn.Embedding(5, 3), "out": nn.Linear(6, 1)})


def _weight(model: nn.ModuleDict) -> torch.Tensor:
    return cast(nn.Embedding, model["wide"]).weight


def _loss(model: nn.ModuleDict, wide: list[int], narrow: list[int]) -> torch.Tensor:
    emb = torch.cat([model["wide"](torch.tensor(wide)), model["narrow"](torch.tensor(narrow))], dim=1)
    return (model["out"](emb) ** 2).sum()


#: four steps' batches of the wide table's rows: 7 is in every batch (twice in the first), 2 in the
#: first only, 9 and 4 from the second on, 30 in the third only, 1 in the first and the last; the
#: other rows never
BATCHES = [([7, 1, 7, 2], [0, 1, 2, 3]), ([7, 9, 9, 4], [4, 0, 1, 1]), ([7, 30, 4, 9], [2, 2, 3, 0]),
           ([7, 1, 4, 9], [1, 3, 0, 2])]


def _train(model: nn.ModuleDict, opt: torch.optim.Optimizer, batches: list[tuple[list[int], list[int]]]) -> None:
    for wide, narrow in batches:
        opt.zero_grad()
        _loss(model, wide, narrow).backward()
        opt.step()


def test_lazy_tables_turn_only_the_wide_tables_sparse() -> None:
    model = _model()
    assert lazy_tables(model, 10) == ["wide"]
    assert model["wide"].sparse and not model["narrow"].sparse
    assert lazy_tables(model, 50) == [] and not model["wide"].sparse  # 50 rows is not more than 50
    assert lazy_tables(model, None) == []


def test_lazy_adam_is_adam_on_the_rows_a_batch_holds_and_leaves_the_others_alone() -> None:
    """Every dense parameter, and every row a step's batch holds whose batches so far were consecutive,
    moves as under the dense fused Adam; a row the step does not hold keeps its weights (the dense Adam
    moves it on its momentum); a row held again after a gap takes one step of its own moments, not the
    dense Adam's; rows never held never move."""
    lazy, dense = _model(), _model()
    lazy_tables(lazy, 10)
    lazy_opt, dense_opt = LazyAdam(lazy.parameters(), lr=0.1), torch.optim.Adam(dense.parameters(), lr=0.1, fused=True)
    start = _weight(lazy).detach().clone()
    for step, batch in enumerate(BATCHES):
        before = _weight(lazy).detach().clone()
        _train(lazy, lazy_opt, [batch])
        _train(dense, dense_opt, [batch])
        grad = _weight(lazy).grad
        assert grad is not None and grad.is_sparse
        if step < len(BATCHES) - 1:  # the same fused kernel on gradients equal to float rounding (until row 1
            for a, b in zip(lazy.parameters(), dense.parameters(), strict=True):  # comes back, changed)
                if a is not _weight(lazy):
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        held = sorted(set(batch[0]))
        unbroken = [r for r in held if r != 1 or step == 0]  # 1 comes back after a gap in the last step
        torch.testing.assert_close(_weight(lazy)[unbroken], _weight(dense)[unbroken], rtol=1e-5, atol=1e-6)
        others = [r for r in range(50) if r not in held]
        assert torch.equal(_weight(lazy)[others], before[others])  # not held this step: unchanged
        if step == 1:  # 1 and 2 were held in the first step only: the dense Adam moved them on
            assert (_weight(dense)[[1, 2]] - _weight(lazy)[[1, 2]]).abs().min() > 1e-3
    # back after two steps away: not the dense Adam's row (its moments decayed three times), and not
    # where it stood (it did move)
    assert (_weight(dense)[1] - _weight(lazy)[1]).abs().min() > 1e-3
    never = [r for r in range(50) if all(r not in b[0] for b in BATCHES)]
    assert torch.equal(_weight(lazy)[never], start[never])
    state = lazy_opt.state[_weight(lazy)]
    assert state["step"].item() == 4 and torch.equal(state["exp_avg"][never], torch.zeros(len(never), 3))


def test_lazy_adam_state_round_trips_through_the_checkpoints_format() -> None:
    """The state is Adam's (step, exp_avg, exp_avg_sq per parameter): a run stopped after two steps and
    resumed from the state dict takes the last two as the uninterrupted run did, and a plain Adam loads
    it (``best_model`` reads checkpoints with one)."""
    whole = _model()
    lazy_tables(whole, 10)
    whole_opt = LazyAdam(whole.parameters(), lr=0.1)
    _train(whole, whole_opt, BATCHES)

    first = _model()
    lazy_tables(first, 10)
    first_opt = LazyAdam(first.parameters(), lr=0.1)
    _train(first, first_opt, BATCHES[:2])
    saved, weights = copy.deepcopy(first_opt.state_dict()), copy.deepcopy(first.state_dict())
    resumed = _model()
    resumed.load_state_dict(weights)
    lazy_tables(resumed, 10)
    resumed_opt = LazyAdam(resumed.parameters(), lr=0.1)
    resumed_opt.load_state_dict(saved)
    _train(resumed, resumed_opt, BATCHES[2:])
    for a, b in zip(resumed.parameters(), whole.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.optim.Adam(_model().parameters(), lr=0.1).load_state_dict(saved)


def test_lazy_adam_refuses_a_closure() -> None:
    model = _model()
    with pytest.raises(ValueError, match="closure"):
        LazyAdam(model.parameters(), lr=0.1).step(lambda: 0.0)
