"""The ``score_runs`` table: a run's summary row written, found and read back, and ``embedlib drift``
over them (the Spark layer; the record itself is :class:`embedlib.core.summary.ScoreRun`).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from embedlib.core.summary import SCORE_RUNS_SCHEMA, ScoreRun

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from embedlib.core.config import Config
    from embedlib.spark.tables import Tables

__all__ = ["has_summary", "read_summaries", "run_drift_job", "write_summary"]


def has_summary(tables: Tables, path: str, run_id: str) -> bool:
    from pyspark.sql import functions as F

    if tables.version(path) is None:
        return False
    return not tables.read(path).where(F.col("run_id") == run_id).isEmpty()


def read_summaries(tables: Tables, path: str, prefix: str) -> list[ScoreRun]:
    """The summaries in ``score_runs`` at ``path`` whose run id starts with ``prefix`` (none: no table)."""
    from pyspark.sql import functions as F

    if tables.version(path) is None:
        return []
    rows = tables.read(path).where(F.col("run_id").startswith(prefix)).toArrow().to_pylist()
    return [ScoreRun(
        run_id=r["run_id"], bundle_id=r["bundle_id"], source=r["source"], output=r["output"], written=True,
        rows=int(r["rows"]), anomalies=int(r["anomalies"]), threshold=float(r["threshold"]),
        quantiles=dict(r["score_quantiles"] or []), null_rate=dict(r["null_rate"] or []),
        oov_rate=dict(r["oov_rate"] or []),
        started_at=r["started_at"].astimezone(dt.timezone.utc).isoformat(timespec="seconds"),
        seconds=float(r["seconds"]), inf_rows=int(r["inf_rows"] or 0), rank_by=r["rank_by"] or "nats",
        bin_counts={k: list(v) for k, v in (r["bin_counts"] or [])},
    ) for r in rows]


def write_summary(tables: Tables, run: ScoreRun, path: str, txn: tuple[str, int]) -> None:
    row = {
        "run_id": run.run_id,
        "bundle_id": run.bundle_id,
        "source": run.source,
        "output": run.output,
        "rows": run.rows,
        "anomalies": run.anomalies,
        "threshold": run.threshold,
        "score_quantiles": list(run.quantiles.items()),
        "null_rate": list(run.null_rate.items()),
        "oov_rate": list(run.oov_rate.items()),
        "started_at": dt.datetime.fromisoformat(run.started_at),
        "seconds": run.seconds,
        "inf_rows": run.inf_rows,
        "rank_by": run.rank_by,
        "bin_counts": [(k, list(v)) for k, v in run.bin_counts.items()],
    }
    frame = tables.spark.createDataFrame(pa.Table.from_pylist([row], schema=SCORE_RUNS_SCHEMA)).coalesce(1)
    tables.write(frame, path, mode="append", txn=txn)


def run_drift_job(spark: SparkSession, cfg: Config) -> list[str]:
    """``embedlib drift``: the report of every scoring run of the run's bundle; ``drift.json`` and
    ``psi.png`` under ``<run>/drift``; :class:`DriftAlert` when the newest run crosses the alert."""
    from pyspark.sql import functions as F

    from embedlib.core.bundle import load_bundle
    from embedlib.core.drift import DriftAlert, drift_lines, drift_report, psi_plot
    from embedlib.core.layout import join, write_bytes_atomic, write_text_atomic
    from embedlib.spark.tables import open_tables

    tables = open_tables(spark, cfg.delta)
    bundle = load_bundle(cfg.layout.bundle)
    if not bundle.manifest.get("profile"):
        raise ValueError(f"bundle {cfg.layout.bundle} has no training profile (written before embedlib drift); "
                         "retrain it to follow drift")
    path = cfg.layout.score_runs
    rows: list[dict[str, Any]] = []
    if tables.version(path) is not None:
        table = tables.read(path)
        if "bin_counts" in table.columns:
            rows = [r.asDict(recursive=True) for r in table.where(
                (F.col("bundle_id") == bundle.bundle_id) & F.col("bin_counts").isNotNull()).collect()]
    report = drift_report(bundle, rows, cfg.drift.psi_alert)
    lines = drift_lines(report, bundle.spec.columns)
    folder = join(cfg.layout.root, "drift")
    doc = {"bundle_id": bundle.bundle_id, "psi_alert": report.alert, "alerts": report.alerts,
           "training": report.training, "runs": report.runs}
    write_text_atomic(join(folder, "drift.json"), json.dumps(doc, indent=1, sort_keys=True))
    if report.runs:
        write_bytes_atomic(join(folder, "psi.png"), psi_plot(report, bundle.spec.columns))
        lines.append(f"drift.json and psi.png written to {folder}")
    if report.alerts:
        raise DriftAlert(f"the newest scoring run drifted: PSI above drift.psi_alert={report.alert} in "
                         f"{', '.join(report.alerts)}", lines)
    return lines
