"""``embedlib run``: vocab → train → extract → score, end to end, and what each step printed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from embedlib.reports import extract_report, score_report, train_report, vocab_report

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from embedlib.core.config import Config

__all__ = ["run_pipeline"]


def run_pipeline(spark: SparkSession, cfg: Config, *, npz_dir: str | None = None) -> list[str]:
    """Run every step on ``cfg``; the report lines of each step, then where every output is."""
    from embedlib.spark.extract import run_extract_job
    from embedlib.spark.score import run_score_job
    from embedlib.spark.train import run_train_job
    from embedlib.spark.vocab import run_vocab_job

    lines = ["== vocab", *vocab_report(run_vocab_job(spark, cfg), cfg)]
    lines += ["== train", *train_report(run_train_job(spark, cfg))]
    lines += ["== extract", *extract_report(*run_extract_job(spark, cfg, npz_dir), npz_dir)]
    lines += ["== score", *score_report(spark, run_score_job(spark, cfg), cfg)]
    lines += [
        "== outputs",
        f"  vocabulary  {cfg.layout.vocab}",
        f"  bundle      {cfg.layout.bundle}",
        f"  embeddings  {cfg.layout.embeddings}",
        f"  scores      {cfg.scores_output}",
        f"  score runs  {cfg.layout.score_runs}",
    ]
    return lines
