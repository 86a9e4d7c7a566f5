"""Baselines to compare the embedding autoencoder with, on exactly the same rows.

* the seed design — :class:`~embedlib.model.EmbeddingMSEAutoencoder`, trained on
  MSE against its own embedding output (the trap; its embeddings collapse),
* IsolationForest on one-hot categoricals + standardized numerics (scikit-learn).

Also :func:`embedding_spread`, the measure the tests and notebooks use to show
the collapse. Torch and numpy only at import time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from embedlib.encode import Encoded
from embedlib.model import EmbeddingMSEAutoencoder, ModelSpec
from embedlib.vocab import FIRST_INDEX

__all__ = [
    "IsolationForestBaseline",
    "embedding_spread",
    "fit_mse_autoencoder",
    "isolation_forest_scores",
    "mse_scores",
]


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


def embedding_spread(embeddings: Sequence[nn.Embedding]) -> np.ndarray:
    """Per column: mean distance of the category vectors (index ≥ 2) to their centroid.

    Collapse shows as this shrinking toward 0 relative to its value at
    initialisation: the vectors no longer tell the categories apart.
    """
    out = []
    for emb in embeddings:
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
