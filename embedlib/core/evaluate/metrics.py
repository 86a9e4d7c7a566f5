"""Detection metrics, and planting anomalies to measure them on real rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from embedlib.core.evaluate.options import EvaluateError

__all__ = ["METHODS", "MethodMetrics", "column_means", "detection_metrics", "plant_anomalies"]

#: method key → what the reports and plots call it.
METHODS = {
    "ours": "embedlib (NLL in nats)",
    "calibrated": "embedlib (calibrated)",
    "mse": "seed design: MSE on embedding output",
    "iforest": "IsolationForest (one-hot + numerics)",
}
#: the PNG files of an evaluation, without the extension.

def plant_anomalies(
    frame: pd.DataFrame, columns: Sequence[str], *, fraction: float = 0.02, fields: int = 2, seed: int = 0
) -> tuple[pd.DataFrame, np.ndarray]:
    """A copy of ``frame`` with planted anomalies, and the 0/1 label of every row."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if len(columns) < fields:
        raise ValueError(f"need at least {fields} columns to plant anomalies, got {list(columns)}")
    rng = np.random.default_rng(seed)
    out = frame.copy()
    n = len(out)
    targets = rng.choice(n, size=max(1, int(round(fraction * n))), replace=False)
    labels = np.zeros(n, dtype=np.int8)
    cols = list(columns)
    for row in targets:
        for _ in range(100):  # find a donor whose values differ in both chosen fields
            chosen = rng.choice(len(cols), size=fields, replace=False)
            donor = int(rng.integers(n))
            names = [cols[c] for c in chosen]
            mine = [frame.iloc[row][c] for c in names]
            theirs = [frame.iloc[donor][c] for c in names]
            if all(not _same(a, b) for a, b in zip(mine, theirs)):
                for c, value in zip(names, theirs):
                    out.iat[row, out.columns.get_loc(c)] = value
                labels[row] = 1
                break
    return out, labels


def _same(a: object, b: object) -> bool:
    if pd.isna(a) and pd.isna(b):  # type: ignore[arg-type]
        return True
    return bool(a == b)


@dataclass(frozen=True)
class MethodMetrics:
    """Detection quality of one method's scores against 0/1 labels."""

    method: str
    auroc: float
    auprc: float  # average precision
    threshold: float
    flagged: int  # rows with score > threshold
    precision: float  # at the threshold
    recall: float
    top_k: int
    precision_at_k: float
    recall_at_k: float


def detection_metrics(
    method: str, labels: np.ndarray, scores: np.ndarray, *, threshold: float, top_k: int
) -> MethodMetrics:
    """AUROC, AUPRC, and precision/recall at ``threshold`` and in the ``top_k`` highest scores."""
    from sklearn.metrics import average_precision_score, precision_score, recall_score, roc_auc_score

    y = np.asarray(labels).astype(np.int64)
    s = np.asarray(scores, dtype=np.float64)
    positives = int(y.sum())
    if positives == 0 or positives == len(y):
        raise EvaluateError(
            f"the labels have {positives:,} positive(s) among {len(y):,} rows; AUROC and AUPRC need both classes"
        )
    if not np.isfinite(s).all():
        raise EvaluateError(f"{METHODS.get(method, method)}: {int((~np.isfinite(s)).sum())} score(s) are not finite")
    flagged = s > threshold
    k = min(top_k, len(y))
    top = np.zeros(len(y), dtype=bool)
    top[np.argsort(-s, kind="stable")[:k]] = True
    return MethodMetrics(
        method=method,
        auroc=float(roc_auc_score(y, s)),
        auprc=float(average_precision_score(y, s)),
        threshold=float(threshold),
        flagged=int(flagged.sum()),
        precision=float(precision_score(y, flagged, zero_division=0)),
        recall=float(recall_score(y, flagged, zero_division=0)),
        top_k=k,
        precision_at_k=float(precision_score(y, top, zero_division=0)),
        recall_at_k=float(recall_score(y, top, zero_division=0)),
    )


def column_means(
    contributions: np.ndarray, flagged: np.ndarray, columns: Sequence[str]
) -> dict[str, dict[str, float | None]]:
    """Per column, the mean contribution (nats) of flagged and of unflagged rows (None: no such rows)."""
    out: dict[str, dict[str, float | None]] = {}
    for j, name in enumerate(columns):
        values = contributions[:, j]
        out[name] = {
            "flagged": float(values[flagged].mean()) if flagged.any() else None,
            "unflagged": float(values[~flagged].mean()) if (~flagged).any() else None,
        }
    return out
