"""The output heads of categorical columns, and how many rows one pass may take.

A categorical's head is a linear layer (its logits: a full softmax over the vocabulary) or, for a
wide column (``model.adaptive_above``), an :class:`AdaptiveHead`, whose output is a
:class:`WideOutput`: log-probabilities computed for the indices asked, never for the whole
vocabulary at once. :func:`embedlib.model.column_nll` and :func:`top_of` take either.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ADAPTIVE_CUTOFFS", "PASS_LOGITS", "PASS_ROWS", "AdaptiveHead", "HeadOutput", "WideOutput", "head_for",
           "top_of"]

#: The most rows one forward pass outside training takes (validation, calibration, scoring in the
#: driver or in memory): its logits are rows × the column's values, so memory stays bounded
#: whatever the shard size and the cardinality.
PASS_ROWS = 8_192
#: … and fewer where a full softmax is wide: at most this many logits (128 MiB of float32) per pass.
PASS_LOGITS = 2**25
#: The cluster bounds of an adaptive head (indices are by count, most frequent first): a head over
#: the first 256 indices and one token per cluster, then clusters up to 4,096, 65,536 and the rest.
#: A small head keeps the cost per row near a narrow column's (benchmarks/highcard_bench.py).
ADAPTIVE_CUTOFFS = (256, 4_096, 65_536)


class WideOutput:
    """An adaptive head's output for a batch: the decoder's hidden state and the head, whose
    log-probabilities are computed for the indices asked (never for the whole vocabulary at once)."""

    def __init__(self, head: AdaptiveHead, hidden: torch.Tensor) -> None:
        self.head = head
        self.hidden = hidden

    def nll(self, target: torch.Tensor) -> torch.Tensor:
        """``−log p(target)`` per row, exact (normalised over every index)."""
        return -self.head.log_prob_of(self.hidden, target)

    def top(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The most likely index of each row and its probability, exact."""
        return self.head.top(self.hidden)


#: What a categorical head gives for a batch: logits (a full softmax) or a :class:`WideOutput`.
HeadOutput = torch.Tensor | WideOutput


class AdaptiveHead(nn.Module):
    """The output layer of a wide categorical (``model.adaptive_above``), after Grave et al.'s adaptive
    softmax: indices are ordered by count, so the head scores the ``bounds[0]`` most frequent indices
    plus one token per cluster of rarer ones, and each cluster has its own softmax behind a low-rank
    projection (width ÷ 4 per level). ``log p(v)`` is ``log p_head(v)`` for an index in the head and
    ``log p_head(cluster) + log p_cluster(v)`` otherwise — exact and normalised, at a fraction of a
    full softmax's cost when most rows hold frequent values."""

    def __init__(self, width: int, n: int, cutoffs: Sequence[int]) -> None:
        super().__init__()
        self.bounds = (*cutoffs, n)  # cluster i holds indices [bounds[i], bounds[i + 1])
        self.head = nn.Linear(width, cutoffs[0] + len(cutoffs))
        self.tail = nn.ModuleList(
            nn.Sequential(nn.Linear(width, max(1, width // 4 ** (i + 1)), bias=False),
                          nn.Linear(max(1, width // 4 ** (i + 1)), self.bounds[i + 1] - self.bounds[i], bias=False))
            for i in range(len(cutoffs))
        )

    def forward(self, hidden: torch.Tensor) -> WideOutput:
        return WideOutput(self, hidden)

    def _chunk(self, cluster: int) -> int:
        """Rows of cluster ``cluster``'s softmax at a time."""
        return max(1, PASS_LOGITS // (self.bounds[cluster + 1] - self.bounds[cluster]))

    def log_prob_of(self, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``log p(target)`` per row; each cluster's softmax runs only on the rows whose target is in
        it, at most ``PASS_LOGITS`` logits at a time."""
        head_lp = nn.functional.log_softmax(self.head(hidden), dim=1)
        short = self.bounds[0]
        target = target.long()
        out = head_lp.gather(1, target.clamp(max=short - 1)[:, None]).squeeze(1)
        rows_in_tail, picked = [], []
        for i, proj in enumerate(self.tail):
            lo, hi = self.bounds[i], self.bounds[i + 1]
            # split() of zero rows gives one empty chunk: a cluster no target falls in still runs, so
            # every parameter gets a (zero) gradient in every step, which DDP and Horovod need
            for chunk in ((target >= lo) & (target < hi)).nonzero().squeeze(1).split(self._chunk(i)):
                logits = proj(hidden[chunk])  # log p(v | cluster) = logit − logsumexp: no softmax array
                rows_in_tail.append(chunk)
                picked.append(logits.gather(1, (target[chunk] - lo)[:, None]).squeeze(1)
                              - torch.logsumexp(logits, dim=1) + head_lp[chunk, short + i])
        # one scatter of every tail row (not a copy of ``out`` per chunk); there is at least one cluster
        return out.index_put((torch.cat(rows_in_tail),), torch.cat(picked))

    def top(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Arg-max index and its probability per row, exact: a cluster's softmax runs only for rows
        where the cluster's own probability exceeds the best value found so far (no value inside it
        can beat that otherwise)."""
        head_lp = nn.functional.log_softmax(self.head(hidden), dim=1)
        short = self.bounds[0]
        best_lp, best = head_lp[:, :short].max(dim=1)
        for i, proj in enumerate(self.tail):
            cluster_lp = head_lp[:, short + i]
            for chunk in (cluster_lp > best_lp).nonzero().squeeze(1).split(self._chunk(i)):
                logits = proj(hidden[chunk])  # the arg-max of the logits; its log p from their logsumexp
                top, index = logits.max(dim=1)
                value = top - torch.logsumexp(logits, dim=1) + cluster_lp[chunk]
                better = value > best_lp[chunk]
                best_lp[chunk] = torch.where(better, value, best_lp[chunk])
                best[chunk] = torch.where(better, index + self.bounds[i], best[chunk])
        return best, best_lp.double().exp()


def head_for(width: int, n: int, cutoffs: Sequence[int]) -> nn.Module:
    """A categorical's output layer: adaptive with ``cutoffs``, else a full softmax's linear layer."""
    return AdaptiveHead(width, n, cutoffs) if cutoffs else nn.Linear(width, n)


def top_of(output: HeadOutput) -> tuple[torch.Tensor, torch.Tensor]:
    """The arg-max index of each row and its probability (float64)."""
    if isinstance(output, WideOutput):
        return output.top()
    top = output.max(dim=1)  # from the logits: no full softmax needed
    return top.indices, torch.exp(top.values.double() - torch.logsumexp(output.double(), dim=1))
