"""The embedding model, its loss and per-column contributions (torch only).

The training target comes from the row itself: the model reconstructs each
categorical's *index* with a softmax over its vocabulary (cross-entropy) and each
standardized numeric with a density (``model.numeric_head``, :data:`NUMERIC_HEADS`).
The loss and the anomaly score are the same quantity, the row's negative
log-likelihood in nats::

    score(row) = Σ_categorical −log p(observed index) + Σ_numeric −log p(x)

with, per numeric cell (the Gaussian's constant ½·log 2π left out; a missing numeric
contributes 0):

* ``unit`` — a unit-variance Gaussian around the prediction: ``½ (x − μ)²`` (bundles
  before ``numeric_head``);
* ``gaussian`` — a heteroscedastic Gaussian: the cell's own spread too,
  ``½ ((x − μ)/σ)² + log σ`` (``σ ≥ SIGMA_FLOOR``): a relation that holds almost exactly
  says so, and breaking it costs many nats;
* ``mixture`` — ``MIXTURE`` Gaussians with their weights:
  ``−log Σ_k π_k exp(−½ ((x − μ_k)/σ_k)²) / σ_k`` (several modes, skew).

:func:`column_nll` returns the per-column terms; their sum is the score exactly.

Reconstructing the concatenated embedding vectors with MSE instead is the trap
this design avoids (:class:`embedlib.core.baselines.EmbeddingMSEAutoencoder`).

Two kinds (``model.kind``), one module:

* ``masked`` — pseudo-likelihood: every column has a mask input; training hides
  cells at random rates (each row its own rate, at least one hidden cell) and
  learns to predict the hidden cells from the rest; scoring
  (:meth:`EmbeddingAutoencoder.reconstruct`) hides the columns in ``K`` fixed
  groups (column ``j`` in group ``j mod K``; ``K = model.masks``, one column per
  group by default) and takes each column's prediction from the pass in which it
  is hidden — a value cannot explain itself. Cost: ``K`` forward passes per row.
* ``autoencoder`` — every cell visible, through a bottleneck; one pass. A value
  that the bottleneck can carry explains itself, which blunts detection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
from torch import nn

from embedlib.core.densities import NUMERIC_HEADS, numeric_nll
from embedlib.core.heads import (
    ADAPTIVE_CUTOFFS,
    BUCKET,
    PASS_LOGITS,
    PASS_ROWS,
    AdaptiveHead,
    HeadOutput,
    WideOutput,
    head_for,
    top_of,
)
from embedlib.core.indices import OOV_INDEX

__all__ = [
    "ADAPTIVE_CUTOFFS",
    "PASS_LOGITS",
    "PASS_ROWS",
    "AdaptiveHead",
    "EmbeddingAutoencoder",
    "HeadOutput",
    "ModelSpec",
    "column_nll",
    "corrupt",
    "masked_loss",
    "random_mask",
    "default_embedding_dim",
    "top_of",
    "WideOutput",
]

def default_embedding_dim(n_rows: int, max_dim: int) -> int:
    """``min(max_dim, round(1.6 * n ** 0.56))`` for a column with ``n`` embedding rows."""
    return max(1, min(max_dim, round(1.6 * n_rows**0.56)))


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the module: column names, sizes and widths."""

    categorical: tuple[str, ...]
    cardinalities: tuple[int, ...]
    embedding_dims: tuple[int, ...]
    numeric: tuple[str, ...]
    hidden: tuple[int, ...]
    bottleneck: int
    kind: str = "autoencoder"  # "masked" or "autoencoder"; bundles from before model.kind are autoencoders
    masks: int = 0  # masked kind: the number of mask groups at scoring (K)
    cutoffs: tuple[tuple[int, ...], ...] = ()  # per categorical: its adaptive head's cluster bounds, () full softmax
    #: per categorical: the bucket size of its adaptive head's last cluster, 0 one softmax (bundles before buckets)
    buckets: tuple[int, ...] = ()
    numeric_head: str = "unit"  # a key of NUMERIC_HEADS; bundles from before model.numeric_head are "unit"

    @classmethod
    def build(
        cls,
        categorical: Sequence[str],
        cardinalities: Sequence[int],
        numeric: Sequence[str],
        *,
        max_embedding_dim: int = 32,
        embedding_dims: Mapping[str, int] | None = None,
        hidden: Sequence[int] = (64, 32),
        bottleneck: int = 8,
        kind: str = "autoencoder",
        masks: int | None = None,
        adaptive_above: int | None = None,
        numeric_head: str = "unit",
    ) -> ModelSpec:
        overrides = dict(embedding_dims or {})
        dims = tuple(
            overrides.get(c, default_embedding_dim(n, max_embedding_dim))
            for c, n in zip(categorical, cardinalities)
        )
        width = len(categorical) + len(numeric)
        cutoffs = [tuple(c for c in ADAPTIVE_CUTOFFS if c < n - 1) if adaptive_above is not None and n > adaptive_above
                   else () for n in cardinalities]
        return cls(
            categorical=tuple(categorical),
            cardinalities=tuple(int(n) for n in cardinalities),
            embedding_dims=dims,
            numeric=tuple(numeric),
            hidden=tuple(hidden),
            bottleneck=bottleneck,
            kind=kind,
            masks=0 if kind != "masked" else max(1, min(masks or width, width)),
            cutoffs=tuple(cutoffs),
            buckets=tuple(BUCKET if len(c) == len(ADAPTIVE_CUTOFFS) else 0 for c in cutoffs),
            numeric_head=numeric_head,
        )

    @property
    def columns(self) -> tuple[str, ...]:
        """Column order of :func:`column_nll`: categoricals, then numerics."""
        return self.categorical + self.numeric

    @property
    def masked(self) -> bool:
        return self.kind == "masked"

    def cutoffs_of(self, i: int) -> tuple[int, ...]:
        """Categorical ``i``'s adaptive head cluster bounds; () for a full softmax."""
        return self.cutoffs[i] if self.cutoffs else ()

    def bucket_of(self, i: int) -> int:
        """The bucket size of categorical ``i``'s adaptive head's last cluster; 0 for one softmax."""
        return self.buckets[i] if self.buckets else 0

    @property
    def numeric_params(self) -> int:
        """The numeric head's outputs per numeric column (:data:`NUMERIC_HEADS`)."""
        return NUMERIC_HEADS[self.numeric_head]

    def mask_groups(self) -> list[list[int]]:
        """The scoring masks of the masked kind: the columns each of the ``K`` passes hides."""
        k = self.masks or 1
        return [[j for j in range(len(self.columns)) if j % k == g] for g in range(k)]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        values["cutoffs"] = tuple(tuple(c) for c in values.get("cutoffs", ()))
        head = values.get("numeric_head", "unit")
        if head not in NUMERIC_HEADS:
            raise ValueError(f"the model's numeric_head is {head!r}, not one of {', '.join(NUMERIC_HEADS)}: the bundle "
                             "was written by a newer embedlib; score it with that version or retrain")
        return cls(**values)  # keys a bundle lacks (written before them) take their defaults


def mlp(widths: Sequence[int]) -> nn.Sequential:
    """Linear layers, each followed by a ReLU that overwrites the layer's output (no second array: a
    linear layer's gradient needs its input, not its output; README, Performance)."""
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class EmbeddingAutoencoder(nn.Module):
    """concat(embeddings, numerics, missing flags[, mask flags]) → MLP → bottleneck → MLP → heads.

    One ``nn.Embedding`` per categorical, one softmax head per categorical over
    its vocabulary, one regression head for all numerics. The masked kind also
    takes one mask flag per column: a hidden column's embedding (or value and
    missing flag) is zeroed and its flag set.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.embeddings = nn.ModuleList(
            nn.Embedding(n, d) for n, d in zip(spec.cardinalities, spec.embedding_dims)
        )
        n_num = len(spec.numeric)
        width_in = sum(spec.embedding_dims) + 2 * n_num + (len(spec.columns) if spec.masked else 0)
        self.encoder = nn.Sequential(mlp((width_in, *spec.hidden)), nn.Linear(spec.hidden[-1], spec.bottleneck))
        back = tuple(reversed(spec.hidden))
        self.decoder = mlp((spec.bottleneck, *back))
        self.cat_heads = nn.ModuleList(head_for(back[-1], n, spec.cutoffs_of(i), spec.bucket_of(i)) for i, n in enumerate(spec.cardinalities))
        self.num_head = nn.Linear(back[-1], n_num * spec.numeric_params) if n_num else None
        #: per mask group, its columns' first-layer input positions and mask-flag positions (fixed by the spec)
        self.group_inputs = self._group_inputs() if spec.masked else []

    @property
    def pass_rows(self) -> int:
        """The most rows one pass outside training takes: ``PASS_ROWS``, fewer where a full-softmax
        head's logits would pass ``PASS_LOGITS`` (adaptive heads bound their clusters themselves)."""
        widest = max([head.head.out_features if isinstance(head, AdaptiveHead) else cast(nn.Linear, head).out_features
                      for head in self.cat_heads], default=1)
        return max(1, min(PASS_ROWS, PASS_LOGITS // widest))

    def embed(self, cat: torch.Tensor) -> list[torch.Tensor]:
        return [emb(cat[:, i]) for i, emb in enumerate(self.embeddings)]

    def encode(self, cat: torch.Tensor, num: torch.Tensor, missing: torch.Tensor,
               mask: torch.Tensor | None = None) -> torch.Tensor:
        """The bottleneck code of each row (``mask``: 1 where a cell is hidden; masked kind only)."""
        parts = self.embed(cat)
        if self.spec.masked:
            if mask is None:
                mask = num.new_zeros((cat.shape[0], len(self.spec.columns)))
            n_cat = len(self.spec.categorical)
            parts = [e * (1.0 - mask[:, i : i + 1]) for i, e in enumerate(parts)]
            shown = 1.0 - mask[:, n_cat:]
            return self.encoder(torch.cat([*parts, num * shown, missing * shown, mask], dim=1))
        return self.encoder(torch.cat([*parts, num, missing], dim=1))

    def forward(
        self, cat: torch.Tensor, num: torch.Tensor, missing: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[list[HeadOutput], torch.Tensor, torch.Tensor]:
        """Returns (each categorical's head output, the numeric head's output, bottleneck code).
        The numeric head's output is ``[rows, numerics × parameters]`` (:data:`NUMERIC_HEADS`);
        :func:`embedlib.core.densities.numeric_mean` reads the predictions from it."""
        code = self.encode(cat, num, missing, mask)
        hidden = self.decoder(code)
        logits = [head(hidden) for head in self.cat_heads]
        pred = self.num_head(hidden) if self.num_head is not None else num[:, :0]
        return logits, pred, code

    def _group_inputs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per mask group: the first layer's input positions of its columns (embedding slice,
        value and missing flag) and of its mask flags."""
        spec = self.spec
        n_cat, n_num = len(spec.categorical), len(spec.numeric)
        starts = [sum(spec.embedding_dims[:i]) for i in range(n_cat)]
        emb = sum(spec.embedding_dims)
        out = []
        for group in spec.mask_groups():
            inputs: list[int] = []
            for j in group:
                if j < n_cat:
                    inputs += range(starts[j], starts[j] + spec.embedding_dims[j])
                else:
                    inputs += [emb + j - n_cat, emb + n_num + j - n_cat]
            flags = [emb + 2 * n_num + j for j in group]
            out.append((torch.tensor(inputs, dtype=torch.long), torch.tensor(flags, dtype=torch.long)))
        return out

    def reconstruct(
        self, cat: torch.Tensor, num: torch.Tensor, missing: torch.Tensor
    ) -> tuple[list[HeadOutput], torch.Tensor]:
        """What scoring compares each cell with: (each categorical's head output, the numeric head's output).

        The autoencoder: one pass, every cell visible. The masked kind: one pass per
        mask group, each column's output taken from the pass that hides it.
        """
        if not self.spec.masked:
            logits, pred, _ = self(cat, num, missing)
            return logits, pred
        n_cat = len(self.spec.categorical)
        out_logits: list[HeadOutput | None] = [None] * n_cat
        n_num = num.shape[1]
        out_pred = num.new_zeros((num.shape[0], n_num * self.spec.numeric_params))
        # The first layer is linear: with every cell shown once (``base``), hiding a group is
        # subtracting what its inputs added and adding its mask flags' weights. The rest of the
        # network runs per group; each head runs only in the pass that hides its column.
        trunk = cast(nn.Sequential, self.encoder[0])
        first, rest = cast(nn.Linear, trunk[0]), nn.Sequential(*list(trunk)[1:], self.encoder[1])
        shown = torch.cat([*self.embed(cat), num, missing, num.new_zeros((cat.shape[0], len(self.spec.columns)))], 1)
        base = first(shown)
        for group, (inputs, flags) in zip(self.spec.mask_groups(), self.group_inputs):
            # one fused product-and-subtract (addmm), then the flags' weights in place: no temporaries
            pre = torch.addmm(base, shown[:, inputs], first.weight[:, inputs].T, alpha=-1).add_(first.weight[:, flags].sum(1))
            hidden = self.decoder(rest(pre))
            for j in group:
                if j < n_cat:
                    out_logits[j] = self.cat_heads[j](hidden)
            numeric = [p * n_num + j - n_cat for p in range(self.spec.numeric_params) for j in group if j >= n_cat]
            if numeric and self.num_head is not None:
                out_pred[:, numeric] = self.num_head(hidden)[:, numeric]
        assert all(lg is not None for lg in out_logits)
        return [lg for lg in out_logits if lg is not None], out_pred


def column_nll(
    logits: Sequence[HeadOutput],
    pred: torch.Tensor,
    cat: torch.Tensor,
    num: torch.Tensor,
    missing: torch.Tensor,
    hidden_cells: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-row, per-column negative log-likelihood in nats, shape ``[rows, columns]``.

    Categoricals: ``−log softmax(logits)[observed index]`` (an adaptive head: its exact
    ``−log p(observed)``); numerics: :func:`numeric_nll` of the numeric head's output ``pred``
    (its density, 0 where missing). ``.sum(1)`` is the row score.
    ``hidden_cells`` (the masked kind's training mask, 1 = hidden): a wide column's NLL is computed on
    its hidden cells only and is 0 on the others, which :func:`masked_loss` multiplies by 0 — the same
    loss and gradients without its head's cost on the rows that do not count.
    """
    parts = [
        (lg.nll(cat[:, i], None if hidden_cells is None else hidden_cells[:, i] > 0) if isinstance(lg, WideOutput)
         else nn.functional.cross_entropy(lg, cat[:, i].long(), reduction="none"))
        for i, lg in enumerate(logits)
    ]
    cols = torch.stack(parts, dim=1) if parts else num.new_zeros((num.shape[0], 0))
    if num.shape[1]:
        cols = torch.cat([cols, numeric_nll(pred, num, missing)], dim=1)
    return cols


def random_mask(rows: int, columns: int, max_rate: float, generator: torch.Generator | None = None,
                device: torch.device | None = None) -> torch.Tensor:
    """Training masks of the masked kind: each row hides each cell with its own rate
    ``~ U(0, max_rate)``, and always at least one cell. 1.0 = hidden."""
    rate = torch.rand((rows, 1), generator=generator, device=device) * max_rate
    mask = (torch.rand((rows, columns), generator=generator, device=device) < rate).float()
    forced = torch.randint(0, columns, (rows,), generator=generator, device=device)
    mask[torch.arange(rows, device=device), forced] = 1.0
    return mask


def masked_loss(nll: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the hidden cells' NLL, scaled to a whole row (``[rows, columns]`` inputs)."""
    per_row = (nll * mask).sum(1) / mask.sum(1).clamp(min=1.0) * nll.shape[1]
    return per_row.mean()


def corrupt(
    cat: torch.Tensor,
    num: torch.Tensor,
    missing: torch.Tensor,
    cardinalities: Sequence[int],
    rate: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Denoising input corruption (training only): returns corrupted (cat, num).

    A ``rate`` fraction of categorical inputs is replaced, half by the OOV index
    and half by a random index; the same fraction of observed numerics is replaced
    by standard normal noise. The targets stay the clean row.
    """
    if rate <= 0:
        return cat, num
    device = cat.device
    shape = cat.shape
    hit = torch.rand(shape, generator=generator, device=device) < rate
    to_oov = torch.rand(shape, generator=generator, device=device) < 0.5
    card = torch.tensor(cardinalities, device=device).expand(shape)
    random_idx = (torch.rand(shape, generator=generator, device=device) * card).long()
    replaced = torch.where(to_oov, torch.full_like(cat, OOV_INDEX), random_idx.to(cat.dtype))
    cat = torch.where(hit, replaced, cat)
    if num.shape[1]:
        nhit = (torch.rand(num.shape, generator=generator, device=device) < rate) & (missing == 0)
        noise = torch.randn(num.shape, generator=generator, device=device)
        num = torch.where(nhit, noise, num)
    return cat, num
