"""The output heads of categorical columns, and how many rows one pass may take.

A categorical's head is a linear layer (its logits: a full softmax over the vocabulary) or, for a
wide column (``model.adaptive_above``), an :class:`AdaptiveHead`, whose output is a
:class:`WideOutput`: log-probabilities computed for the indices asked, never for the whole
vocabulary at once. :func:`embedlib.core.model.column_nll` and :func:`top_of` take either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

__all__ = ["ADAPTIVE_CUTOFFS", "BUCKET", "CLUSTER_LOGITS", "PASS_LOGITS", "PASS_ROWS", "AdaptiveHead", "HeadOutput", "WideOutput", "head_for",
           "top_of"]

#: The most rows one forward pass outside training takes (validation, calibration, scoring in the
#: driver or in memory): its logits are rows × the column's values, so memory stays bounded
#: whatever the shard size and the cardinality.
PASS_ROWS = 8_192
#: … and fewer where a full softmax is wide: at most this many logits (128 MiB of float32) per pass.
PASS_LOGITS = 2**25
#: The most logits (and bucket weights) an adaptive head's cluster works on at a time: 4 MiB of
#: float32, so that their max, exp and sum run in the CPU's cache — the arg-max over a 3,840-value
#: cluster for 10,000 rows took 220 ms in chunks of 8,738 rows, 65 ms in chunks of 512 (one thread).
CLUSTER_LOGITS = 2**20
#: The cluster bounds of an adaptive head (indices are by count, most frequent first): a head over
#: the first 256 indices and one token per cluster, a cluster up to 4,096, then the rest in buckets
#: of :data:`BUCKET`. A small head keeps the cost per row near a narrow column's
#: (benchmarks/highcard_bench.py). Bundles written before buckets (bounds 256, 4,096, 65,536, each
#: cluster one softmax) load as they were.
ADAPTIVE_CUTOFFS = (256, 4_096)
#: The values of one bucket of an adaptive head's last cluster: the head holds one token per bucket
#: and a row pays for its own bucket's softmax only, so a rare value costs ~1,024 logits however many
#: values the column has (one softmax over the whole rest cost ~n).
BUCKET = 1_024
#: Nats added to :meth:`AdaptiveHead._ceilings`'s bound before it rules a cluster out: the bound is exact
#: arithmetic, the logits it bounds are float32.
SLACK = 1e-3


class WideOutput:
    """An adaptive head's output for a batch: the decoder's hidden state and the head, whose
    log-probabilities are computed for the indices asked (never for the whole vocabulary at once).
    ``head_top`` (optional, :meth:`AdaptiveHead.head_top`): what :meth:`top` needs of the head's
    log-softmax, taken from :meth:`nll`'s (:meth:`kept_top`) so that the arg-max of some rows later does
    not run the head again."""

    def __init__(self, head: AdaptiveHead, hidden: torch.Tensor, head_top: torch.Tensor | None = None) -> None:
        self.head = head
        self.hidden = hidden
        self.head_top = head_top
        self._head: tuple[torch.Tensor, torch.Tensor] | None = None  # nll's logits and log-softmax of the head

    def nll(self, target: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
        """``−log p(target)`` per row, exact (normalised over every index); with ``where`` (bool per
        row), computed for those rows only and 0 on the others. Outside autograd, for every row, it keeps
        the head's log-softmax for :meth:`kept_top` while this output lives."""
        if where is None:
            if torch.is_grad_enabled():
                return -self.head.log_prob_of(self.hidden, target)
            logits = self.head.head(self.hidden)
            self._head = logits, nn.functional.log_softmax(logits, dim=1)
            return -self.head.log_prob_of(self.hidden, target, self._head[1])
        rows = where.nonzero().squeeze(1)
        return self.hidden.new_zeros(target.shape[0]).index_put((rows,), -self.head.log_prob_of(self.hidden[rows], target[rows]))

    def kept_top(self) -> torch.Tensor:
        """:attr:`head_top`, from :meth:`nll`'s log-softmax of the head where it ran (else the head runs)."""
        if self.head_top is None:
            self.head_top = self.head.head_top(self.hidden, *(self._head or ()))
        return self.head_top

    def rows(self, rows: torch.Tensor) -> WideOutput:
        """The output of ``rows`` only."""
        return WideOutput(self.head, self.hidden[rows], None if self.head_top is None else self.head_top[rows])

    def top(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The most likely index of each row and its probability, exact."""
        return self.head.top(self.hidden, self.head_top)


#: What a categorical head gives for a batch: logits (a full softmax) or a :class:`WideOutput`.
HeadOutput = torch.Tensor | WideOutput


class AdaptiveHead(nn.Module):
    """The output layer of a wide categorical (``model.adaptive_above``), after Grave et al.'s adaptive
    softmax: indices are ordered by count, so the head scores the ``bounds[0]`` most frequent indices
    plus one token per cluster of rarer ones, and each cluster has its own softmax behind a low-rank
    projection (width ÷ 4 per level). ``log p(v)`` is ``log p_head(v)`` for an index in the head and
    ``log p_head(cluster) + log p_cluster(v)`` otherwise — exact and normalised, at a fraction of a
    full softmax's cost when most rows hold frequent values.

    With ``bucket`` (> 0) the last cluster is split into buckets of ``bucket`` consecutive indices,
    each its own softmax over its rows of the cluster's output weights, with one head token per bucket:
    ``log p(v) = log p_head(bucket) + log p_bucket(v)``, a row's cost bounded by the bucket's size."""

    def __init__(self, width: int, n: int, cutoffs: Sequence[int], bucket: int = 0) -> None:
        super().__init__()
        self.bounds = (*cutoffs, n)  # cluster i holds indices [bounds[i], bounds[i + 1])
        self.bucket = bucket
        #: head tokens: the first bounds[0] indices, one per plain cluster, one per bucket of the last
        self.n_buckets = -(-(n - cutoffs[-1]) // bucket) if bucket else 0
        self.plain = len(cutoffs) - (1 if bucket else 0)
        self.head = nn.Linear(width, cutoffs[0] + self.plain + self.n_buckets)
        self.tail = nn.ModuleList(
            nn.Sequential(nn.Linear(width, max(1, width // 4 ** (i + 1)), bias=False),
                          nn.Linear(max(1, width // 4 ** (i + 1)), self.bounds[i + 1] - self.bounds[i], bias=False))
            for i in range(len(cutoffs))
        )

    def forward(self, hidden: torch.Tensor) -> WideOutput:
        return WideOutput(self, hidden)

    def _chunk(self, cluster: int) -> int:
        """Rows of cluster ``cluster``'s softmax at a time (:data:`CLUSTER_LOGITS`); for the bucketed
        cluster, rows of a bucket's softmax, and under autograd of its slab of output weights too
        (``bucket`` × the projection's width each: see :meth:`_bucket_logits`)."""
        if cluster == self.plain:  # under autograd each row gathers its slab; outside, the slabs are read in place
            width = self._layers(cluster)[1].in_features if torch.is_grad_enabled() else 1
            return max(1, CLUSTER_LOGITS // (self.bucket * width))
        return max(1, CLUSTER_LOGITS // (self.bounds[cluster + 1] - self.bounds[cluster]))

    def _layers(self, cluster: int) -> tuple[nn.Linear, nn.Linear]:
        """Cluster ``cluster``'s projection and output layer."""
        proj, out = cast(nn.Sequential, self.tail[cluster])
        return cast(nn.Linear, proj), cast(nn.Linear, out)

    def _slabs(self) -> torch.Tensor:
        """The last cluster's output weights padded to whole buckets and viewed ``[buckets, bucket,
        width]`` (once per pass: a copy of the weights): each row takes its bucket's slab, whose
        gradient is one slab added per row, not one row per value."""
        weight = self._layers(self.plain)[1].weight
        padding = weight.new_zeros(self.n_buckets * self.bucket - weight.shape[0], weight.shape[1])
        # cat, not pad: pad fills the whole copy before it writes the weights into it
        return torch.cat([weight, padding]).view(self.n_buckets, self.bucket, -1)

    def _bucket_logits(self, hidden: torch.Tensor, bucket: torch.Tensor, slabs: torch.Tensor) -> torch.Tensor:
        """Each row's logits over the values of its bucket of the last cluster (``[rows, bucket]``),
        ``slabs`` from :meth:`_slabs`; the last bucket's missing values at −inf. Under autograd each row
        gathers its bucket's slab (one slab of gradient added per row). Outside, each run of consecutive
        rows of one bucket is one product with its slab, read in place: callers sort the rows by bucket
        (:func:`_by_bucket`), so a slab is read once per chunk, not copied once per row — 2.5× faster
        on the 100,000-value bench model's 2,688 bucket rows of a 10,000-row batch (one thread, 12.6 →
        5.1 ms). Under autograd, the same loop over a training batch's buckets (1–3 rows each) took
        5× the gather's time."""
        size = self.bounds[-1] - self.bounds[-2]
        projected = self._layers(self.plain)[0](hidden)
        if torch.is_grad_enabled():
            logits = torch.bmm(slabs.index_select(0, bucket), projected[:, :, None]).squeeze(2)
        else:
            logits = projected.new_empty(bucket.shape[0], self.bucket)
            runs, counts = torch.unique_consecutive(bucket, return_counts=True)
            start = 0
            for run, count in zip(runs.tolist(), counts.tolist(), strict=True):
                torch.mm(projected[start:start + count], slabs[run].T, out=logits[start:start + count])
                start += count
        values = size - (self.n_buckets - 1) * self.bucket  # of the last bucket
        if values < self.bucket:  # its padding, on the rows that have it only (bmm's gradient needs no output)
            logits[bucket == self.n_buckets - 1, values:] = float("-inf")
        return logits

    def log_prob_of(self, hidden: torch.Tensor, target: torch.Tensor, head_lp: torch.Tensor | None = None) -> torch.Tensor:
        """``log p(target)`` per row; each cluster's softmax runs only on the rows whose target is in
        it, at most :data:`CLUSTER_LOGITS` logits at a time. ``head_lp``: the head's log-softmax of
        ``hidden``, where the caller has it."""
        if head_lp is None:
            head_lp = nn.functional.log_softmax(self.head(hidden), dim=1)
        short = self.bounds[0]
        target = target.long()
        out = head_lp.gather(1, target.clamp(max=short - 1)[:, None]).squeeze(1)
        rows_in_tail, picked = [], []
        slabs = self._slabs() if self.bucket else None
        for i, proj in enumerate(self.tail):
            lo, hi = self.bounds[i], self.bounds[i + 1]
            # split() of zero rows gives one empty chunk: a cluster no target falls in still runs, so
            # every parameter gets a (zero) gradient in every step, which DDP and Horovod need
            rows = ((target >= lo) & (target < hi)).nonzero().squeeze(1)
            if i == self.plain and self.bucket and not torch.is_grad_enabled():  # the gather needs no order
                rows = rows[_by_bucket((target[rows] - lo) // self.bucket)]
            for chunk in rows.split(self._chunk(i)):
                at = target[chunk] - lo  # log p(v | cluster): _log_softmax_at, one chunk's logits at a time
                if slabs is None or i < self.plain:
                    logits, cluster_lp = proj(hidden[chunk]), head_lp[chunk, short + i]
                else:
                    bucket = at // self.bucket
                    logits, cluster_lp = self._bucket_logits(hidden[chunk], bucket, slabs), head_lp[chunk, short + i + bucket]
                    at = at % self.bucket
                rows_in_tail.append(chunk)
                picked.append(_log_softmax_at(logits, at) + cluster_lp)
        # one scatter of every tail row (not a copy of ``out`` per chunk); there is at least one cluster
        return out.index_put((torch.cat(rows_in_tail),), torch.cat(picked))

    def _ceilings(self, cluster: int, projected: torch.Tensor, slabs: torch.Tensor | None = None) -> torch.Tensor:
        """An upper bound of each row's best ``log p(v | cluster)`` (``[rows, 1]``; for the bucketed
        cluster, of ``log p(v | bucket)`` per bucket, ``[rows, buckets]``), never above 0, from the
        rows' ``projected`` hidden state ``g``. With ``u_v`` the output weights of the ``n`` values, ``ū``
        their mean and ``R`` the largest ``‖u_v − ū‖``: ``max_v u_v·g ≤ ū·g + R‖g‖`` (Cauchy–Schwarz) and
        ``logsumexp_v u_v·g ≥ log n + ū·g`` (Jensen), so ``log p(v | cluster) ≤ R‖g‖ − log n`` — a cluster
        whose bound keeps it below a row's best value needs no softmax for that row. The bucketed
        cluster's weights are ``slabs`` from :meth:`_slabs` (made here unless the caller has them)."""
        out = self._layers(cluster)[1]
        if cluster == self.plain and self.bucket:
            weights = slabs if slabs is not None else self._slabs()
            counts = (out.out_features - torch.arange(self.n_buckets, device=weights.device) * self.bucket).clamp(max=self.bucket)
        else:
            weights, counts = out.weight[None], torch.tensor([out.out_features], device=out.weight.device)
        real = torch.arange(weights.shape[1], device=weights.device)[None] < counts[:, None]  # not the last bucket's padding
        mean = weights.sum(dim=1) / counts[:, None]
        radius = ((weights - mean[:, None]).norm(dim=2) * real).amax(dim=1)
        bound = projected.norm(dim=1)[:, None] * radius - counts.log() + SLACK
        return bound.clamp(max=0.0)

    def head_top(self, hidden: torch.Tensor, logits: torch.Tensor | None = None,
                 head_lp: torch.Tensor | None = None) -> torch.Tensor:
        """What :meth:`top` needs of the head, per row of ``hidden`` (from the head's ``logits`` and
        their log-softmax ``head_lp`` where the caller has them), ``[rows, 3 + plain clusters]``: the best
        log-probability among the head's values, its index (a float: below 2²⁴, exact), the head's
        log-normaliser (the buckets' log-probabilities are their logits less it, computed for the rows
        that need them) and each plain cluster's log-probability — a few numbers a row, where the head's
        log-softmax is hundreds."""
        logits = self.head(hidden) if logits is None else logits
        head_lp = nn.functional.log_softmax(logits, dim=1) if head_lp is None else head_lp
        short = self.bounds[0]
        best_lp, best = head_lp[:, :short].max(dim=1)
        normaliser = logits.gather(1, best[:, None]).squeeze(1) - best_lp  # the largest logit: the least cancellation
        return torch.cat([best_lp[:, None], best[:, None].to(best_lp.dtype), normaliser[:, None],
                          head_lp[:, short:short + self.plain]], dim=1)

    def top(self, hidden: torch.Tensor, head_top: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Arg-max index and its probability per row, exact: a cluster's softmax runs only for rows
        where the cluster's own probability, times the :meth:`_ceilings` bound of its best value's,
        exceeds the best value found so far (no value inside it can beat that otherwise). ``head_top``
        (:meth:`head_top` of these rows), where the caller kept it: the head does not run again."""
        short = self.bounds[0]
        head_top = self.head_top(hidden) if head_top is None else head_top
        best_lp, best = head_top[:, 0].clone(), head_top[:, 1].long()
        for i in range(len(self.tail)):
            if i == self.plain:  # the buckets' head tokens, for these rows only
                first = short + self.plain
                bucket_lp = nn.functional.linear(hidden, self.head.weight[first:], self.head.bias[first:])
                self._top_of_buckets(hidden, bucket_lp - head_top[:, 2:3], best_lp, best)
                continue
            proj, out = self._layers(i)
            projected = proj(hidden)
            cluster_lp = head_top[:, 3 + i]
            total = out.weight.sum(dim=0)  # Σ_v u_v: the logits' sum is its product with g
            for chunk in (cluster_lp + self._ceilings(i, projected)[:, 0] > best_lp).nonzero().squeeze(1).split(self._chunk(i)):
                logits = out(projected[chunk])
                chunk, logits, top = _could_win(logits, projected[chunk] @ total, cluster_lp[chunk] - best_lp[chunk], chunk)
                value, shifted = _best(logits, top)
                value += cluster_lp[chunk]
                better = value > best_lp[chunk]
                won = chunk[better]
                best_lp[won] = value[better]
                best[won] = _arg_max(shifted[better]) + self.bounds[i]
        return best, best_lp.double().exp()

    def _top_of_buckets(self, hidden: torch.Tensor, bucket_lp: torch.Tensor, best_lp: torch.Tensor,
                        best: torch.Tensor) -> None:
        """Updates ``best_lp`` and ``best`` in place with the buckets' values: each (row, bucket) pair
        whose bucket's own probability, times its :meth:`_ceilings` bound, exceeds the row's best so far
        is opened."""
        slabs = self._slabs()
        ceilings = self._ceilings(self.plain, self._layers(self.plain)[0](hidden), slabs)
        pairs = (bucket_lp + ceilings > best_lp[:, None]).nonzero()
        pairs = pairs[_by_bucket(pairs[:, 1])]
        for chunk in pairs.split(self._chunk(self.plain)):
            rows, bucket = chunk[:, 0], chunk[:, 1]
            value, shifted = _best(self._bucket_logits(hidden[rows], bucket, slabs))
            value += bucket_lp[rows, bucket]
            # a row may have several pairs: the best of them, then only where it beats the row's best
            row_best = best_lp.scatter_reduce(0, rows, value, "amax")
            won = (value == row_best[rows]) & (value > best_lp[rows])
            best[rows[won]] = self.bounds[-2] + bucket[won] * self.bucket + _arg_max(shifted[won])
            best_lp.copy_(row_best)


def _could_win(logits: torch.Tensor, total: torch.Tensor, margin: torch.Tensor,
               rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``rows`` (their ``logits`` over a cluster of ``n`` values, and the max) whose best ``log p(v | cluster)``
    may exceed ``−margin``, from the exact max and a Jensen bound of the normaliser on the others
    (their sum ``total`` less the max): ``logsumexp ≥ log(e^max + (n − 1)·e^mean)``, so
    ``log p(v | cluster) ≤ max − that``. Two passes (the product and ``amax``) where the normaliser takes
    three more: on a trained 100,000-value column the bound rules out ~⅔ of the rows
    :meth:`AdaptiveHead._ceilings` lets through (its ``‖g‖`` is large there)."""
    n = logits.shape[1]
    top = logits.amax(dim=1)
    others = math.log(n - 1) + (total - top) / (n - 1) if n > 1 else torch.full_like(top, float("-inf"))
    keep = top - torch.logaddexp(top, others) + SLACK > -margin
    return (rows, logits, top) if bool(keep.all()) else (rows[keep], logits[keep], top[keep])


def _best(logits: torch.Tensor, top: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's best log-probability, ``−log Σ exp(logit − max)`` — one pass over the logits
    fewer than ``max`` then ``logsumexp`` (which finds the max again) — and the logits turned into
    ``exp(logit − max)`` in place (no second array), for :func:`_arg_max` of the rows that need
    their index. The max without its index (``amax``) is ~5× faster than ``max(dim=1)`` with it on
    a 3,840-value cluster, and most rows that open a cluster do not end up taking a value from it."""
    top = logits.amax(dim=1) if top is None else top  # the caller's where it has it
    shifted = logits.sub_(top[:, None]).exp_()
    return -shifted.sum(dim=1).log_(), shifted


def _log_softmax_at(logits: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """Each row's ``log softmax(logits)[at]``. Under autograd, ``cross_entropy``: its forward and backward
    took 0.5–0.7× the time of ``logit − logsumexp``'s on a 1,024- or 3,840-value cluster. Without, the
    logits turned in place, no softmax array (:func:`_best`'s one pass fewer than ``logsumexp``)."""
    if torch.is_grad_enabled():
        return -nn.functional.cross_entropy(logits, at, reduction="none")
    picked = logits.gather(1, at[:, None]).squeeze(1)
    top = logits.amax(dim=1)
    return picked - top - logits.sub_(top[:, None]).exp_().sum(dim=1).log_()


def _by_bucket(bucket: torch.Tensor) -> torch.Tensor:
    """The order that sorts rows by ``bucket`` (stable): :meth:`AdaptiveHead._bucket_logits` reads each
    bucket's slab once per run of its rows."""
    return torch.argsort(bucket, stable=True)


def _arg_max(shifted: torch.Tensor) -> torch.Tensor:
    """Each row's arg-max from :func:`_best`'s ``exp(logit − max)`` (the max is 1 exactly; a value
    within float32 rounding of it ties, and the first of a tie wins, as ``max`` does on logits)."""
    return shifted.max(dim=1).indices


def head_for(width: int, n: int, cutoffs: Sequence[int], bucket: int = 0) -> nn.Module:
    """A categorical's output layer: adaptive with ``cutoffs`` (its last cluster in buckets of ``bucket``
    values if > 0), else a full softmax's linear layer."""
    return AdaptiveHead(width, n, cutoffs, bucket) if cutoffs else nn.Linear(width, n)


def top_of(output: HeadOutput) -> tuple[torch.Tensor, torch.Tensor]:
    """The arg-max index of each row and its probability (float64)."""
    if isinstance(output, WideOutput):
        return output.top()
    top = output.max(dim=1)  # from the logits: no full softmax needed
    return top.indices, torch.exp(top.values.double() - torch.logsumexp(output.double(), dim=1))
