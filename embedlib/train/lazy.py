"""Adam, with lazy updates of the wide embedding tables where ``train.lazy_above`` asks for them.

Under a dense Adam every step writes every row of every embedding table — its gradient (a fresh
zero-filled array with the batch's rows added), its two moments and its weights — so a
categorical of 100,000+ values costs per step in proportion to its vocabulary, not to the batch.
A table of more rows than ``train.lazy_above`` takes sparse gradients instead
(``nn.Embedding(sparse=True)``: DDP over gloo and Horovod reduce them as indices and values) and
:class:`LazyAdam` updates only the rows a step's batch holds, with Adam's own rule on those rows:
their moments decay and take the gradient, the weights move by the bias-corrected ratio. A row the
batch does not hold keeps its weights and its moments (as ``torch.optim.SparseAdam`` and TF's
``LazyAdam`` do). Every other parameter takes the fused dense Adam.

The price is learning per step: under a dense Adam a row keeps moving on its momentum for tens of
steps after its batch, which a rare value's embedding needs, so at the same steps the lazy update
fits worse (the README's "Very high cardinality" has the figures); ``train.lazy_above`` is off by
default. One optimizer and one state layout (``step``, ``exp_avg``, ``exp_avg_sq`` per parameter):
checkpoints, Horovod's broadcast and the learning-rate schedule see an ``Adam``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["LazyAdam", "lazy_tables"]


def lazy_tables(model: nn.Module, above: int | None) -> list[str]:
    """Turns the embedding tables of more than ``above`` rows (none for ``None``) to sparse gradients;
    returns their names."""
    named = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Embedding)]
    for _, table in named:
        table.sparse = above is not None and table.num_embeddings > above
    return [name for name, table in named if table.sparse]


class LazyAdam(torch.optim.Adam):
    """``torch.optim.Adam`` (fused) for dense gradients; a row-wise lazy Adam for sparse ones."""

    def __init__(self, params: object, lr: float = 1e-3) -> None:  # Horovod's wrapper passes the groups only
        super().__init__(params, lr=lr, fused=True)  # type: ignore[arg-type]

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
            self._lazy_step(group, p)
        return None

    def _lazy_step(self, group: dict[str, Any], p: torch.Tensor) -> None:
        """Adam on the rows of ``p`` its sparse gradient holds (duplicates summed)."""
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
        state["step"] += 1
        step = float(state["step"].item())
        exp_avg = state["exp_avg"].index_select(0, rows).mul_(beta1).add_(values, alpha=1 - beta1)
        exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(values, values, value=1 - beta2)
        state["exp_avg"].index_copy_(0, rows, exp_avg)
        state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
        denom = exp_avg_sq.div_(1 - beta2**step).sqrt_().add_(eps)
        p.index_add_(0, rows, exp_avg.div_(denom), alpha=-lr / (1 - beta1**step))
