"""Scoring rows with a loaded bundle: the model's outputs turned into nats. No Spark.

:func:`score_rows` encodes raw Arrow rows with the bundle's vocabulary and
scores them; :func:`score_encoded` scores rows already encoded. The result
holds, per row, the anomaly score (negative log-likelihood in nats), each
column's contribution (adding up to the score exactly), the calibrated terms
(:mod:`embedlib.core.calibration`; adding up to the calibrated score exactly), and
what the reasons need: the observed and the most likely index of each
categorical with its probability, and each numeric's prediction in the
column's own units. For the masked kind every column's outputs come from the
pass that hides it (:meth:`~embedlib.core.model.EmbeddingAutoencoder.reconstruct`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, cast

import numpy as np
import pyarrow as pa
import torch

from embedlib.core.densities import numeric_mean
from embedlib.core.devices import model_device, to_device
from embedlib.core.model import AdaptiveHead, WideOutput, column_nll, top_of

if TYPE_CHECKING:
    from embedlib.core.calibration import Calibration
    from embedlib.core.encode import Encoded, Encoder
    from embedlib.core.model import EmbeddingAutoencoder, ModelSpec
    from embedlib.core.vocab.model import Vocabulary

__all__ = ["ScoreResult", "ScoringBundle", "score_encoded", "score_rows"]


class ScoringBundle(Protocol):
    """What scoring reads of a bundle (:class:`embedlib.core.bundle.Bundle` is one): scoring sits below the
    bundle's module, so that ``Bundle.score_frame`` can call it without an import cycle."""

    @property
    def bundle_id(self) -> str: ...
    @property
    def spec(self) -> ModelSpec: ...
    @property
    def model(self) -> EmbeddingAutoencoder: ...
    @property
    def vocab(self) -> Vocabulary: ...
    @property
    def encoder(self) -> Encoder: ...
    @property
    def calibration(self) -> Calibration | None: ...
    @property
    def rank_by(self) -> str: ...
    @property
    def source_types(self) -> dict[str, str]: ...
    def threshold_for(self, rank_by: str) -> float: ...


@dataclass(frozen=True)
class ScoreResult:
    """Scores of a batch. ``contributions[:, k]`` is column ``k``'s nats; rows sum to ``score``."""

    score: np.ndarray  # float64 [rows]
    contributions: np.ndarray  # float64 [rows, columns]
    calibrated_score: np.ndarray | None  # float64 [rows]; None for a bundle without calibration
    calibrated: np.ndarray | None  # float64 [rows, columns]: −log tail probability of each contribution
    observed: np.ndarray  # int64 [rows, categoricals]: observed index
    expected: np.ndarray  # int64 [rows, categoricals]: arg-max index (−1 for a wide column: expected_of)
    expected_prob: np.ndarray  # float64 [rows, categoricals] (NaN for a wide column)
    expected_num: np.ndarray  # float64 [rows, numerics], in the column's own units
    code: np.ndarray  # float32 [rows, bottleneck] (with_code), else [rows, 0]
    missing: np.ndarray  # float32 [rows, numerics]: 1 where the numeric was missing
    standardized: np.ndarray  # float32 [rows, numerics]: the numerics as the model sees them (0 where missing)
    rank_by: str = "nats"  # what ranking / ranking_contributions are
    wide: Mapping[int, WideOutput] = field(default_factory=dict)  # wide categoricals' outputs, every row

    def expected_of(self, column: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Categorical ``column``'s arg-max index for ``rows`` and its probability. A wide column's
        is computed here, for the rows asked only (the reasons'): its exact arg-max may have to open
        its clusters, the one cost of an adaptive head that grows with the vocabulary."""
        out = self.wide.get(column)
        if out is None:
            return self.expected[rows, column], self.expected_prob[rows, column]
        with torch.inference_mode():
            index, prob = top_of(out.rows(torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(out.hidden.device)))
        return index.cpu().numpy().astype(np.int64), prob.cpu().numpy().astype(np.float64)

    @property
    def ranking(self) -> np.ndarray:
        """The score rows are ranked and flagged by (``score.rank_by``)."""
        return self.calibrated_score if self.rank_by == "calibrated" and self.calibrated_score is not None \
            else self.score

    @property
    def ranking_contributions(self) -> np.ndarray:
        """Per-column terms of :attr:`ranking` (they add up to it)."""
        return self.calibrated if self.rank_by == "calibrated" and self.calibrated is not None \
            else self.contributions


def score_rows(bundle: ScoringBundle, data: pa.Table | pa.RecordBatch, *, rank_by: str | None = None,
               with_code: bool = False) -> ScoreResult:
    """Encode raw rows (columns named as in the bundle) with its vocabulary and score them."""
    return score_encoded(bundle, bundle.encoder.arrays(data), rank_by=rank_by, with_code=with_code)


def score_encoded(bundle: ScoringBundle, enc: Encoded, *, rank_by: str | None = None,
                  with_code: bool = False) -> ScoreResult:
    """Score already-encoded rows: one forward pass (the masked kind: one per mask group), on at
    most the model's ``pass_rows`` rows at a time (bounded memory whatever the cardinality).
    ``rank_by`` defaults to the bundle's; ``with_code`` adds the bottleneck code (one more pass)."""
    rows = len(enc)
    step = bundle.model.pass_rows
    parts = [_pass(bundle, enc, slice(start, start + step), with_code) for start in range(0, max(rows, 1), step)]
    contrib, pred, expected, expected_prob, code, *kept = (torch.cat(tensors) for tensors in zip(*parts))
    contrib, pred, expected, expected_prob, code = (t.cpu() for t in (contrib, pred, expected, expected_prob, code))
    wide_columns = [i for i, head in enumerate(bundle.model.cat_heads) if isinstance(head, AdaptiveHead)]
    wide = {i: WideOutput(cast(AdaptiveHead, bundle.model.cat_heads[i]), kept[k], kept[len(wide_columns) + k])
            for k, i in enumerate(wide_columns)}
    stats = [bundle.vocab.numeric[c] for c in bundle.spec.numeric]
    pred_np = pred.double().numpy()
    expected_num = np.stack(
        [_unstandardize(pred_np[:, j], s.mean, s.scale, s.log1p) for j, s in enumerate(stats)], axis=1
    ) if stats else np.zeros((rows, 0))
    contributions = contrib.numpy()
    calibrated = bundle.calibration.terms(contributions) if bundle.calibration is not None else None
    return ScoreResult(
        score=contrib.sum(dim=1).numpy(),
        contributions=contributions,
        calibrated_score=calibrated.sum(axis=1) if calibrated is not None else None,
        calibrated=calibrated,
        observed=enc.cat,
        expected=expected.numpy().astype(np.int64),
        expected_prob=expected_prob.numpy().astype(np.float64),
        expected_num=expected_num,
        code=code.float().numpy(),
        missing=enc.missing,
        standardized=enc.num,
        rank_by=rank_by or bundle.rank_by,
        wide=wide,
    )


def _pass(bundle: ScoringBundle, enc: Encoded, rows: slice, with_code: bool) -> tuple[torch.Tensor, ...]:
    """One pass over ``rows`` of ``enc``: contributions, numeric predictions, each categorical's
    arg-max and its probability (−1, NaN for a wide column), the code, then each wide column's hidden
    state and then each one's :attr:`~embedlib.core.heads.WideOutput.head_top` (its arg-max, for the rows
    that need it, later), on the model's device (:func:`~embedlib.core.devices.model_device`; the
    wide columns' outputs stay there)."""
    model = bundle.model
    device = model_device(model)
    with torch.inference_mode():
        cat = to_device(torch.from_numpy(enc.cat[rows]), device)
        num = to_device(torch.from_numpy(enc.num[rows]), device)
        missing = to_device(torch.from_numpy(enc.missing[rows]), device)
        outputs, pred = model.reconstruct(cat, num, missing)
        code = model.encode(cat, num, missing) if with_code else num.new_zeros((cat.shape[0], 0))
        contrib = column_nll(outputs, pred, cat, num, missing).double()
        n = cat.shape[0]
        unknown = (torch.full((n,), -1, dtype=torch.long, device=device),
                   torch.full((n,), float("nan"), dtype=torch.float64, device=device))
        tops = [unknown if isinstance(out, WideOutput) else top_of(out) for out in outputs]
        expected = torch.stack([t[0] for t in tops], dim=1) if tops else torch.zeros((n, 0), dtype=torch.long, device=device)
        prob = torch.stack([t[1] for t in tops], dim=1) if tops else torch.zeros((n, 0), dtype=torch.float64, device=device)
        wide = [out for out in outputs if isinstance(out, WideOutput)]
    return contrib, numeric_mean(pred, num.shape[1]), expected, prob, code, *(out.hidden for out in wide), *(out.kept_top() for out in wide)


def _unstandardize(z: np.ndarray, mean: float, scale: float, log1p: bool) -> np.ndarray:
    x = z * scale + mean
    if log1p:
        x = np.sign(x) * np.expm1(np.abs(x))
    return x
