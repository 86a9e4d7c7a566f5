"""The rows to evaluate: planted anomalies in a held-out table, or scores joined to labels;
and the baselines fitted on the run's source."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from embedlib.core.evaluate.metrics import plant_anomalies
from embedlib.core.evaluate.options import EvaluateError, EvaluateOptions
from embedlib.core.inference import score_rows

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

    from embedlib.core.bundle import Bundle
    from embedlib.core.config import Config
    from embedlib.core.encode import Encoded
    from embedlib.spark.tables import Tables

__all__ = ["EvalSet", "baseline_scores", "labelled_set", "planted_set", "training_rows"]

log = logging.getLogger(__name__)

#: Hidden column names of the labelled join.
LABEL_COLUMN = "__label"
CONTRIBUTIONS_COLUMN = "__contributions"

@dataclass(frozen=True)
class EvalSet:
    """Rows with a 0/1 label and embedlib's scores; ``features`` holds their raw columns when kept."""

    description: str
    labels: np.ndarray  # int8 [rows]
    scores: np.ndarray  # float64 [rows], nats
    contributions: np.ndarray  # float64 [rows, columns], nats
    calibrated: np.ndarray | None  # float64 [rows]: the calibrated score (None: the bundle has no calibration)
    columns: tuple[str, ...]
    features: pa.Table | None


def _feature_columns(bundle: Bundle) -> list[Column]:
    """The bundle's columns as scoring reads them: categoricals as strings, numerics as doubles."""
    from pyspark.sql import functions as F

    return [F.col(f"`{c}`").cast("string").alias(c) for c in bundle.spec.categorical] + [
        F.col(f"`{c}`").cast("double").alias(c) for c in bundle.spec.numeric
    ]


def _collect(df: DataFrame, max_rows: int, seed: int, name: str) -> tuple[pa.Table, int]:
    """At most ``max_rows`` rows of ``df`` (a seeded sample if it has more) and its row count."""
    total = df.count()
    if total == 0:
        raise EvaluateError(f"{name} has no rows to evaluate")
    if total > max_rows:
        log.info("evaluating a sample of %d of the %d rows of %s (--max-rows)", max_rows, total, name)
        df = df.sample(fraction=min(1.0, 1.05 * max_rows / total), seed=seed).limit(max_rows)
    return df.toArrow(), total


def _sampled(table: pa.Table, total: int) -> str:
    return f" (a sample of {table.num_rows:,} of {total:,})" if table.num_rows < total else ""


def planted_set(tables: Tables, cfg: Config, bundle: Bundle, opts: EvaluateOptions) -> EvalSet:
    """Planted anomalies in the held-out table ``score.source``, scored by ``bundle``."""
    from embedlib.spark.workers import check_source

    assert opts.plant is not None
    held_out = cfg.score.source
    if held_out is None:
        raise EvaluateError(
            "--plant evaluates on rows the model did not train on: set score.source to a held-out table "
            "with the same columns (e.g. --set score.source=data/adult/adult.test.gz)"
        )
    held = cfg.source.with_target(held_out)
    if (held.path, held.table) == (cfg.source.path, cfg.source.table):
        log.warning("score.source is the training source %s: the planted rows are not held out", held.name)
    df = tables.read_source(held)
    check_source(df, bundle, (), held.name)
    table, total = _collect(df.select(*_feature_columns(bundle)), opts.max_rows, opts.seed, held.name)
    planted, labels = plant_anomalies(
        table.to_pandas(), bundle.spec.columns, fraction=opts.plant, seed=opts.seed
    )
    features = pa.Table.from_pandas(planted, preserve_index=False)
    result = score_rows(bundle, features)  # bounds its own passes
    return EvalSet(
        description=(
            f"{int(labels.sum()):,} planted anomalies (--plant {opts.plant}, seed {opts.seed}) among "
            f"{len(labels):,} rows of {held_out}{_sampled(table, total)}"
        ),
        labels=labels,
        scores=result.score,
        contributions=result.contributions,
        calibrated=result.calibrated_score,
        columns=bundle.spec.columns,
        features=features,
    )


def _read_labels(tables: Tables, path: str, fmt: str | None) -> DataFrame:
    from embedlib.spark.tables import is_table_name

    if fmt is None:
        lower = path.lower()
        fmt = ("table" if is_table_name(path) else "csv" if lower.endswith((".csv", ".csv.gz"))
               else "parquet" if lower.endswith(".parquet") else "delta")
    if fmt == "table":
        return tables.read(path, catalog=True)
    if fmt == "csv":
        return tables.read(path, format="csv", options={"header": True, "inferSchema": True})
    return tables.read(path, format=fmt)


def _label_values(df: DataFrame, column: str, limit: int = 10) -> list[Any]:
    from pyspark.sql import functions as F

    rows = df.select(F.col(f"`{column}`")).where(F.col(f"`{column}`").isNotNull()).distinct().limit(limit).collect()
    return sorted((r[0] for r in rows), key=str)


def _label_expression(df: DataFrame, column: str, positive: str | None, where: str) -> Column:
    """0/1 (null where the label is null) from a boolean, 0/1 numeric or string label column."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import BooleanType, NumericType

    col = F.col(f"`{column}`")
    dtype = df.schema[column].dataType
    if positive is not None:
        if df.where(col.cast("string") == positive).limit(1).count() == 0:
            raise EvaluateError(
                f"--positive {positive!r} does not occur in column '{column}' of {where}; "
                f"values there include {_label_values(df, column)}"
            )
        return F.when(col.isNull(), None).otherwise((col.cast("string") == positive).cast("int"))
    if isinstance(dtype, BooleanType):
        return col.cast("int")
    values = _label_values(df, column, limit=3)
    if isinstance(dtype, NumericType) and set(values) <= {0, 1}:
        return col.cast("int")
    text = {str(v).strip().lower() for v in values}
    if not isinstance(dtype, NumericType) and (text <= {"0", "1"} or text <= {"true", "false"}):
        trimmed = F.lower(F.trim(col.cast("string")))
        return F.when(col.isNull(), None).otherwise(trimmed.isin("1", "true").cast("int"))
    raise EvaluateError(
        f"label column '{column}' of {where} is {dtype.simpleString()} with values like {values}; "
        "labels must be 0/1 or true/false, or pass --positive VALUE to name the value that marks an anomaly"
    )


def _check_unique(df: DataFrame, ids: Sequence[str], what: str, fix: str) -> None:
    from pyspark.sql import functions as F

    dup = df.groupBy(*[F.col(f"`{c}`") for c in ids]).count().where(F.col("count") > 1).first()
    if dup is not None:
        key = ", ".join(f"{c}={dup[c]!r}" for c in ids)
        raise EvaluateError(f"{what} has {dup['count']} rows for the same id ({key}); {fix}")


def labelled_set(tables: Tables, cfg: Config, bundle: Bundle, opts: EvaluateOptions) -> EvalSet:
    """The run's scores (this bundle's) joined to a labels table on ``columns.id``."""
    from pyspark.sql import functions as F

    assert opts.labels is not None and opts.label_column is not None
    ids = list(cfg.columns.id)
    if not ids:
        raise EvaluateError(
            "--labels joins the labels table to the run's scores on the id columns, but the config declares "
            "none (columns.id is empty); set columns.id to the columns that identify a row (e.g. "
            "--set columns.id=[row_id]) and score again, or use --plant FRACTION instead"
        )
    scores_path = cfg.scores_output
    if tables.version(scores_path) is None:
        raise EvaluateError(f"no scores table at {scores_path}; run `embedlib score` with this config first")
    scores = tables.read(scores_path).where(F.col("bundle_id") == bundle.bundle_id)
    lacking = [c for c in ids if c not in scores.columns]
    if lacking:
        raise EvaluateError(
            f"the scores table {scores_path} lacks id column(s) {', '.join(lacking)} (it was scored with other "
            "columns.id); score again with this config"
        )
    scored_rows = scores.count()
    if scored_rows == 0:
        raise EvaluateError(
            f"the scores table {scores_path} has no rows scored by bundle {bundle.bundle_id} (the run's bundle); "
            "run `embedlib score` with this config first"
        )
    _check_unique(scores, ids, f"the scores table {scores_path}",
                  "it holds several score runs of the same rows; score again with --set score.mode=overwrite")

    labels = _read_labels(tables, opts.labels, opts.labels_format)
    lacking = [c for c in [*ids, opts.label_column] if c not in labels.columns]
    if lacking:
        raise EvaluateError(
            f"the labels table {opts.labels} lacks column(s) {', '.join(lacking)}; its columns are "
            f"{', '.join(labels.columns)} (it needs the id column(s) {', '.join(ids)} and the label column)"
        )
    if opts.label_column in ids:
        raise EvaluateError(f"--label-column {opts.label_column} is one of the id columns; name the label column")
    y = _label_expression(labels, opts.label_column, opts.positive, opts.labels)
    labels = labels.select(*[F.col(f"`{c}`") for c in ids], y.alias(LABEL_COLUMN))
    _check_unique(labels, ids, f"the labels table {opts.labels}", "give one label per row")
    unlabelled = labels.where(F.col(LABEL_COLUMN).isNull()).count()
    labels = labels.where(F.col(LABEL_COLUMN).isNotNull())

    columns = bundle.spec.columns
    joined = scores.join(labels, on=ids, how="inner")
    calibrated = "calibrated_score" in scores.columns
    keep = [F.col("anomaly_score"), F.col(LABEL_COLUMN),
            (F.col("calibrated_score") if calibrated else F.lit(None).cast("double")).alias("calibrated_score"),
            F.array(*[F.col("contributions").getItem(c) for c in columns]).alias(CONTRIBUTIONS_COLUMN)]
    if opts.baselines:  # the raw columns of the scored rows, for the baselines
        source = tables.read_source(cfg.source.with_target(cfg.score.source)).select(
            *[F.col(f"`{c}`") for c in ids], *_feature_columns(bundle))
        joined = joined.join(source, on=ids, how="inner")
        keep += [F.col(f"`{c}`") for c in columns]
    table, total = _collect(joined.select(*keep), opts.max_rows, opts.seed, f"{scores_path} joined to {opts.labels}")
    flat = table.column(CONTRIBUTIONS_COLUMN).combine_chunks().flatten().to_numpy(zero_copy_only=False)
    note = f"; {unlabelled:,} label(s) were null and left out" if unlabelled else ""
    return EvalSet(
        description=(
            f"{total:,} rows of {scores_path} with a label in {opts.labels}{_sampled(table, total)}; "
            f"{scored_rows - total:,} scored rows had no label{note}"
        ),
        labels=table.column(LABEL_COLUMN).to_numpy().astype(np.int8),
        scores=table.column("anomaly_score").to_numpy().astype(np.float64),
        calibrated=_calibrated(table.column("calibrated_score")),
        contributions=np.asarray(flat, dtype=np.float64).reshape(table.num_rows, len(columns)),
        columns=columns,
        features=table.select(list(columns)) if opts.baselines else None,
    )


# -------------------------------------------------------------------------- baselines


def _calibrated(column: pa.ChunkedArray) -> np.ndarray | None:
    """The calibrated scores of labelled rows; None when rows were scored without calibration."""
    if column.null_count:
        return None
    return np.asarray(column.to_numpy(), dtype=np.float64)


def training_rows(tables: Tables, cfg: Config, bundle: Bundle, *, max_rows: int = 200_000,
                  seed: int = 0) -> Encoded:
    """The run's source (a seeded sample of at most ``max_rows`` rows), encoded with the bundle."""
    df = tables.read_source(cfg.source).select(*_feature_columns(bundle))
    table, _ = _collect(df, max_rows, seed, cfg.source.table or str(cfg.source.path))
    return bundle.encoder.arrays(table)


def baseline_scores(
    train: Encoded, test: Encoded, bundle: Bundle, cfg: Config
) -> dict[str, tuple[np.ndarray, float]]:
    """``{method: (scores of test, threshold)}`` for the seed design and IsolationForest.

    Both are fitted on ``train``; the seed design with the run's epochs, batch
    size, learning rate and seed. A baseline's threshold is the
    ``score.threshold_quantile`` of its own training-row scores, as the bundle's is.
    """
    from embedlib.core.baselines import IsolationForestBaseline, fit_mse_autoencoder, mse_scores

    t, q = cfg.train, cfg.score.threshold_quantile
    mse = fit_mse_autoencoder(train, bundle.spec, epochs=t.epochs or 20, batch_size=t.batch_size,
                              learning_rate=t.learning_rate, seed=t.seed)
    forest = IsolationForestBaseline(train, bundle.spec.cardinalities, seed=t.seed)
    return {
        "mse": (mse_scores(mse, test), float(np.quantile(mse_scores(mse, train), q))),
        "iforest": (forest.scores(test), float(np.quantile(forest.scores(train), q))),
    }
