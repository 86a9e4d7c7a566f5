"""Baselines to compare the embedding autoencoder with, on exactly the same rows.

* the seed design — :class:`EmbeddingMSEAutoencoder`, trained on MSE against its
  own embedding output (the trap: the target moves with the weights and the
  cheapest way to lower the loss is to shrink every embedding toward the same
  point — the embeddings collapse),
* IsolationForest on one-hot categoricals + standardized numerics (scikit-learn).

Also :func:`embedding_spread`, the measure the tests and notebooks use to show
the collapse. Torch and numpy only at import time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from embedlib.core.encode import Encoded
from embedlib.core.indices import FIRST_INDEX
from embedlib.core.model import ModelSpec, mlp

__all__ = [
    "EmbeddingMSEAutoencoder",
    "IsolationForestBaseline",
    "embedding_spread",
    "fit_mse_autoencoder",
    "isolation_forest_scores",
    "mse_scores",
]


class EmbeddingMSEAutoencoder(nn.Module):
    """The trap: reconstruct concat(embeddings, numerics) with MSE against itself.

    Same encoder as :class:`EmbeddingAutoencoder`; the decoder outputs a vector
    as wide as the input and the loss is the mean squared error between the two.
    The embeddings are both input and target, so training can lower the loss by
    shrinking them together — they collapse. Its row score is that squared error.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.embeddings = nn.ModuleList(
            nn.Embedding(n, d) for n, d in zip(spec.cardinalities, spec.embedding_dims)
        )
        width = sum(spec.embedding_dims) + len(spec.numeric)
        self.encoder = nn.Sequential(mlp((width, *spec.hidden)), nn.Linear(spec.hidden[-1], spec.bottleneck))
        back = tuple(reversed(spec.hidden))
        self.decoder = nn.Sequential(mlp((spec.bottleneck, *back)), nn.Linear(back[-1], width))

    def row_error(self, cat: torch.Tensor, num: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
        """Per-row squared reconstruction error (the loss before averaging)."""
        target = torch.cat([*(emb(cat[:, i]) for i, emb in enumerate(self.embeddings)), num], dim=1)
        recon = self.decoder(self.encoder(target))
        return ((recon - target) ** 2).mean(dim=1)


def fit_mse_autoencoder(
    enc: Encoded,
    spec: ModelSpec,
    *,
    epochs: int = 10,
    batch_size: int = 512,
    learning_rate: float = 1e-3,
    seed: int = 0,
    on_epoch: Callable[[int, EmbeddingMSEAutoencoder, float], None] | None = None,
) -> EmbeddingMSEAutoencoder:
    """Train the seed design: minimize MSE(decoder(encoder(e)), e), e = concat(embeddings, x).

    ``on_epoch(epoch, model, mean_loss)`` is called after every epoch (epochs count from 1),
    e.g. to follow the embeddings' spread as they collapse.
    """
    torch.manual_seed(seed)
    model = EmbeddingMSEAutoencoder(spec)
    opt = torch.optim.Adam(model.parameters(), lr=learning_rate)
    cat, num, miss = (torch.from_numpy(a) for a in (enc.cat, enc.num, enc.missing))
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(cat.shape[0], generator=gen)
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            loss = model.row_error(cat[idx], num[idx], miss[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        if on_epoch is not None:
            on_epoch(epoch + 1, model, total / max(len(order), 1))
    model.eval()
    return model


def mse_scores(model: EmbeddingMSEAutoencoder, enc: Encoded) -> np.ndarray:
    """The seed design's anomaly score: per-row reconstruction error."""
    with torch.inference_mode():
        err = model.row_error(*(torch.from_numpy(a) for a in (enc.cat, enc.num, enc.missing)))
    return err.double().numpy()


def embedding_spread(embeddings: Iterable[nn.Module]) -> np.ndarray:
    """Per column: mean distance of the category vectors (index ≥ 2) to their centroid.

    Collapse shows as this shrinking toward 0 relative to its value at
    initialisation: the vectors no longer tell the categories apart.
    """
    out = []
    for emb in embeddings:
        assert isinstance(emb, nn.Embedding)
        w = emb.weight.detach().double()[FIRST_INDEX:]
        if w.shape[0] < 2:
            out.append(float("nan"))
            continue
        out.append(float((w - w.mean(0)).norm(dim=1).mean()))
    return np.asarray(out)


class IsolationForestBaseline:
    """IsolationForest on one-hot categoricals + standardized numerics and missing flags."""

    def __init__(self, train: Encoded, cardinalities: Sequence[int], *, seed: int = 0) -> None:
        from sklearn.ensemble import IsolationForest

        self.cardinalities = tuple(cardinalities)
        self.forest = IsolationForest(n_estimators=200, random_state=seed, n_jobs=1)
        self.forest.fit(self.design(train))

    def design(self, enc: Encoded) -> Any:
        from scipy import sparse

        rows = np.arange(enc.cat.shape[0])
        blocks = [
            sparse.csr_matrix((np.ones(len(rows)), (rows, enc.cat[:, i])), shape=(len(rows), card))
            for i, card in enumerate(self.cardinalities)
        ]
        blocks.append(sparse.csr_matrix(np.hstack([enc.num, enc.missing])))
        return sparse.hstack(blocks).tocsr()

    def scores(self, enc: Encoded) -> np.ndarray:
        """Higher = odder (the negated ``score_samples``)."""
        return np.asarray(-self.forest.score_samples(self.design(enc)), dtype=np.float64)


def isolation_forest_scores(
    train: Encoded, test: Encoded, cardinalities: Sequence[int], *, seed: int = 0
) -> np.ndarray:
    """Fit :class:`IsolationForestBaseline` on ``train`` and score ``test``; higher = odder."""
    return IsolationForestBaseline(train, cardinalities, seed=seed).scores(test)
