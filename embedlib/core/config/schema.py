"""The configuration classes: frozen dataclasses, one per section, with their defaults.

Loaded by :mod:`embedlib.core.config.load`; the keys are a contract other tools drive: extend
them, never rename or drop them.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from embedlib.core.layout import RunLayout, is_catalog_table

__all__ = [
    "ColumnsConfig",
    "Config",
    "DeltaConfig",
    "DriftConfig",
    "ConfigError",
    "SourceConfig",
    "SparkConfig",
    "StreamConfig",
    "TrackingConfig",
    "VocabConfig",
    "OUTPUT_COLUMNS",
    "redact",
]


class ConfigError(ValueError):
    """A configuration key is unknown, has the wrong type, or an invalid value."""


SourceFormat = Literal["delta", "parquet", "csv"]
InfPolicy = Literal["error", "null"]
VocabEngine = Literal["auto", "spark", "arrow"]
ModelKind = Literal["masked", "autoencoder"]
NumericHead = Literal["unit", "gaussian", "mixture"]
ModelSize = Literal["auto", "small", "medium", "large"]
LrSchedule = Literal["plateau", "constant"]
RankBy = Literal["calibrated", "nats"]
Precision = Literal["fp32", "bf16"]  # embedlib.core.devices.PRECISIONS
ScoreDevice = Literal["auto", "cpu", "cuda"]  # embedlib.core.devices.DEVICES
ScoreDetail = Literal["flagged", "all", "none"]  # embedlib.core.output.DETAILS
#: ``score.passthrough`` / ``features.passthrough``: source columns an output keeps beside its own.
Passthrough = tuple[str, ...] | Literal["all"] | None
DeltaEngine = Literal["auto", "connector", "delta-rs"]


@dataclass(frozen=True)
class SparkConfig:
    """``spark``: the session. ``master: null`` leaves it to spark-submit / Databricks.

    ``remote`` (or pyspark's own ``SPARK_REMOTE`` environment variable) makes it a Spark Connect
    session: ``sc://host:15002`` reaches a server, ``local[N]`` starts a local one."""

    master: str | None = None
    conf: Mapping[str, str] = field(default_factory=dict)
    remote: str | None = None


@dataclass(frozen=True)
class SourceConfig:
    """``source``: a path (``format`` delta | parquet | csv) or a catalog ``table``.

    ``schema`` is an optional Spark DDL string (``"age INT, city STRING"``), needed
    for CSV files without a header line.
    """

    path: str | None = None
    table: str | None = None
    format: SourceFormat = "csv"
    options: Mapping[str, Any] = field(default_factory=dict)
    schema: str | None = None

    @property
    def name(self) -> str:
        """How messages name this source: the table name or the path."""
        return self.table if self.table is not None else str(self.path)

    def with_target(self, target: str | SourceConfig | None) -> SourceConfig:
        """This source read from ``target`` instead (``score.source``, ``features.source``):
        a source of its own (a mapping like ``source``: path or table, format, options, schema),
        or the shorthand string — a catalog table ``catalog.schema.table``, or a path in this
        source's format and options."""
        if target is None:
            return self
        if isinstance(target, SourceConfig):
            return target
        if is_catalog_table(target):
            return dataclasses.replace(self, path=None, table=target)
        return dataclasses.replace(self, path=target, table=None)


@dataclass(frozen=True)
class ColumnsConfig:
    """``columns``: which source columns are categorical, numeric, or pass-through ids.

    ``log1p`` lists numeric columns standardized after ``sign(x)·log1p(|x|)``
    (for heavy tails).
    """

    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    id: tuple[str, ...] = ()
    log1p: tuple[str, ...] = ()


@dataclass(frozen=True)
class VocabConfig:
    """``vocab``: how vocabularies are cut and how values are normalised.

    Values rarer than ``min_count`` and those beyond the ``max_size`` most frequent
    go to the out-of-vocabulary index. ``trim`` strips ASCII spaces and
    ``lowercase`` folds case before counting and before every lookup.
    ``inf_policy`` says what a ±inf numeric does: ``error`` (default) stops the
    job naming the column and the count, ``null`` treats it as missing.
    ``engine`` picks how the pass runs (see :func:`embedlib.spark.vocab.build_vocabulary`):
    ``auto`` reads Parquet/Delta files with Arrow on the executors, anything else
    with Spark rows.
    """

    min_count: int = 2
    max_size: int | None = None
    trim: bool = False
    lowercase: bool = False
    inf_policy: InfPolicy = "error"
    engine: VocabEngine = "auto"


Backend = Literal["local", "torch_distributor", "horovod", "auto"]


@dataclass(frozen=True)
class ModelConfig:
    """``model``: the model's kind and shape.

    ``kind``: ``masked`` (pseudo-likelihood: each cell predicted from the others,
    with ``masks`` mask groups at scoring, at most one per column — null: one per
    column; training hides
    cells at a per-row rate drawn from ``U(0, mask_rate)``) or ``autoencoder``
    (every cell visible, through the bottleneck). A categorical with ``n``
    embedding rows (vocabulary + null + OOV) gets ``min(max_embedding_dim,
    round(1.6 * n ** 0.56))`` dimensions unless ``embedding_dims`` names it.
    ``corruption`` is the fraction of inputs replaced during training
    (denoising); it is off at scoring.

    ``size`` sets ``hidden``, ``bottleneck`` and ``max_embedding_dim`` together
    (:data:`embedlib.core.train.sizing.SIZES`): ``small``, ``medium`` or ``large``, or
    ``auto`` (the default), which trains each size on a sample of the training
    rows (``search_rows``), as Spark tasks in parallel, each for at most
    ``search_steps`` optimizer steps (the first steps of the run it stands for: the
    same warm-up and schedule), and keeps the one with the lowest validation NLL at
    equal steps (the smaller of two within 1 %): the same choice on an idle or a
    busy machine. ``search_seconds`` is the search's clock guard, not its bound: a
    trial that reaches its share fails the run. Any of the three keys set
    explicitly wins over every size.

    A categorical with more than ``adaptive_above`` embedding rows gets an adaptive
    softmax head (:class:`embedlib.core.heads.AdaptiveHead`: exact nats at a fraction of
    a full softmax's cost); null: a full softmax for every column.

    ``numeric_head``: each standardized numeric's density (:mod:`embedlib.core.model`):
    ``gaussian`` learns each cell's mean and spread, ``mixture`` three weighted Gaussians,
    ``unit`` a unit-variance Gaussian around the prediction (the first versions').
    """

    max_embedding_dim: int | None = None
    embedding_dims: Mapping[str, int] = field(default_factory=dict)
    hidden: tuple[int, ...] | None = None
    bottleneck: int | None = None
    corruption: float = 0.1
    kind: ModelKind = "masked"
    masks: int | None = 8
    mask_rate: float = 0.5
    size: ModelSize = "auto"
    search_rows: int = 50_000
    search_steps: int = 4_000
    search_seconds: float = 3_600.0
    adaptive_above: int | None = 1_000
    numeric_head: NumericHead = "unit"

    @property
    def shape_set(self) -> bool:
        """Whether ``hidden``, ``bottleneck`` and ``max_embedding_dim`` are all set (nothing to choose)."""
        return None not in (self.hidden, self.bottleneck, self.max_embedding_dim)


@dataclass(frozen=True)
class TrainConfig:
    """``train``: where and how long the model trains.

    ``backend``: ``local`` (the driver), ``torch_distributor`` (DDP through
    ``pyspark.ml.torch.distributor.TorchDistributor``), ``horovod``
    (``horovod.spark.run``) or ``auto`` (the default): ``torch_distributor`` on
    Databricks (``DATABRICKS_RUNTIME_VERSION`` is set), ``local`` everywhere else
    — see :func:`embedlib.spark.train.resolve_backend`. ``local_mode`` (TorchDistributor
    only): ``auto`` trains on the driver when the master is local, on executors
    otherwise.

    How long (see :mod:`embedlib.core.train.loop`): training is sized in optimizer
    steps. ``lr_schedule: plateau`` warms the learning rate up, cuts it when the
    validation NLL has not improved by ``min_improvement`` (relative) for
    ``patience`` epochs, and stops at the plateau after two cuts (converged).
    ``max_steps`` (null: sized from the data) and ``epochs`` (null: no limit) cap
    a run; a capped run records that it did not converge. ``constant`` keeps the
    learning rate and stops at the first plateau.

    ``warm_start``: a bundle (or a run folder holding one) whose weights the model
    starts from, with its shape (:mod:`embedlib.core.train.warm`); the run's vocabulary
    must extend the bundle's (``embedlib vocab --update``).

    ``lazy_above``: an embedding table of more rows than this (default 50,000)
    trains with sparse gradients, its rows written only when a batch reads them
    and still taking the dense Adam's steps (:mod:`embedlib.core.train.lazy`: the
    same model, faster steps for a wide table); null: every table dense. CPU
    training only.

    ``max_restarts``: how many times a distributed run (``torch_distributor``,
    ``horovod``) is launched again after a worker died without reporting an error
    (killed, out of memory, its executor lost, a crash in native code); every
    launch resumes from the last checkpoint. A worker's Python error is not retried.

    ``use_gpu``: ``auto`` trains on CUDA where the workers see it; ``true`` without one is an error.
    ``precision: bf16``: each step's forward pass under bf16 autocast (:mod:`embedlib.core.devices`).
    """

    backend: Backend = "auto"
    num_workers: int = 2
    use_gpu: bool | Literal["auto"] = "auto"
    precision: Precision = "fp32"
    local_mode: bool | Literal["auto"] = "auto"
    epochs: int | None = None
    batch_size: int = 512
    learning_rate: float = 0.003
    seed: int = 0
    validation_fraction: float = 0.1
    patience: int = 3
    max_steps: int | None = None
    lr_schedule: LrSchedule = "plateau"
    min_improvement: float = 0.002
    max_rows: int | None = None
    sample_fraction: float | None = None
    shuffle_buffer: int = 100_000
    num_shards: int | None = None
    warm_start: str | None = None
    lazy_above: int | None = 50_000
    max_restarts: int = 1


@dataclass(frozen=True)
class StreamConfig:
    """``score.stream``: ``embedlib score --stream`` (Structured Streaming over ``score.source``).

    ``trigger``: ``availableNow`` scores what has arrived since the last run and stops (scheduled
    catch-up runs); an interval such as ``"30 seconds"`` runs a micro-batch that often until the
    process is stopped. ``checkpoint``: the query's checkpoint (null: under the run's ``_work``
    folder, one per source and output). ``max_files_per_trigger``: new files (Delta: data files)
    taken into one micro-batch at most (null: all).
    """

    trigger: str = "availableNow"
    checkpoint: str | None = None
    max_files_per_trigger: int | None = None


@dataclass(frozen=True)
class ScoreConfig:
    """``score``: scoring runs, and the threshold the bundle stores.

    ``rank_by``: ``calibrated`` ranks and flags rows by the calibrated score
    (each column's nats turned into how rare they are on normal rows, summed) —
    ``nats`` by the raw negative log-likelihood. Both are written either way.

    ``mode``: ``append``, ``overwrite``, or ``merge`` (an upsert on ``columns.id``: the latest score
    of each entity). ``detail``: which rows carry ``contributions``, ``calibrated_contributions`` and
    ``reasons`` — ``flagged`` (the rows with ``is_anomaly``; nulls elsewhere), ``all``, ``none``;
    every row is scored in full whatever the detail. ``device``: where each worker runs the model
    (``auto``: CUDA where present; :mod:`embedlib.core.devices`).
    """

    source: str | SourceConfig | None = None
    output: str | None = None
    passthrough: Passthrough = None
    model: str | None = None
    mode: Literal["append", "overwrite", "merge"] = "append"
    run_id: str | None = None
    threshold_quantile: float = 0.99
    threshold: float | None = None
    top_reasons: int = 3
    emit_code: bool = False
    batch_size: int = 10_000
    rank_by: RankBy = "calibrated"
    device: ScoreDevice = "auto"
    detail: ScoreDetail = "flagged"
    stream: StreamConfig = field(default_factory=StreamConfig)


@dataclass(frozen=True)
class FeaturesConfig:
    """``features``: the design matrix (embeddings + standardized numerics + missing flags)."""

    source: str | SourceConfig | None = None
    output: str | None = None
    passthrough: Passthrough = None
    flatten: bool = False


@dataclass(frozen=True)
class TrackingConfig:
    """``tracking``: MLflow (``pip install 'embedlib[mlflow]'``), off by default.

    With ``mlflow: true`` training logs its parameters, per-epoch metrics and the bundle (an MLflow
    model), scoring its run summary. ``tracking_uri: null``: ``MLFLOW_TRACKING_URI``, the workspace on
    Databricks, else ``./mlruns``; ``experiment: null``: ``embedlib-<name>`` (``/Shared/…`` on
    Databricks). ``registered_model``: register each trained bundle as a new version of this model.
    """

    mlflow: bool = False
    tracking_uri: str | None = None
    experiment: str | None = None
    registered_model: str | None = None


@dataclass(frozen=True)
class DriftConfig:
    """``drift``: ``embedlib drift`` (:mod:`embedlib.core.drift`). ``psi_alert``: a column whose population
    stability index in the newest scoring run exceeds it makes the command exit with code 3."""

    psi_alert: float = 0.25


@dataclass(frozen=True)
class DeltaConfig:
    """``delta``: which engine reads and writes Delta tables (see :mod:`embedlib.spark.tables`).

    ``engine``: ``connector`` (the Spark Delta connector: Databricks, ``spark-submit
    --packages``, or the jars ``make setup`` fetched), ``delta-rs`` (the ``deltalake``
    package: Spark writes Parquet, the driver commits), or ``auto`` (the connector when
    the session has it, else delta-rs). ``jars``: a folder of connector jars that
    sessions embedlib starts itself load (null: ``$EMBEDLIB_JARS``, else
    ``~/.cache/embedlib/jars``, where ``make setup`` puts them); a session made by
    ``spark-submit`` or Databricks keeps what its launcher gave it.
    """

    engine: DeltaEngine = "auto"
    jars: str | None = None


@dataclass(frozen=True)
class Config:
    """The whole configuration of a run; every job reads the part it needs.

    ``output_schema`` (``catalog.schema``) makes the run's tables — vocab,
    embeddings, features, scores, score_runs — catalog tables
    ``<output_schema>.<name>_<table>``; the bundle and scratch files stay under
    ``output_dir``.
    """

    name: str = "embedlib"
    output_dir: str = "output"
    output_schema: str | None = None
    spark: SparkConfig = field(default_factory=SparkConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    delta: DeltaConfig = field(default_factory=DeltaConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)

    @functools.cached_property
    def layout(self) -> RunLayout:
        """Every path (or catalog table) this run reads or writes, derived from
        ``output_dir``/``name`` and ``output_schema`` once per configuration and handed down with it."""
        return RunLayout(self.output_dir, self.name, self.output_schema)

    @property
    def uses_s3a(self) -> bool:
        """Whether a path of this run is on S3 through Hadoop (``s3a://``, ``s3://``): the session
        then needs ``hadoop-aws``."""
        sources = (self.score.source, self.features.source)
        paths = (self.output_dir, self.source.path, self.score.output, self.features.output,
                 *[s.path if isinstance(s, SourceConfig) else s for s in sources])
        return any(str(p).startswith(("s3a://", "s3://")) for p in paths if p)

    @property
    def feature_columns(self) -> tuple[str, ...]:
        return self.columns.categorical + self.columns.numeric

    @property
    def scores_output(self) -> str:
        """Where ``embedlib score`` writes: ``score.output``, else the run's ``scores`` table."""
        return self.score.output or self.layout.scores

    @property
    def features_output(self) -> str:
        """Where ``embedlib features`` writes: ``features.output``, else the run's ``features`` table."""
        return self.features.output or self.layout.features


#: Keys whose values are never shown in logs, errors or tracking.
_SECRET_KEY = re.compile(r"(key|secret|token|password|passwd|credential|sas|auth)", re.I)

#: Columns the score and features jobs write themselves; an id column may not take these names.
OUTPUT_COLUMNS = frozenset({"anomaly_score", "is_anomaly", "contributions", "reasons", "code", "bundle_id",
                            "calibrated_score", "calibrated_contributions", "run_id", "scored_at"})


def redact(conf: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a Spark/options mapping with every secret-looking value replaced."""
    return {k: ("***" if _SECRET_KEY.search(k) else v) for k, v in conf.items()}
