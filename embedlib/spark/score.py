"""Scoring at scale: Arrow batches through ``mapInArrow``, the bundle loaded once per worker.

The Spark layer of scoring: :func:`embedlib.core.output.build_output` (core) makes each batch's columns.

The driver verifies the bundle and checks the source's schema against it (before
any Spark job); the bundle travels with the function (:mod:`embedlib.spark.workers`, no
``SparkContext``: the same code runs over Spark Connect). On the executors,
:func:`embedlib.spark.workers.cached_bundle` keeps one loaded
:class:`~embedlib.core.bundle.Bundle` per Python worker — never one per batch. Each Arrow batch is encoded with the bundle's vocabulary (vectorized
lookup), scored in one forward pass, and returned as an Arrow batch with:

``<id columns>, anomaly_score, is_anomaly, contributions, reasons, calibrated_score,
calibrated_contributions, [code], bundle_id`` — and in the score job's table ``run_id, scored_at`` (the
run that wrote the row, and when). ``score.detail`` says which rows carry ``contributions``,
``calibrated_contributions`` and ``reasons`` (``flagged`` by default: the rows with ``is_anomaly``;
the others hold nulls).

``anomaly_score`` is the row's negative log-likelihood in nats and
``contributions`` (column → nats) adds up to it. ``calibrated_contributions``
(column → −log of the share of normal rows whose column adds at least as many
nats; :mod:`embedlib.core.calibration`) add up to ``calibrated_score``. Rows are
flagged (``is_anomaly``) and their ``reasons`` ordered by ``score.rank_by``
(calibrated by default). ``reasons`` lists the top ``score.top_reasons``
columns: the observed value, the value the model expected (for a categorical
its arg-max, with its probability), and the nats.

Writes are atomic and idempotent: the output is one Delta commit carrying the
app transaction ``("embedlib-score:<run id>", 1)``, so a rerun of the same run
adds nothing; a summary row goes to ``score_runs`` the same way.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from embedlib.core.bundle import Bundle, BundleError
from embedlib.core.output import build_output, output_names
from embedlib.core.summary import CountLayout, ScoreRun
from embedlib.core.vocab.model import SchemaError
from embedlib.spark.runs import has_summary, write_summary
from embedlib.spark.workers import (
    COUNTS_COLUMN,
    check_source,
    map_with_bundle,
    passthrough_columns,
    summed_counts,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from embedlib.core.config import Config, SourceConfig
    from embedlib.spark.tables import TableEngine, Tables

__all__ = [
    "ScoreRun", "Scoring", "check_source", "output_fields", "prepare_scoring", "run_score_job", "score_frame",
    "score_into",
]

log = logging.getLogger(__name__)

QUANTILES = (0.5, 0.9, 0.99, 0.999)

def output_fields(emit_code: bool) -> list[Any]:
    """Spark fields of :func:`~embedlib.core.output.build_output`'s columns (:data:`~embedlib.core.output.OUTPUT_COLUMNS`)."""
    from pyspark.sql.types import (
        ArrayType,
        BooleanType,
        DoubleType,
        FloatType,
        MapType,
        StringType,
        StructField,
        StructType,
    )

    reason = StructType(
        [
            StructField("column", StringType()),
            StructField("value", StringType()),
            StructField("expected", StringType()),
            StructField("probability", DoubleType()),
            StructField("nats", DoubleType()),
        ]
    )
    fields = [
        StructField("anomaly_score", DoubleType()),
        StructField("is_anomaly", BooleanType()),
        StructField("contributions", MapType(StringType(), DoubleType())),
        StructField("reasons", ArrayType(reason)),
        StructField("calibrated_score", DoubleType()),
        StructField("calibrated_contributions", MapType(StringType(), DoubleType())),
    ]
    if emit_code:
        fields.append(StructField("code", ArrayType(FloatType())))
    return fields


def score_frame(
    spark: SparkSession,
    df: DataFrame,
    bundle: Bundle,
    *,
    ids: tuple[str, ...],
    threshold: float | None = None,
    top_reasons: int = 3,
    emit_code: bool = False,
    table: str = "source",
    counts: bool = False,
    batch_size: int | None = None,
    rank_by: str | None = None,
    device: str = "auto",
    detail: str = "all",
) -> DataFrame:
    """The scored DataFrame (lazy). ``device`` (``score.device``): where each worker runs the model;
    ``detail`` (``score.detail``): which rows get contributions and reasons (:func:`build_output`). ``rank_by`` (default: the bundle's) decides
    ``is_anomaly`` and the reasons' order; ``threshold`` defaults to the bundle's
    for that ranking. With ``counts`` the frame has one more column,
    :data:`embedlib.spark.workers.COUNTS_COLUMN`: each task's summary counts (see :func:`build_output`) on its
    last row; ``collect_list`` it in an ``Observation`` and sum (:func:`embedlib.spark.workers.summed_counts`).
    ``batch_size`` sets the rows per Arrow batch (a session setting,
    ``spark.sql.execution.arrow.maxRecordsPerBatch``)."""

    if batch_size is not None:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_size))
    rank_by = rank_by or bundle.rank_by
    transform = functools.partial(
        build_output,
        threshold=bundle.threshold_for(rank_by) if threshold is None else float(threshold),
        top_reasons=top_reasons,
        emit_code=emit_code,
        rank_by=rank_by,
        detail=detail,
    )
    return map_with_bundle(spark, df, bundle, ids=ids, table=table, transform=transform,
                           fields=output_fields(emit_code), counts=counts, device=device)


# ----------------------------------------------------------------------------- job


@dataclass(frozen=True)
class Scoring:
    """What the driver settles before any Spark job of a score run, batch or stream."""

    bundle: Bundle
    source: SourceConfig
    rank_by: str
    threshold: float
    engine: TableEngine

    def tables(self, spark: SparkSession) -> Tables:
        """The run's tables on ``spark`` (the driver's session, or a micro-batch's), through the Delta
        engine chosen when the run was prepared."""
        from embedlib.spark.tables import Tables

        return Tables(spark, self.engine)


def prepare_scoring(spark: SparkSession, cfg: Config) -> Scoring:
    """The checks of a score run that need no Spark job (engine, outputs, tracking, the bundle and
    its vocabulary), the ranking and the threshold."""
    from embedlib.core.bundle import load_bundle
    from embedlib.spark.tables import open_tables
    from embedlib.spark.tracking import check_tracking

    tables = open_tables(spark, cfg.delta)
    tables.check_writable(cfg.scores_output, cfg.layout.score_runs)
    check_tracking(cfg)
    if cfg.score.model is not None:  # an MLflow model (a registered version): its own bundle and vocabulary
        from embedlib.spark.tracking import model_bundle

        bundle = model_bundle(cfg, cfg.score.model)
    else:
        bundle = load_bundle(cfg.layout.bundle)
        _check_vocab(tables, cfg, bundle)
    rank_by = cfg.score.rank_by if bundle.calibration is not None else "nats"
    if rank_by != cfg.score.rank_by:
        log.warning("bundle %s has no calibration (written by an older embedlib): rows are ranked by nats; "
                    "retrain to rank by the calibrated score", bundle.bundle_id)
    threshold = bundle.threshold_for(rank_by) if cfg.score.threshold is None else cfg.score.threshold
    return Scoring(bundle, cfg.source.with_target(cfg.score.source), rank_by, float(threshold), tables.engine)


def run_score_job(spark: SparkSession, cfg: Config) -> ScoreRun:
    """Score ``score.source`` (default: ``source``) with the run's bundle into ``scores``."""
    from embedlib.spark.tracking import log_scoring

    started = time.perf_counter()
    scoring = prepare_scoring(spark, cfg)
    tables = scoring.tables(spark)
    df = tables.read_source(scoring.source)
    ids = passthrough_columns(cfg.score.passthrough, cfg.columns.id, df.columns, output_names(), "score.passthrough")
    check_source(df, scoring.bundle, ids, scoring.source.name)
    if df.isEmpty():
        raise SchemaError(f"score source {scoring.source.name} has no rows; nothing to score")
    run_id = cfg.score.run_id or f"{tables.source_version(scoring.source)}-{scoring.bundle.bundle_id}"
    summary = score_into(spark, cfg, scoring, df, ids, run_id, (f"embedlib-score:{run_id}", 1), started)
    return replace(summary, tracking_run_id=log_scoring(cfg, summary))


def score_into(spark: SparkSession, cfg: Config, scoring: Scoring, df: DataFrame, ids: tuple[str, ...],
               run_id: str, txn: tuple[str, int], started: float) -> ScoreRun:
    """Score ``df`` into the run's scores as one commit carrying ``txn``, then its summary row into
    ``score_runs`` with the same ``txn``: a rerun of the same ``txn`` writes nothing twice (and
    rebuilds a summary its first attempt did not get to).

    The summary's per-column counts are added up by each task's Python worker and leave it on the
    task's last row (:data:`embedlib.spark.workers.COUNTS_COLUMN`, dropped before the write), collected by
    the same ``Observation`` as rows, anomalies and quantiles: a successful task's counts count once,
    a failed attempt's never, and no accumulator is needed (none exists over Spark Connect; as
    ~400 ``count(when(…))`` aggregates at 30 columns they would cost the JVM ~10 µs a row)."""
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    tables = scoring.tables(spark)
    layout, output, bundle, source_name = cfg.layout, cfg.scores_output, scoring.bundle, scoring.source.name
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    started_at = now.isoformat(timespec="seconds")
    columns = bundle.spec.columns
    shape = CountLayout(len(columns), len(bundle.spec.categorical))

    def observed(name: str) -> tuple[DataFrame, Observation]:
        frame = score_frame(
            spark, df, bundle, ids=ids, threshold=scoring.threshold, top_reasons=cfg.score.top_reasons,
            emit_code=cfg.score.emit_code, table=source_name, counts=True, batch_size=cfg.score.batch_size,
            rank_by=scoring.rank_by, device=cfg.score.device, detail=cfg.score.detail,
        )
        obs = Observation(name)
        # the run's identity in every row: constants the JVM adds, nothing crosses from Python
        run = [F.lit(run_id).alias("run_id"), F.lit(now).cast("timestamp").alias("scored_at")]
        return frame.observe(obs, *metrics).drop(COUNTS_COLUMN).select("*", *run), obs

    metrics = [
        F.count(F.lit(1)).alias("rows"),
        F.count(F.when(F.col("is_anomaly"), 1)).alias("anomalies"),
        F.percentile_approx("anomaly_score", list(QUANTILES), 10_000).alias("quantiles"),
        F.collect_list(COUNTS_COLUMN).alias("counts"),
    ]
    scored, obs = observed(f"score-{run_id}")
    result = tables.write(
        scored, output, mode=cfg.score.mode, txn=txn, keys=cfg.columns.id,
        user_metadata={"run_id": run_id, "bundle_id": bundle.bundle_id, "source": source_name},
    )
    if not result.committed:
        if has_summary(tables, layout.score_runs, run_id):
            log.info("score run %s is already in %s; nothing written", run_id, output)
            return ScoreRun(run_id, bundle.bundle_id, source_name, output, False, 0, 0, scoring.threshold, {}, {},
                            {}, started_at, round(time.perf_counter() - started, 3), rank_by=scoring.rank_by)
        # The scores were committed but the run stopped before its summary: score
        # again without writing (deterministic, so the same figures) to rebuild it.
        log.warning("score run %s is in %s but its summary is missing from %s; recomputing it",
                    run_id, output, layout.score_runs)
        scored, obs = observed(f"score-{run_id}-summary")
        scored.write.format("noop").mode("overwrite").save()
    m = obs.get
    rows = int(m["rows"])
    counted, missing, oov, bins, inf_rows = shape.unpack(summed_counts(m["counts"], shape.size))
    if counted != rows:  # the frame ran more than once (a recomputed stage): the rates stay per counted row
        log.warning("score run %s: the summary counts cover %d rows, the scores %d; rates are over the counted rows",
                    run_id, counted, rows)
    summary = ScoreRun(
        run_id=run_id,
        bundle_id=bundle.bundle_id,
        source=source_name,
        output=output,
        written=result.committed,
        rows=rows,
        anomalies=int(m["anomalies"]),
        threshold=scoring.threshold,
        quantiles={str(q): float(v) for q, v in zip(QUANTILES, m["quantiles"] or [])},
        null_rate={c: missing[i] / max(counted, 1) for i, c in enumerate(columns)},
        oov_rate={c: oov[i] / max(counted, 1) for i, c in enumerate(columns[: len(bundle.spec.categorical)])},
        started_at=started_at,
        seconds=round(time.perf_counter() - started, 3),
        inf_rows=inf_rows,
        rank_by=scoring.rank_by,
        bin_counts=dict(zip(columns, bins)),
    )
    if summary.inf_rows:
        log.warning("%d row(s) of %s had ±inf numerics, scored as missing (the vocabulary's inf_policy is null)",
                    summary.inf_rows, source_name)
    write_summary(tables, summary, layout.score_runs, txn)
    log.info("scored %d rows of %s into %s (%d above the threshold %.3f)", rows, source_name, output,
             summary.anomalies, scoring.threshold)
    return summary


def _check_vocab(tables: Tables, cfg: Config, bundle: Bundle) -> None:
    from embedlib.spark.vocab.job import load_vocabulary

    if tables.version(cfg.layout.vocab) is None:
        return
    vocab = load_vocabulary(tables, cfg.layout.vocab)
    if vocab.content_hash != bundle.vocab.content_hash:
        raise BundleError(
            f"the bundle at {cfg.layout.bundle} was trained on another vocabulary (hash "
            f"{bundle.vocab.content_hash}) than the run's vocabulary table {cfg.layout.vocab} (hash "
            f"{vocab.content_hash}); retrain with `embedlib train` or point the run at the matching vocabulary"
        )
