"""Measuring detection quality: planted anomalies or a labels table, metrics and plots.

:func:`plant_anomalies` follows the protocol of the shipped data's README: in a
``fraction`` of the rows, two fields (chosen at random among the declared
columns) take the values of another random row whose values differ in both.
That breaks the dependencies between columns while keeping every column's
distribution, so a detector can only find these rows through the joint structure.

:func:`run_evaluate_job` (``embedlib evaluate``) gathers the rows to evaluate —
planted anomalies in a held-out table (``score.source``), scored by the bundle,
or the run's scores joined to a labels table on ``columns.id`` — and computes
with scikit-learn, per method: AUROC, AUPRC (average precision), precision and
recall at the method's threshold (for embedlib the bundle's, or
``score.threshold``; for a baseline the same ``score.threshold_quantile`` of its
own training-row scores) and at the top ``k`` rows. With ``baselines`` the same
rows are also scored by the seed design (MSE on the embedding output) and by
IsolationForest, both fitted on the run's source. It writes into
``<run>/evaluation/``:

``metrics.json``, ``score_histogram.png`` (score by label, threshold drawn),
``roc.png``, ``precision_recall.png`` (every method), ``contributions.png``
(per-column mean nats of flagged vs unflagged rows).

The figures are built on matplotlib's Agg canvas (no display, no pyplot state)
and written as bytes through :mod:`embedlib.core.layout`, so the run directory may be
remote. scikit-learn and matplotlib come with ``pip install 'embedlib[evaluate]'``.
"""

from __future__ import annotations

from embedlib.core.evaluate.metrics import (
    METHODS,
    MethodMetrics,
    column_means,
    detection_metrics,
    plant_anomalies,
)
from embedlib.core.evaluate.options import LABEL_FORMATS, EvaluateError, EvaluateOptions
from embedlib.core.evaluate.plots import (
    FIGURES,
    contributions_figure,
    png_bytes,
    precision_recall_figure,
    roc_figure,
    score_histogram,
)
from embedlib.evaluate.job import Evaluation, run_evaluate_job
from embedlib.spark.evaluate.rows import EvalSet, baseline_scores, labelled_set, planted_set, training_rows

__all__ = [
    "FIGURES",
    "LABEL_FORMATS",
    "METHODS",
    "EvalSet",
    "EvaluateError",
    "EvaluateOptions",
    "Evaluation",
    "MethodMetrics",
    "baseline_scores",
    "column_means",
    "contributions_figure",
    "detection_metrics",
    "labelled_set",
    "plant_anomalies",
    "planted_set",
    "png_bytes",
    "precision_recall_figure",
    "roc_figure",
    "run_evaluate_job",
    "score_histogram",
    "training_rows",
]
