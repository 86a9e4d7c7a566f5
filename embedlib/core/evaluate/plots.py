"""The evaluation's figures, on matplotlib's Agg canvas (no display, no pyplot state)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from embedlib.core.evaluate.metrics import METHODS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "FIGURES",
    "contributions_figure",
    "png_bytes",
    "precision_recall_figure",
    "roc_figure",
    "score_histogram",
]

#: the PNG files of an evaluation, without the extension.
FIGURES = ("score_histogram", "roc", "precision_recall", "contributions")


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def score_histogram(scores: np.ndarray, labels: np.ndarray, threshold: float, *, unit: str = "nats") -> Figure:
    """Score distribution of label-0 and label-1 rows (each normalised), with the threshold drawn."""
    fig = _figure(7, 4)
    ax = fig.add_subplot()
    y = np.asarray(labels).astype(bool)
    top = max(float(np.quantile(scores, 0.999)), float(threshold)) * 1.05
    bins = np.linspace(float(np.min(scores)), top, 60).tolist()
    for mask, name, color in ((~y, "normal (label 0)", "tab:blue"), (y, "anomalous (label 1)", "tab:red")):
        ax.hist(np.minimum(scores[mask], top), bins=bins, density=True, alpha=0.55, color=color,
                label=f"{name}: {int(mask.sum()):,} rows")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3g} {unit}")
    ax.set_xlabel(f"anomaly score ({unit}; the last bin holds everything above)")
    ax.set_ylabel("density")
    ax.set_title("Score by label")
    ax.legend()
    return fig


def _curves(ax: Any, labels: np.ndarray, scores: Mapping[str, np.ndarray], kind: str) -> None:
    """One line per method: ROC (``kind="roc"``) or precision-recall (``"pr"``), its area in the legend."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    for method, s in scores.items():
        if kind == "roc":
            x, y, _ = roc_curve(labels, s)
            area = f"AUROC {roc_auc_score(labels, s):.3f}"
        else:
            y, x, _ = precision_recall_curve(labels, s)
            area = f"AUPRC {average_precision_score(labels, s):.3f}"
        ax.plot(x, y, label=f"{METHODS.get(method, method)}  {area}")


def roc_figure(labels: np.ndarray, scores: Mapping[str, np.ndarray]) -> Figure:
    """ROC curves of every method, AUROC in the legend."""
    fig = _figure(5.5, 5)
    ax = fig.add_subplot()
    _curves(ax, labels, scores, "roc")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate (recall)", title="ROC")
    ax.legend(loc="lower right", fontsize="small")
    return fig


def precision_recall_figure(labels: np.ndarray, scores: Mapping[str, np.ndarray]) -> Figure:
    """Precision-recall curves of every method, AUPRC in the legend, the base rate drawn."""
    fig = _figure(5.5, 5)
    ax = fig.add_subplot()
    _curves(ax, labels, scores, "pr")
    rate = float(np.mean(labels))
    ax.axhline(rate, color="grey", linestyle=":", label=f"base rate {rate:.3f}")
    ax.set(xlabel="recall", ylabel="precision", ylim=(0, 1.02), title="Precision-recall")
    ax.legend(loc="upper right", fontsize="small")
    return fig


def contributions_figure(means: Mapping[str, Mapping[str, float | None]], flagged: int, unflagged: int) -> Figure:
    """Per-column mean contribution of flagged vs unflagged rows, largest difference on top."""
    def gap(name: str) -> float:
        m = means[name]
        return (m["flagged"] or 0.0) - (m["unflagged"] or 0.0)

    names = sorted(means, key=gap)
    fig = _figure(7, 0.35 * len(names) + 1.5)
    ax = fig.add_subplot()
    pos = np.arange(len(names))
    height = 0.4
    ax.barh(pos + height / 2, [means[n]["flagged"] or 0.0 for n in names], height, color="tab:red",
            label=f"flagged ({flagged:,} rows)")
    ax.barh(pos - height / 2, [means[n]["unflagged"] or 0.0 for n in names], height, color="tab:blue",
            label=f"unflagged ({unflagged:,} rows)")
    ax.set_yticks(pos, names)
    ax.set_xlabel("mean contribution (nats)")
    ax.set_title("Where the score comes from")
    ax.legend(loc="lower right")
    return fig
