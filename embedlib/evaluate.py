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
and written as bytes through :mod:`embedlib.layout`, so the run directory may be
remote. scikit-learn and matplotlib come with ``pip install 'embedlib[evaluate]'``.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from pyspark.sql import Column, DataFrame, SparkSession

    from embedlib.bundle import Bundle
    from embedlib.config import Config
    from embedlib.encode import Encoded

__all__ = [
    "FIGURES",
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

log = logging.getLogger(__name__)

#: method key → what the reports and plots call it.
METHODS = {
    "ours": "embedlib (NLL in nats)",
    "mse": "seed design: MSE on embedding output",
    "iforest": "IsolationForest (one-hot + numerics)",
}
#: the PNG files of an evaluation, without the extension.
FIGURES = ("score_histogram", "roc", "precision_recall", "contributions")
LABEL_FORMATS = ("delta", "parquet", "csv", "table")
_CHUNK = 50_000


class EvaluateError(ValueError):
    """An evaluation cannot run as asked; the message says what to change."""


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


# ----------------------------------------------------------------------- options


@dataclass(frozen=True)
class EvaluateOptions:
    """What ``embedlib evaluate`` was asked: ``labels`` (with ``label_column``) or ``plant``."""

    labels: str | None = None
    label_column: str | None = None
    positive: str | None = None  # the label value that marks an anomaly, for non-0/1 labels
    labels_format: str | None = None  # delta, parquet, csv or table; None: from the path
    plant: float | None = None
    seed: int = 0
    top_k: int | None = None  # None: the number of positive rows
    baselines: bool = False
    max_rows: int = 200_000

    def check(self) -> None:
        """Refuse contradictory or incomplete options before any work."""
        if (self.labels is None) == (self.plant is None):
            raise EvaluateError("give either --labels PATH (with --label-column NAME) or --plant FRACTION")
        if self.plant is not None:
            if not 0 < self.plant < 0.5:
                raise EvaluateError(f"--plant is the fraction of rows to alter, in (0, 0.5); got {self.plant}")
            extra = [f for f, v in (("--label-column", self.label_column), ("--positive", self.positive),
                                    ("--labels-format", self.labels_format)) if v is not None]
            if extra:
                raise EvaluateError(f"{', '.join(extra)} only apply with --labels, not with --plant")
        elif not self.label_column:
            raise EvaluateError(f"--labels {self.labels} needs --label-column NAME: the column holding the labels")
        if self.labels_format is not None and self.labels_format not in LABEL_FORMATS:
            raise EvaluateError(f"--labels-format must be one of {', '.join(LABEL_FORMATS)}; got {self.labels_format}")
        if self.top_k is not None and self.top_k < 1:
            raise EvaluateError(f"--top-k must be at least 1; got {self.top_k}")
        if self.max_rows < 100:
            raise EvaluateError(f"--max-rows must be at least 100; got {self.max_rows}")


# ----------------------------------------------------------------------- metrics


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


# ------------------------------------------------------------------------- plots


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


# ---------------------------------------------------------------- the rows to evaluate


@dataclass(frozen=True)
class EvalSet:
    """Rows with a 0/1 label and embedlib's scores; ``features`` holds their raw columns when kept."""

    description: str
    labels: np.ndarray  # int8 [rows]
    scores: np.ndarray  # float64 [rows], nats
    contributions: np.ndarray  # float64 [rows, columns], nats
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


def _score(bundle: Bundle, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    scores, contributions = [], []
    for start in range(0, table.num_rows, _CHUNK):
        result = bundle.score(table.slice(start, _CHUNK))
        scores.append(result.score)
        contributions.append(result.contributions)
    return np.concatenate(scores), np.concatenate(contributions)


def planted_set(spark: SparkSession, cfg: Config, bundle: Bundle, opts: EvaluateOptions) -> EvalSet:
    """Planted anomalies in the held-out table ``score.source``, scored by ``bundle``."""
    from embedlib.score import check_source
    from embedlib.tables import read_source

    assert opts.plant is not None
    held_out = cfg.score.source
    if held_out is None:
        raise EvaluateError(
            "--plant evaluates on rows the model did not train on: set score.source to a held-out table "
            "with the same columns (e.g. --set score.source=data/adult/adult.test.gz)"
        )
    if held_out in (cfg.source.path, cfg.source.table):
        log.warning("score.source is the training source %s: the planted rows are not held out", held_out)
    df = read_source(spark, cfg.source.with_target(held_out))
    check_source(df, bundle, (), held_out)
    table, total = _collect(df.select(*_feature_columns(bundle)), opts.max_rows, opts.seed, held_out)
    planted, labels = plant_anomalies(
        table.to_pandas(), bundle.spec.columns, fraction=opts.plant, seed=opts.seed
    )
    features = pa.Table.from_pandas(planted, preserve_index=False)
    scores, contributions = _score(bundle, features)
    return EvalSet(
        description=(
            f"{int(labels.sum()):,} planted anomalies (--plant {opts.plant}, seed {opts.seed}) among "
            f"{len(labels):,} rows of {held_out}{_sampled(table, total)}"
        ),
        labels=labels,
        scores=scores,
        contributions=contributions,
        columns=bundle.spec.columns,
        features=features,
    )


def _read_labels(spark: SparkSession, path: str, fmt: str | None) -> DataFrame:
    from embedlib.tables import is_table_name, read_table

    if fmt is None:
        lower = path.lower()
        fmt = ("table" if is_table_name(path) else "csv" if lower.endswith((".csv", ".csv.gz"))
               else "parquet" if lower.endswith(".parquet") else "delta")
    if fmt == "table":
        return read_table(spark, path, catalog=True)
    if fmt == "csv":
        return read_table(spark, path, format="csv", options={"header": True, "inferSchema": True})
    return read_table(spark, path, format=fmt)


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


def labelled_set(spark: SparkSession, cfg: Config, bundle: Bundle, opts: EvaluateOptions) -> EvalSet:
    """The run's scores (this bundle's) joined to a labels table on ``columns.id``."""
    from pyspark.sql import functions as F

    from embedlib.tables import delta_version, read_source, read_table

    assert opts.labels is not None and opts.label_column is not None
    ids = list(cfg.columns.id)
    if not ids:
        raise EvaluateError(
            "--labels joins the labels table to the run's scores on the id columns, but the config declares "
            "none (columns.id is empty); set columns.id to the columns that identify a row (e.g. "
            "--set columns.id=[row_id]) and score again, or use --plant FRACTION instead"
        )
    scores_path = cfg.score.output or cfg.layout.scores
    if delta_version(spark, scores_path) is None:
        raise EvaluateError(f"no scores table at {scores_path}; run `embedlib score` with this config first")
    scores = read_table(spark, scores_path).where(F.col("bundle_id") == bundle.bundle_id)
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

    labels = _read_labels(spark, opts.labels, opts.labels_format)
    lacking = [c for c in [*ids, opts.label_column] if c not in labels.columns]
    if lacking:
        raise EvaluateError(
            f"the labels table {opts.labels} lacks column(s) {', '.join(lacking)}; its columns are "
            f"{', '.join(labels.columns)} (it needs the id column(s) {', '.join(ids)} and the label column)"
        )
    if opts.label_column in ids:
        raise EvaluateError(f"--label-column {opts.label_column} is one of the id columns; name the label column")
    y = _label_expression(labels, opts.label_column, opts.positive, opts.labels)
    labels = labels.select(*[F.col(f"`{c}`") for c in ids], y.alias("__label"))
    _check_unique(labels, ids, f"the labels table {opts.labels}", "give one label per row")
    unlabelled = labels.where(F.col("__label").isNull()).count()
    labels = labels.where(F.col("__label").isNotNull())

    columns = bundle.spec.columns
    joined = scores.join(labels, on=ids, how="inner")
    keep = [F.col("anomaly_score"), F.col("__label"),
            F.array(*[F.col("contributions").getItem(c) for c in columns]).alias("__contributions")]
    if opts.baselines:  # the raw columns of the scored rows, for the baselines
        source = read_source(spark, cfg.source.with_target(cfg.score.source)).select(*[F.col(f"`{c}`") for c in ids], *_feature_columns(bundle))
        joined = joined.join(source, on=ids, how="inner")
        keep += [F.col(f"`{c}`") for c in columns]
    table, total = _collect(joined.select(*keep), opts.max_rows, opts.seed, f"{scores_path} joined to {opts.labels}")
    flat = table.column("__contributions").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    note = f"; {unlabelled:,} label(s) were null and left out" if unlabelled else ""
    return EvalSet(
        description=(
            f"{total:,} rows of {scores_path} with a label in {opts.labels}{_sampled(table, total)}; "
            f"{scored_rows - total:,} scored rows had no label{note}"
        ),
        labels=table.column("__label").to_numpy().astype(np.int8),
        scores=table.column("anomaly_score").to_numpy().astype(np.float64),
        contributions=np.asarray(flat, dtype=np.float64).reshape(table.num_rows, len(columns)),
        columns=columns,
        features=table.select(list(columns)) if opts.baselines else None,
    )


# -------------------------------------------------------------------------- baselines


def training_rows(spark: SparkSession, cfg: Config, bundle: Bundle, *, max_rows: int = 200_000,
                  seed: int = 0) -> Encoded:
    """The run's source (a seeded sample of at most ``max_rows`` rows), encoded with the bundle."""
    from embedlib.tables import read_source

    df = read_source(spark, cfg.source).select(*_feature_columns(bundle))
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
    from embedlib.baselines import IsolationForestBaseline, fit_mse_autoencoder, mse_scores

    t, q = cfg.train, cfg.score.threshold_quantile
    mse = fit_mse_autoencoder(train, bundle.spec, epochs=t.epochs, batch_size=t.batch_size,
                              learning_rate=t.learning_rate, seed=t.seed)
    forest = IsolationForestBaseline(train, bundle.spec.cardinalities, seed=t.seed)
    return {
        "mse": (mse_scores(mse, test), float(np.quantile(mse_scores(mse, train), q))),
        "iforest": (forest.scores(test), float(np.quantile(forest.scores(train), q))),
    }


# --------------------------------------------------------------------------------- job


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

    def metrics(self, method: str) -> MethodMetrics:
        return next(m for m in self.methods if m.method == method)

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
    from embedlib.bundle import load_bundle
    from embedlib.layout import join, write_bytes_atomic, write_text_atomic

    opts.check()
    _require_extras()
    bundle = load_bundle(cfg.layout.bundle)
    data = planted_set(spark, cfg, bundle, opts) if opts.plant is not None else labelled_set(spark, cfg, bundle, opts)
    positives = int(data.labels.sum())
    top_k = opts.top_k or max(positives, 1)
    threshold = bundle.threshold if cfg.score.threshold is None else float(cfg.score.threshold)
    scores: dict[str, np.ndarray] = {"ours": data.scores}
    thresholds = {"ours": threshold}
    if opts.baselines:
        assert data.features is not None
        log.info("fitting the baselines on the run's source")
        train = training_rows(spark, cfg, bundle, max_rows=opts.max_rows, seed=opts.seed)
        for method, (s, t) in baseline_scores(train, bundle.encoder.arrays(data.features), bundle, cfg).items():
            scores[method], thresholds[method] = s, t
    methods = tuple(
        detection_metrics(m, data.labels, s, threshold=thresholds[m], top_k=top_k) for m, s in scores.items()
    )
    flagged = data.scores > threshold
    means = column_means(data.contributions, flagged, data.columns)
    figures = {
        "score_histogram": score_histogram(data.scores, data.labels, threshold),
        "roc": roc_figure(data.labels, scores),
        "precision_recall": precision_recall_figure(data.labels, scores),
        "contributions": contributions_figure(means, int(flagged.sum()), int((~flagged).sum())),
    }
    folder = cfg.layout.evaluation
    files = {"metrics": join(folder, "metrics.json")}
    for name, fig in figures.items():
        files[name] = join(folder, f"{name}.png")
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
