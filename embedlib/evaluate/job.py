"""``embedlib evaluate``: metrics of every method, figures and ``metrics.json`` in ``<run>/evaluation/``."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from embedlib.core.evaluate.metrics import MethodMetrics, column_means, detection_metrics
from embedlib.core.evaluate.options import EvaluateError, EvaluateOptions
from embedlib.core.evaluate.plots import (
    contributions_figure,
    png_bytes,
    precision_recall_figure,
    roc_figure,
    score_histogram,
)
from embedlib.spark.evaluate.rows import baseline_scores, labelled_set, planted_set, training_rows

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from embedlib.core.config import Config

__all__ = ["Evaluation", "run_evaluate_job"]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Evaluation:
    """What an evaluation measured and where it wrote its files."""

    bundle_id: str
    mode: str  # "plant" or "labels"
    description: str
    rows: int
    positives: int
    methods: tuple[MethodMetrics, ...]
    column_means: Mapping[str, Mapping[str, float | None]]
    folder: str
    files: Mapping[str, str]  # name → path: metrics and every figure

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["methods"] = {m.method: {k: v for k, v in asdict(m).items() if k != "method"} for m in self.methods}
        return out


def _require_extras() -> None:
    try:
        import matplotlib  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as exc:
        raise EvaluateError(
            f"embedlib evaluate needs scikit-learn and matplotlib ({exc}); install them with "
            "pip install 'embedlib[evaluate]'"
        ) from exc


def run_evaluate_job(spark: SparkSession, cfg: Config, opts: EvaluateOptions) -> Evaluation:
    """Evaluate the run's bundle; write metrics and figures to ``<run>/evaluation/``."""
    from embedlib.core.bundle import load_bundle
    from embedlib.core.layout import write_bytes_atomic, write_text_atomic
    from embedlib.spark.tables import open_tables

    opts.check()
    _require_extras()
    tables = open_tables(spark, cfg.delta)
    bundle = load_bundle(cfg.layout.bundle)
    data = planted_set(tables, cfg, bundle, opts) if opts.plant is not None else labelled_set(tables, cfg, bundle, opts)
    positives = int(data.labels.sum())
    top_k = opts.top_k or max(positives, 1)
    # the raw NLL ("ours") and, for bundles that have it, the calibrated score, each at its own threshold;
    # score.threshold overrides the threshold of the ranking score.rank_by names
    scores: dict[str, np.ndarray] = {"ours": data.scores}
    thresholds = {"ours": bundle.threshold_for("nats")}
    if data.calibrated is not None:
        scores["calibrated"], thresholds["calibrated"] = data.calibrated, bundle.threshold_for("calibrated")
    ranking = "calibrated" if cfg.score.rank_by == "calibrated" and "calibrated" in scores else "ours"
    if cfg.score.threshold is not None:
        thresholds[ranking] = float(cfg.score.threshold)
    threshold = thresholds[ranking]
    if opts.baselines:
        assert data.features is not None
        log.info("fitting the baselines on the run's source")
        train = training_rows(tables, cfg, bundle, max_rows=opts.max_rows, seed=opts.seed)
        for method, (s, t) in baseline_scores(train, bundle.encoder.arrays(data.features), bundle, cfg).items():
            scores[method], thresholds[method] = s, t
    methods = tuple(
        detection_metrics(m, data.labels, s, threshold=thresholds[m], top_k=top_k) for m, s in scores.items()
    )
    flagged = scores[ranking] > threshold
    means = column_means(data.contributions, flagged, data.columns)
    figures = {
        "score_histogram": score_histogram(scores[ranking], data.labels, threshold,
                                           unit="calibrated" if ranking == "calibrated" else "nats"),
        "roc": roc_figure(data.labels, scores),
        "precision_recall": precision_recall_figure(data.labels, scores),
        "contributions": contributions_figure(means, int(flagged.sum()), int((~flagged).sum())),
    }
    folder = cfg.layout.evaluation
    files = {"metrics": cfg.layout.evaluation_file("metrics.json")}
    for name, fig in figures.items():
        files[name] = cfg.layout.evaluation_file(f"{name}.png")
        write_bytes_atomic(files[name], png_bytes(fig))
    result = Evaluation(
        bundle_id=bundle.bundle_id,
        mode="plant" if opts.plant is not None else "labels",
        description=data.description,
        rows=len(data.labels),
        positives=positives,
        methods=methods,
        column_means=means,
        folder=folder,
        files=files,
    )
    write_text_atomic(files["metrics"], json.dumps(result.to_dict(), indent=1))
    log.info("evaluation of bundle %s written to %s", bundle.bundle_id, folder)
    return result
