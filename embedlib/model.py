"""The embedding autoencoder, its loss and per-column contributions (torch only).

The training target comes from the row itself: the model reconstructs each
categorical's *index* with a softmax over its vocabulary (cross-entropy) and each
standardized numeric with a unit-variance Gaussian. The loss and the anomaly
score are the same quantity, the row's negative log-likelihood in nats::

    score(row) = Σ_categorical −log p(observed index) + Σ_numeric ½ (x − x̂)²

(the Gaussian's constant ½·log 2π is left out; a missing numeric contributes 0).
:func:`column_nll` returns the per-column terms; their sum is the score exactly.

Reconstructing the concatenated embedding vectors with MSE instead is the trap
this design avoids (:class:`embedlib.baselines.EmbeddingMSEAutoencoder`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from embedlib.indices import OOV_INDEX

__all__ = [
    "EmbeddingAutoencoder",
    "ModelSpec",
    "column_nll",
    "corrupt",
    "default_embedding_dim",
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
    ) -> ModelSpec:
        overrides = dict(embedding_dims or {})
        dims = tuple(
            overrides.get(c, default_embedding_dim(n, max_embedding_dim))
            for c, n in zip(categorical, cardinalities)
        )
        return cls(
            categorical=tuple(categorical),
            cardinalities=tuple(int(n) for n in cardinalities),
            embedding_dims=dims,
            numeric=tuple(numeric),
            hidden=tuple(hidden),
            bottleneck=bottleneck,
        )

    @property
    def columns(self) -> tuple[str, ...]:
        """Column order of :func:`column_nll`: categoricals, then numerics."""
        return self.categorical + self.numeric

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)


def mlp(widths: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers)


class EmbeddingAutoencoder(nn.Module):
    """concat(embeddings, numerics, missing flags) → MLP → bottleneck → MLP → heads.

    One ``nn.Embedding`` per categorical, one softmax head per categorical over
    its vocabulary, one regression head for all numerics.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.embeddings = nn.ModuleList(
            nn.Embedding(n, d) for n, d in zip(spec.cardinalities, spec.embedding_dims)
        )
        n_num = len(spec.numeric)
        width_in = sum(spec.embedding_dims) + 2 * n_num
        self.encoder = nn.Sequential(mlp((width_in, *spec.hidden)), nn.Linear(spec.hidden[-1], spec.bottleneck))
        back = tuple(reversed(spec.hidden))
        self.decoder = mlp((spec.bottleneck, *back))
        self.cat_heads = nn.ModuleList(nn.Linear(back[-1], n) for n in spec.cardinalities)
        self.num_head = nn.Linear(back[-1], n_num) if n_num else None

    def embed(self, cat: torch.Tensor) -> list[torch.Tensor]:
        return [emb(cat[:, i]) for i, emb in enumerate(self.embeddings)]

    def encode(self, cat: torch.Tensor, num: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
        """The bottleneck code of each row."""
        return self.encoder(torch.cat([*self.embed(cat), num, missing], dim=1))

    def forward(
        self, cat: torch.Tensor, num: torch.Tensor, missing: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Returns (logits per categorical, numeric predictions, bottleneck code)."""
        code = self.encode(cat, num, missing)
        hidden = self.decoder(code)
        logits = [head(hidden) for head in self.cat_heads]
        pred = self.num_head(hidden) if self.num_head is not None else num[:, :0]
        return logits, pred, code


def column_nll(
    logits: Sequence[torch.Tensor],
    pred: torch.Tensor,
    cat: torch.Tensor,
    num: torch.Tensor,
    missing: torch.Tensor,
) -> torch.Tensor:
    """Per-row, per-column negative log-likelihood in nats, shape ``[rows, columns]``.

    Categoricals: ``−log softmax(logits)[observed index]``; numerics:
    ``½ (x − x̂)²`` where observed, 0 where missing. ``.sum(1)`` is the row score.
    """
    parts = [
        nn.functional.cross_entropy(lg, cat[:, i].long(), reduction="none") for i, lg in enumerate(logits)
    ]
    cols = torch.stack(parts, dim=1) if parts else num.new_zeros((num.shape[0], 0))
    if num.shape[1]:
        sq = 0.5 * (num - pred) ** 2 * (1.0 - missing)
        cols = torch.cat([cols, sq], dim=1)
    return cols


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


def __getattr__(name: str) -> Any:
    # The seed design moved to embedlib.baselines; the old import path keeps working.
    if name == "EmbeddingMSEAutoencoder":
        from embedlib.baselines import EmbeddingMSEAutoencoder

        return EmbeddingMSEAutoencoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
