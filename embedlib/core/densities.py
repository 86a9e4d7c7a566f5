"""Each standardized numeric's density (``model.numeric_head``): its nats and its expected value (torch only).

The numeric head of :class:`embedlib.core.model.EmbeddingAutoencoder` outputs ``NUMERIC_HEADS[head]``
parameters per numeric column; this module turns them into each cell's ``−log p(x)`` (the Gaussian's
constant ``½·log 2π`` left out, as it always was) and into the value the model expects:

* ``unit`` — a unit-variance Gaussian around the prediction: ``½ (x − μ)²``;
* ``gaussian`` — a heteroscedastic Gaussian: ``½ ((x − μ)/σ)² + log σ``;
* ``mixture`` — ``MIXTURE`` Gaussians with their weights: ``−log Σ_k π_k exp(−½ ((x − μ_k)/σ_k)²) / σ_k``.

Every ``σ`` is at least ``SIGMA_FLOOR`` (of the column's standard deviation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["MIXTURE", "NUMERIC_HEADS", "SIGMA_FLOOR", "log_sigma_of", "numeric_mean", "numeric_nll"]

#: ``model.numeric_head`` → parameters per numeric cell (the numeric head's outputs are laid out
#: parameter-major: parameter ``p`` of numeric ``j`` at column ``p * n_numeric + j``).
MIXTURE = 3
NUMERIC_HEADS: Mapping[str, int] = {"unit": 1, "gaussian": 2, "mixture": 3 * MIXTURE}
#: The smallest spread a numeric head may learn, in standard deviations of its column: a relation that
#: holds to 1 % of a column's spread is exact for detection, and a cell's nats stay finite.
SIGMA_FLOOR = 0.01
_LOG_FLOOR = math.log(SIGMA_FLOOR)


def log_sigma_of(raw: torch.Tensor) -> torch.Tensor:
    """A head's raw output → log σ, smoothly above ``log SIGMA_FLOOR`` (gradients everywhere)."""
    return _LOG_FLOOR + nn.functional.softplus(raw - _LOG_FLOOR)


def _params(pred: torch.Tensor, n: int) -> list[torch.Tensor]:
    """The numeric head's output as its parameter blocks, each ``[rows, n]``."""
    return [pred[:, p * n : (p + 1) * n] for p in range(pred.shape[1] // n)] if n else []


def numeric_mean(pred: torch.Tensor, n: int) -> torch.Tensor:
    """Each numeric's expected standardized value (``[rows, n]``) from the numeric head's output:
    the prediction (``unit``), the mean (``gaussian``), the weighted mean of the means (``mixture``)."""
    blocks = _params(pred, n)
    if len(blocks) <= 2:
        return pred[:, :n]
    k = len(blocks) // 3
    weights = torch.softmax(torch.stack(blocks[:k], 2), 2)
    return (weights * torch.stack(blocks[k : 2 * k], 2)).sum(2)


def numeric_nll(pred: torch.Tensor, num: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
    """Each numeric cell's −log p in nats (½·log 2π left out), 0 where missing; ``[rows, n]``."""
    n = num.shape[1]
    blocks = _params(pred, n)
    if len(blocks) == 1:
        cell = 0.5 * (num - pred) ** 2
    elif len(blocks) == 2:
        log_sigma = log_sigma_of(blocks[1])
        cell = 0.5 * ((num - blocks[0]) * torch.exp(-log_sigma)) ** 2 + log_sigma
    else:
        k = len(blocks) // 3
        logits, means = torch.stack(blocks[:k], 2), torch.stack(blocks[k : 2 * k], 2)
        log_sigma = log_sigma_of(torch.stack(blocks[2 * k :], 2))
        z = (num.unsqueeze(2) - means) * torch.exp(-log_sigma)
        cell = -torch.logsumexp(torch.log_softmax(logits, 2) - 0.5 * z**2 - log_sigma, 2)
    return cell * (1.0 - missing)
