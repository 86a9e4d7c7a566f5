"""What the commands print: a score run's top rows and distribution, an evaluation's table."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from embedlib.core.config import Config
    from embedlib.core.summary import ScoreRun
    from embedlib.core.vocab import Vocabulary
    from embedlib.evaluate import Evaluation
    from embedlib.spark.train import TrainResult

__all__ = ["evaluation_report", "extract_report", "format_reason", "score_report", "stream_report", "train_report",
           "vocab_report"]


def vocab_report(vocab: Vocabulary, cfg: Config) -> list[str]:
    return [f"vocabulary written to {cfg.layout.vocab}", *vocab.summary()]


def train_report(result: TrainResult) -> list[str]:
    """The bundle, the backend, the epochs and the validation loss of each."""
    m = result.metrics
    lines = [
        f"bundle {result.bundle_id} written to {result.bundle_path}",
        f"backend {m['backend']} ({m['world_size']} worker(s)), {m['epochs_run']} epoch(s), "
        f"best epoch {m['best_epoch']}, validation loss {m['validation_loss']:.4f} nats/row, "
        f"threshold {result.threshold:.3f} nats, {m['train_seconds']}s",
        "epoch  train    validation",
    ]
    lines += [f"{h['epoch']:>5}  {h['train_loss']:<8.4f} {h['validation_loss']:.4f}" for h in m["history"]]
    if m.get("parent_bundle_id"):
        lines.append(f"warm-started from bundle {m['parent_bundle_id']}")
    if m.get("restarts"):
        lines.append(f"a worker died and the workers were launched again {m['restarts']} time(s), resuming from the "
                     "last checkpoint (train.max_restarts); the warnings above name the rank")
    if result.tracking_run_id:
        lines.append(f"MLflow run {result.tracking_run_id}")
    return lines


def extract_report(path: str, npz_files: list[str], npz_dir: str | None) -> list[str]:
    lines = [f"embeddings written to {path}"]
    if npz_files:
        lines.append(f"{len(npz_files)} .npz file(s) written to {npz_dir}")
    return lines


def stream_report(runs: list[ScoreRun], cfg: Config) -> list[str]:
    """Summary of a scoring stream's run: one line per micro-batch it wrote."""
    written = [r for r in runs if r.written]
    lines = [f"streamed {sum(r.rows for r in written):,} rows of {cfg.source.with_target(cfg.score.source).name} "
             f"in {len(written)} micro-batch(es) -> {cfg.scores_output} "
             f"({sum(r.anomalies for r in written):,} flagged)"]
    for r in runs:
        what = f"{r.rows:,} rows, {r.anomalies:,} flagged" if r.written else "already written; nothing added"
        lines.append(f"  {r.run_id}: {what}")
    return lines


def score_report(spark: SparkSession, run: ScoreRun, cfg: Config, top: int = 10) -> list[str]:
    """Readable summary of a score run: the top rows with reasons, the distribution."""
    from pyspark.sql import functions as F

    from embedlib.core.output import output_names
    from embedlib.spark.tables import open_tables

    if not run.written:
        rebuilt = "; its missing run summary was rebuilt" if run.rows else ""
        return [f"score run {run.run_id} was already written to {run.output}; nothing added{rebuilt}"]
    unit = "calibrated" if run.rank_by == "calibrated" else "nats"
    lines = [
        f"scored {run.rows:,} rows of {run.source} -> {run.output} (run {run.run_id})",
        f"threshold {run.threshold:.3f} ({unit}): {run.anomalies:,} rows flagged "
        f"({100.0 * run.anomalies / max(run.rows, 1):.2f}%)",
        "score quantiles (nats): " + ", ".join(f"q{float(q) * 100:g}={v:.2f}" for q, v in run.quantiles.items()),
    ]
    if run.inf_rows:
        lines.append(f"{run.inf_rows:,} row(s) had ±inf numerics, scored as missing (the vocabulary's inf_policy is null)")
    oov = {c: r for c, r in run.oov_rate.items() if r > 0}
    if oov:
        lines.append("out-of-vocabulary rate: " + ", ".join(f"{c} {100 * r:.3f}%" for c, r in oov.items()))
    scores = open_tables(spark, cfg.delta).read(run.output)
    scores = scores.where(F.col("run_id") == run.run_id) if "run_id" in scores.columns \
        else scores.where(F.col("bundle_id") == run.bundle_id)  # a table written before run_id
    order = "calibrated_score" if run.rank_by == "calibrated" else "anomaly_score"
    rows = scores.orderBy(F.col(order).desc()).limit(top).collect()
    lines.append(f"top {len(rows)} rows (by {order}):")
    own = output_names()
    passed = [c for c in scores.columns if c not in own]  # the row's own values (score.passthrough)
    for row in rows:
        ids = ", ".join(f"{c}={row[c]}" for c in cfg.columns.id if c in passed)
        calibrated = f", calibrated {row['calibrated_score']:.2f}" if row["calibrated_score"] is not None else ""
        lines.append(f"  {row['anomaly_score']:8.2f} nats{calibrated}{'  ' + ids if ids else ''}")
        values = [f"{c}={row[c]}" for c in passed if c not in cfg.columns.id]
        if values:
            lines.append("    row: " + ", ".join(values))
        for reason in row["reasons"] or []:  # null on a row without detail (score.detail)
            lines.append("      " + format_reason(reason, row["calibrated_contributions"]))
    if run.tracking_run_id:
        lines.append(f"MLflow run {run.tracking_run_id}")
    return lines


def format_reason(reason: Any, calibrated: Mapping[str, float] | None = None) -> str:
    """``native-country=Holand-Netherlands — expected United-States (p=0.91), +4.1 nats``, and with the
    row's ``calibrated_contributions``: ``…, +4.1 nats (0.2% of normal rows add as much)``."""
    prob = f" (p={reason['probability']:.2f})" if reason["probability"] is not None else ""
    rare = ""
    if calibrated is not None:
        terms = dict(calibrated)
        if reason["column"] in terms:
            share = math.exp(-terms[reason["column"]])
            rare = f" ({100 * share:.2g}% of normal rows add as much)"
    return (
        f"{reason['column']}={reason['value']} — expected {reason['expected']}{prob}, "
        f"+{reason['nats']:.1f} nats{rare}"
    )


def evaluation_report(ev: Evaluation) -> list[str]:
    """The metrics of every method side by side, the columns behind the flags, and the files."""
    from embedlib.evaluate import METHODS

    k = ev.methods[0].top_k
    lines = [
        f"evaluated bundle {ev.bundle_id} on {ev.description}",
        f"{ev.positives:,} positive of {ev.rows:,} rows ({100.0 * ev.positives / max(ev.rows, 1):.2f}%)",
        f"{'method':<38} {'AUROC':>6} {'AUPRC':>6} {'threshold':>10} {'flagged':>8} {'precision':>9} "
        f"{'recall':>6} {'P@' + str(k):>8} {'R@' + str(k):>8}",
    ]
    for m in ev.methods:
        lines.append(
            f"{METHODS.get(m.method, m.method):<38} {m.auroc:>6.3f} {m.auprc:>6.3f} {m.threshold:>10.4g} "
            f"{m.flagged:>8,} {m.precision:>9.3f} {m.recall:>6.3f} {m.precision_at_k:>8.3f} {m.recall_at_k:>8.3f}"
        )
    gaps = sorted(
        ((name, v["flagged"], v["unflagged"]) for name, v in ev.column_means.items() if v["flagged"] is not None),
        key=lambda t: t[1] - (t[2] or 0.0), reverse=True,
    )
    if gaps:
        lines.append("mean nats, flagged vs unflagged rows (embedlib; largest differences first):")
        lines += [f"  {name:<20} {f:7.2f} vs {u or 0.0:6.2f}" for name, f, u in gaps[:5]]
    lines.append(f"written to {ev.folder}:")
    lines += [f"  {name:<17} {path}" for name, path in ev.files.items()]
    return lines
