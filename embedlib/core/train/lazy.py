"""Adam, with the wide embedding tables' rows brought up to date only when they are read.

Under a dense Adam every step writes every row of every embedding table — its gradient (a fresh
zero-filled array with the batch's rows added), its two moments and its weights — so a
categorical of 100,000+ values costs per step in proportion to its vocabulary, not to the batch.
A table of more rows than ``train.lazy_above`` takes sparse gradients instead
(``nn.Embedding(sparse=True)``: DDP over gloo and Horovod reduce them as indices and values), and
:class:`LazyAdam` writes only the rows a step reads — and still takes the dense Adam's steps.

A row with no gradient since its step ``s`` moves under the dense Adam on its decaying moments: at
step ``j > s`` its moments are ``β1^(j-s)·m`` and ``β2^(j-s)·v`` and its weights move by
``a_j · m / (b_j·√v + eps)`` with ``a_j = lr_j · β1^(j-s) / (1 - β1^j)`` and
``b_j = β2^((j-s)/2) / √(1 - β2^j)``. Where ``√v`` dwarfs ``eps`` that is ``c_j · r^(j-s) · m / √v`` with
``r = β1 / √β2`` and ``c_j = lr_j · √(1 - β2^j) / (1 - β1^j)``, so the whole of a row's missed steps up
to step ``T`` is one scalar per ``s``, ``D[s] = Σ_{j=s+1..T} a_j / b_j``, kept for every step as a
running sum (each step adds its term to the last ``K`` entries, beyond which ``r^K`` is below 1e-20),
with ``E[s] = Σ a_j`` beside it. A row is brought up to date with
``w -= D[s] · m / (√v + eps · D[s] / E[s])`` and its moments decayed: the dense Adam's move exactly
where ``√v`` dwarfs ``eps``, where ``eps`` dwarfs ``√v``, and where ``b_j`` holds still over the steps
that weigh (``r^(j-s)``: the first few tens); between, an element with a gradient near ``eps`` moves
by more or less than under the dense Adam — after 40 steps of the test's table, a weight 0.00013 off
where a step moves it 0.003 (``tests/test_lazy.py``), but after 80 steps one rare row 0.03 off, which the
dense layers then follow. It is brought up to date when a
forward pass reads it (a forward pre-hook, :meth:`LazyAdam.keep_current`), when a step's gradient
holds it (the other ranks' rows), and for every row in :meth:`LazyAdam.flush` — which the training
loop calls before each epoch's validation and checkpoint, and :meth:`LazyAdam.state_dict` too: a
checkpoint is the dense Adam's state. Every other parameter takes the fused dense Adam. One state
layout (``step``, ``exp_avg``, ``exp_avg_sq`` per parameter): checkpoints, Horovod's broadcast and the
learning-rate schedule see an ``Adam``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["LazyAdam", "lazy_tables"]


def lazy_tables(model: nn.Module, above: int | None) -> list[str]:
    """Turns the embedding tables of more than ``above`` rows (none for ``None``) to sparse gradients;
    returns their names."""
    named = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Embedding)]
    for _, table in named:
        table.sparse = above is not None and table.num_embeddings > above
    return [name for name, table in named if table.sparse]


class _Pending:
    """A sparse table's bookkeeping: the step each row is current at; ``D[s]`` and ``E[s]`` (the module's
    docstring) for every step ``s`` so far (grown by doubling); ``r^K … r^1`` and ``β1^K … β1^1``."""

    def __init__(self, rows: int, now: int, betas: tuple[float, float], eps: float, device: torch.device) -> None:
        self.betas, self.eps = betas, eps
        ratio = betas[0] / math.sqrt(betas[1])
        if ratio >= 1:
            raise ValueError(f"a sparse table's deferred Adam needs beta1 < sqrt(beta2), got betas {betas}")
        window = math.ceil(math.log(1e-20) / math.log(ratio)) if ratio > 0 else 1
        exponents = torch.arange(window, 0, -1, dtype=torch.float64)
        self.powers = torch.stack([ratio**exponents, betas[0] ** exponents])  # r^K .. r^1, β1^K .. β1^1
        self.last = torch.full((rows,), now, dtype=torch.long, device=device)
        self.sums = torch.zeros(2, 0, dtype=torch.float64)  # D, E
        self.grow(now)

    def grow(self, step: int) -> None:
        """Room for ``D[step]`` and ``E[step]``."""
        if step < self.sums.shape[1]:
            return
        size = max(1024, 2 * step + 2)
        self.sums = torch.cat([self.sums, torch.zeros(2, size - self.sums.shape[1], dtype=torch.float64)], dim=1)

    def add(self, step: int, lr: float) -> None:
        """Step ``step``'s terms of every ``s < step``: ``c_step · r^(step − s)`` and ``lr / (1 − β1^step) · β1^(step − s)``."""
        beta1, beta2 = self.betas
        window = min(step, self.powers.shape[1])
        scale = torch.tensor([[lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)], [lr / (1 - beta1**step)]],
                             dtype=torch.float64)
        self.sums[:, step - window:step] += scale * self.powers[:, -window:]

    def move(self, last: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor) -> torch.Tensor:
        """The dense Adam's move of rows current at ``last``, of moments ``exp_avg``, ``exp_avg_sq``, to now:
        ``D·m / (√v + eps·D/E)``."""
        drift, decay = self.sums.index_select(1, last)
        weight = torch.where(decay > 0, drift / decay.clamp_min(1e-300), 1.0).to(exp_avg.dtype)  # rows missing no step: 1
        denom = exp_avg_sq.sqrt().add_((self.eps * weight)[:, None])
        return exp_avg.div(denom).mul_(drift.to(exp_avg.dtype)[:, None])


class LazyAdam(torch.optim.Adam):
    """``torch.optim.Adam`` (fused) for dense gradients; for sparse ones the same Adam, written a row
    at a time when the row is read."""

    def __init__(self, params: object, lr: float = 1e-3) -> None:  # Horovod's wrapper passes the groups only
        super().__init__(params, lr=lr, fused=True)  # type: ignore[arg-type]
        self._pending: dict[torch.Tensor, _Pending] = {}

    def keep_current(self, model: nn.Module) -> list[RemovableHandle]:
        """Before each forward pass of a sparse table, brings the rows it reads up to date."""
        def current(table: nn.Module, args: tuple[Any, ...]) -> None:
            self._bring_up(cast(nn.Embedding, table).weight, args[0].reshape(-1).unique(), stale_only=False)

        return [table.register_forward_pre_hook(current) for table in model.modules()
                if isinstance(table, nn.Embedding) and table.sparse]

    @torch.no_grad()
    def flush(self) -> None:
        """Brings every row of every sparse table up to date: the weights and moments are the dense Adam's."""
        for p, pending in self._pending.items():
            self._bring_up(p, torch.nonzero(pending.last < self._steps(p)).reshape(-1))

    def state_dict(self) -> dict[str, Any]:
        self.flush()
        return super().state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._pending.clear()  # a state dict is flushed: every row is current at its step

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        if closure is not None:
            raise ValueError("LazyAdam takes no closure")
        sparse = [(group, p) for group in self.param_groups for p in group["params"]
                  if p.grad is not None and p.grad.is_sparse]
        grads = [p.grad for _, p in sparse]
        for _, p in sparse:
            p.grad = None  # the fused step skips them
        try:
            super().step()
        finally:
            for (_, p), grad in zip(sparse, grads, strict=True):
                p.grad = grad
        for group, p in sparse:
            self._sparse_step(group, p)
        return None

    def _steps(self, p: torch.Tensor) -> int:
        state = self.state.get(p)
        return int(state["step"].item()) if state else 0

    @torch.no_grad()
    def _bring_up(self, p: torch.Tensor, rows: torch.Tensor, stale_only: bool = True) -> None:
        """Takes ``rows`` (distinct) of ``p`` through the steps they missed (no gradient: decaying moments);
        ``stale_only=False`` skips the check for rows already current (they are left as they are:
        ``D[now]`` is 0 and their moments decay by ``β⁰``) — cheaper where most rows are stale."""
        pending = self._pending.get(p)
        if pending is None or rows.numel() == 0:
            return
        now = self._steps(p)
        last = pending.last.index_select(0, rows)
        if stale_only:
            stale = (last < now).nonzero().squeeze(1)
            if stale.numel() == 0:
                return
            rows, last = rows.index_select(0, stale), last.index_select(0, stale)
        state = self.state[p]
        exp_avg, exp_avg_sq = state["exp_avg"].index_select(0, rows), state["exp_avg_sq"].index_select(0, rows)
        p.index_add_(0, rows, pending.move(last, exp_avg, exp_avg_sq), alpha=-1.0)
        gap = (now - last).to(p.dtype)[:, None]
        state["exp_avg"].index_copy_(0, rows, exp_avg.mul_(torch.pow(pending.betas[0], gap)))
        state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq.mul_(torch.pow(pending.betas[1], gap)))
        pending.last.index_fill_(0, rows, now)

    def _sparse_step(self, group: dict[str, Any], p: torch.Tensor) -> None:
        """Adam on the rows of ``p`` its sparse gradient holds (duplicates summed), after the steps they
        missed; then every row's missed steps grow by this one."""
        grad = p.grad
        assert grad is not None
        grad = grad.coalesce()
        rows, values = grad.indices()[0], grad.values()
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        beta1, beta2 = (float(b) for b in group["betas"])
        lr, eps = float(group["lr"]), float(group["eps"])
        if p not in self._pending:
            self._pending[p] = _Pending(p.shape[0], self._steps(p), (beta1, beta2), eps, p.device)
        self._bring_up(p, rows)  # the rows only other ranks read
        pending = self._pending[p]
        state["step"] += 1
        step = int(state["step"].item())
        exp_avg = state["exp_avg"].index_select(0, rows).mul_(beta1).add_(values, alpha=1 - beta1)
        exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(values, values, value=1 - beta2)
        state["exp_avg"].index_copy_(0, rows, exp_avg)
        state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
        denom = exp_avg_sq.div_(1 - beta2**step).sqrt_().add_(eps)
        p.index_add_(0, rows, exp_avg.div_(denom), alpha=-lr / (1 - beta1**step))
        pending.last.index_fill_(0, rows, step)
        pending.grow(step)
        pending.add(step, lr)
