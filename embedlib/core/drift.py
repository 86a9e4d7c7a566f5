"""Drift across scoring runs: ``embedlib drift``.

Every column is cut into a few **bins**, the same at training and at scoring:

* a categorical: its null row, its OOV row, each of its ``TOP_VALUES`` most frequent values at the
  vocabulary's build (indices 2 … 11), and the rest of the vocabulary — 13 bins;
* a numeric: missing, then its standardized value (as the model sees it: ``log1p`` where set,
  minus the training mean, over the training standard deviation) cut at −2, −1, −0.5, 0, 0.5, 1, 2
  — 9 bins.

Training stores the share of each bin over its training rows in the bundle (``profile``); the
score job counts each run's rows per bin into ``score_runs.bin_counts`` (batch runs and every
stream micro-batch). ``embedlib drift`` reads the two and reports, per run and column, the
**population stability index** ``PSI = Σ (a − e) · ln(a / e)`` over the bins (shares floored at
1e-4), the OOV and null rates beside training's, as a table, ``drift.json`` and a PNG over time.
A column whose PSI in the newest run exceeds ``drift.psi_alert`` (0.25, the usual "significant
shift") makes the command exit with code 3, so a scheduled job fails loudly.

Core (no pyspark): the job that reads ``score_runs`` is :func:`embedlib.spark.runs.run_drift_job`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedlib.core.errors import CommandAlert
from embedlib.core.indices import FIRST_INDEX

__all__ = ["ALERT_EXIT", "DriftAlert", "DriftReport", "bin_counts", "column_bins", "drift_lines", "drift_report",
           "n_bins", "psi", "psi_plot", "training_profile"]

log = logging.getLogger(__name__)

#: A categorical's most frequent values that get a bin of their own.
TOP_VALUES = 10
#: Cuts of a numeric's standardized value.
Z_EDGES = np.array([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0])
#: Shares are floored at this before the PSI's logarithm (a bin empty on one side).
FLOOR = 1e-4
#: The exit code of ``embedlib drift`` when a column crosses ``drift.psi_alert``.
ALERT_EXIT = 3


def n_bins(categorical: bool) -> int:
    return FIRST_INDEX + TOP_VALUES + 1 if categorical else 1 + len(Z_EDGES) + 1


def column_bins(observed: np.ndarray, standardized: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """Each row's bin in each column, ``[rows, categoricals + numerics]`` (int8): ``observed`` are
    the categoricals' indices, ``standardized``/``missing`` the numerics as the model sees them."""
    cat = np.minimum(observed, FIRST_INDEX + TOP_VALUES).astype(np.int8)
    num = np.where(missing > 0, 0, 1 + np.searchsorted(Z_EDGES, standardized, side="right")).astype(np.int8)
    return np.concatenate([cat, num], axis=1)


def bin_counts(bins: np.ndarray, n_cat: int) -> list[list[int]]:
    """Rows per bin of every column of ``column_bins``' output."""
    return [np.bincount(bins[:, k].astype(np.int64), minlength=n_bins(k < n_cat)).tolist()
            for k in range(bins.shape[1])]


def training_profile(columns: Sequence[str], n_cat: int, batches: Any) -> dict[str, list[float]]:
    """Share of each bin over the encoded training rows (``batches`` of ``Encoded``)."""
    totals: list[np.ndarray] | None = None
    for enc in batches:
        counts = [np.asarray(c, dtype=np.int64) for c in bin_counts(column_bins(enc.cat, enc.num, enc.missing), n_cat)]
        totals = counts if totals is None else [t + c for t, c in zip(totals, counts)]
    if totals is None:
        return {}
    return {c: (t / max(1, int(t.sum()))).tolist() for c, t in zip(columns, totals)}


def psi(expected: Sequence[float], counts: Sequence[int]) -> float:
    """The population stability index of ``counts`` against the shares ``expected``."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), FLOOR)
    a = np.maximum(np.asarray(counts, dtype=np.float64) / max(1, int(np.sum(counts))), FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class DriftReport:
    """PSI and rates per run and column, the newest run last."""

    runs: list[dict[str, Any]]  # run_id, started_at, rows, psi {col}, oov_rate {col}, null_rate {col}
    training: dict[str, dict[str, float]]  # col -> {oov_rate, null_rate} at training
    alert: float
    alerts: list[str]  # the newest run's columns above the alert


class DriftAlert(CommandAlert):
    """The newest scoring run drifted past ``drift.psi_alert``; carries the report's lines."""

    def __init__(self, message: str, lines: list[str]) -> None:
        super().__init__(message, lines, ALERT_EXIT)


def drift_report(bundle: Any, runs: Sequence[Mapping[str, Any]], alert: float) -> DriftReport:
    """``runs`` (rows of ``score_runs`` scored by ``bundle``) against the bundle's training profile."""
    profile = bundle.manifest.get("profile") or {}
    columns = list(bundle.spec.columns)
    training: dict[str, dict[str, float]] = {}
    for c in bundle.spec.categorical:
        cv, total = bundle.vocab[c], max(1, int(bundle.vocab.meta.get("row_count", 1)))
        training[c] = {"oov_rate": cv.oov_count / total, "null_rate": cv.null_count / total}
    for c in bundle.spec.numeric:
        st = bundle.vocab.numeric[c]
        training[c] = {"null_rate": st.missing / max(1, st.rows)}
    out = []
    for run in sorted(runs, key=lambda r: (str(r["started_at"]), str(r["run_id"]))):
        counts = dict(run.get("bin_counts") or {})
        out.append({
            "run_id": run["run_id"], "started_at": str(run["started_at"]), "rows": int(run["rows"]),
            "psi": {c: psi(profile[c], counts[c]) for c in columns if c in profile and c in counts},
            "oov_rate": dict(run.get("oov_rate") or {}), "null_rate": dict(run.get("null_rate") or {}),
        })
    newest = out[-1]["psi"] if out else {}
    return DriftReport(out, training, alert, sorted(c for c, v in newest.items() if v > alert))


def drift_lines(report: DriftReport, columns: Sequence[str]) -> list[str]:
    """The table the command prints: one line per run, then the newest run per column."""
    if not report.runs:
        return ["no scoring run of this bundle with bin counts in score_runs yet; run embedlib score first"]
    lines = [f"{'run':<44} {'started':<26} {'rows':>10}  max PSI (column)"]
    for r in report.runs:
        top = max(r["psi"].items(), key=lambda kv: kv[1], default=("-", float("nan")))
        lines.append(f"{str(r['run_id'])[:44]:<44} {r['started_at'][:26]:<26} {r['rows']:>10,}  {top[1]:.3f} ({top[0]})")
    newest = report.runs[-1]
    lines.append(f"newest run {newest['run_id']}: column, PSI, OOV rate (training), null rate (training)")
    for c in columns:
        t = report.training.get(c, {})
        oov = (f"{100 * newest['oov_rate'].get(c, 0.0):.2f}% ({100 * t['oov_rate']:.2f}%)" if "oov_rate" in t else "-")
        mark = "  ALERT" if c in report.alerts else ""
        lines.append(f"  {c:<24} {newest['psi'].get(c, float('nan')):>7.3f}  {oov:<22} "
                     f"{100 * newest['null_rate'].get(c, 0.0):.2f}% ({100 * t.get('null_rate', 0.0):.2f}%){mark}")
    return lines


def psi_plot(report: DriftReport, columns: Sequence[str]) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    x = np.arange(len(report.runs))
    for c in columns:
        ax.plot(x, [r["psi"].get(c, np.nan) for r in report.runs], marker="o", label=c)
    ax.axhline(report.alert, color="red", linestyle="--", label=f"alert {report.alert:g}")
    ax.set_xticks(x, [r["started_at"][:16] for r in report.runs], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("PSI against training")
    ax.set_title("Drift per column, by scoring run")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
