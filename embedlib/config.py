"""Job configuration: frozen dataclasses loaded from YAML in one place.

A configuration is assembled from, in order of precedence (later wins):

1. the defaults embedded in the dataclasses below,
2. each ``--conf FILE`` in the order given,
3. each ``--set key.path=value`` (the value is parsed as YAML, so
   ``--set train.epochs=5`` is an int and ``--set columns.id=[row_id]`` a list).

Unknown keys and values of the wrong type are errors that name the key and the
file (or ``--set``) that supplied it. Mappings (``spark.conf``,
``source.options``) merge key by key across files; every other value is replaced.

The keys are a contract other tools drive: extend them, never rename or drop them.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from embedlib.layout import RunLayout, check_path, is_catalog_schema, is_catalog_table, looks_like_table_name

__all__ = [
    "ColumnsConfig",
    "Config",
    "ConfigError",
    "SourceConfig",
    "SparkConfig",
    "TrackingConfig",
    "VocabConfig",
    "load_config",
    "redact",
]


class ConfigError(ValueError):
    """A configuration key is unknown, has the wrong type, or an invalid value."""


SourceFormat = Literal["delta", "parquet", "csv"]
InfPolicy = Literal["error", "null"]
VocabEngine = Literal["auto", "spark", "arrow"]


@dataclass(frozen=True)
class SparkConfig:
    """``spark``: the session. ``master: null`` leaves it to spark-submit / Databricks."""

    master: str | None = None
    conf: Mapping[str, str] = field(default_factory=dict)


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

    def with_target(self, target: str | None) -> SourceConfig:
        """This source read from ``target`` instead (``score.source``, ``features.source``):
        a catalog table ``catalog.schema.table``, or a path in the same format and options."""
        if target is None:
            return self
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
    ``engine`` picks how the pass runs (see :func:`embedlib.vocab.build_vocabulary`):
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
    """``model``: the embedding autoencoder's shape.

    A categorical with ``n`` embedding rows (vocabulary + null + OOV) gets
    ``min(max_embedding_dim, round(1.6 * n ** 0.56))`` dimensions unless
    ``embedding_dims`` names it. ``corruption`` is the fraction of inputs replaced
    during training (denoising); it is off at scoring.
    """

    max_embedding_dim: int = 32
    embedding_dims: Mapping[str, int] = field(default_factory=dict)
    hidden: tuple[int, ...] = (64, 32)
    bottleneck: int = 8
    corruption: float = 0.1


@dataclass(frozen=True)
class TrainConfig:
    """``train``: where and how long the model trains.

    ``backend``: ``local`` (the driver), ``torch_distributor`` (DDP through
    ``pyspark.ml.torch.distributor.TorchDistributor``), ``horovod``
    (``horovod.spark.run``) or ``auto`` (the default): ``torch_distributor`` on
    Databricks (``DATABRICKS_RUNTIME_VERSION`` is set), ``local`` everywhere else
    — see :func:`embedlib.train.resolve_backend`. ``local_mode`` (TorchDistributor
    only): ``auto`` trains on the driver when the master is local, on executors
    otherwise.
    """

    backend: Backend = "auto"
    num_workers: int = 2
    use_gpu: bool | Literal["auto"] = "auto"
    local_mode: bool | Literal["auto"] = "auto"
    epochs: int = 20
    batch_size: int = 512
    learning_rate: float = 0.001
    seed: int = 0
    validation_fraction: float = 0.1
    patience: int = 3
    max_rows: int | None = None
    sample_fraction: float | None = None
    shuffle_buffer: int = 100_000
    num_shards: int | None = None


@dataclass(frozen=True)
class ScoreConfig:
    """``score``: scoring runs, and the threshold the bundle stores."""

    source: str | None = None
    output: str | None = None
    mode: Literal["append", "overwrite"] = "append"
    run_id: str | None = None
    threshold_quantile: float = 0.99
    threshold: float | None = None
    top_reasons: int = 3
    emit_code: bool = False
    batch_size: int = 10_000


@dataclass(frozen=True)
class FeaturesConfig:
    """``features``: the design matrix (embeddings + standardized numerics + missing flags)."""

    source: str | None = None
    output: str | None = None
    flatten: bool = False


@dataclass(frozen=True)
class TrackingConfig:
    """``tracking``: MLflow (``pip install 'embedlib[mlflow]'``), off by default.

    With ``mlflow: true`` training logs its parameters, per-epoch metrics and the
    bundle, and scoring its run summary. ``tracking_uri: null`` keeps MLflow's own
    setting (``MLFLOW_TRACKING_URI``, or the workspace on Databricks) and otherwise
    uses a ``./mlruns`` file store; ``experiment: null`` is ``embedlib-<name>``
    (``/Shared/embedlib-<name>`` on Databricks).
    """

    mlflow: bool = False
    tracking_uri: str | None = None
    experiment: str | None = None


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

    @property
    def layout(self) -> RunLayout:
        """Every path (or catalog table) this run reads or writes, derived from
        ``output_dir``/``name`` and ``output_schema``."""
        return RunLayout(self.output_dir, self.name, self.output_schema)

    @property
    def feature_columns(self) -> tuple[str, ...]:
        return self.columns.categorical + self.columns.numeric


# --------------------------------------------------------------------------- loading

_SET_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_.\-]+)*)=(.*)$", re.S)


def load_config(
    conf_files: Sequence[str | Path] = (),
    overrides: Sequence[str] = (),
) -> Config:
    """Build a :class:`Config` from YAML files and ``key.path=value`` overrides."""
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for conf in conf_files:
        data = _read_yaml(Path(conf))
        _merge(merged, data, origins, str(conf), Config, "")
    for item in overrides:
        match = _SET_RE.match(item)
        if match is None:
            raise ConfigError(
                f"--set {item!r}: expected key.path=value, for example --set train.epochs=5"
            )
        key, raw = match.group(1), match.group(2)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            if _SECRET_KEY.search(key):  # the parser's message quotes the value
                raise ConfigError(f"--set {key}: the value is not valid YAML (not shown); quote it") from None
            raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML ({exc})") from exc
        nested: Any = value
        for part in reversed(_split_key(key)):
            nested = {part: nested}
        _merge(merged, nested, origins, "--set", Config, "")
    cfg = _build(Config, merged, "", origins)
    _validate(cfg, origins)
    return cfg


def _split_key(key: str) -> list[str]:
    """Split ``a.b.c`` — but keep a mapping key such as ``spark.conf.spark.x.y`` whole."""
    parts = key.split(".")
    out: list[str] = []
    cls: Any = Config
    i = 0
    while i < len(parts):
        part = parts[i]
        out.append(part)
        i += 1
        if cls is None or not dataclasses.is_dataclass(cls):
            continue
        hints = typing.get_type_hints(cls)
        hint = hints.get(part)
        if hint is None:
            cls = None
            continue
        if _is_mapping(hint) and i < len(parts):
            out.append(".".join(parts[i:]))
            break
        cls = _strip_optional(hint) if dataclasses.is_dataclass(_strip_optional(hint)) else None
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    check_path(str(path), what="config file")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of keys")
    return data


def _merge(
    into: dict[str, Any],
    data: Mapping[str, Any],
    origins: dict[str, str],
    origin: str,
    cls: Any,
    prefix: str,
) -> None:
    """Deep-merge ``data`` into ``into``, rejecting keys that ``cls`` does not have."""
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        path = f"{prefix}{key}"
        if not isinstance(key, str) or key not in hints:
            known = ", ".join(sorted(prefix + k for k in hints))
            raise ConfigError(f"{origin}: unknown key '{path}' (known keys here: {known})")
        hint = _strip_optional(hints[key])
        if dataclasses.is_dataclass(hint):
            if value is None:
                raise ConfigError(f"{origin}: key '{path}' must be a mapping, not null")
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"{origin}: key '{path}' must be a mapping, got {type(value).__name__}"
                )
            child = into.setdefault(key, {})
            _merge(child, value, origins, origin, hint, f"{path}.")
        elif _is_mapping(hints[key]) and isinstance(value, Mapping):
            child = into.setdefault(key, {})
            if not isinstance(child, dict):
                child = into[key] = {}
            child.update(value)
            origins[path] = origin
        else:
            into[key] = value
            origins[path] = origin


def _strip_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _is_mapping(hint: Any) -> bool:
    origin = typing.get_origin(_strip_optional(hint))
    return origin in (Mapping, dict)


def _type_name(hint: Any) -> str:
    hint = _strip_optional(hint)
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint) if a is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    if origin in (Mapping, dict):
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def _build(cls: Any, data: Mapping[str, Any], prefix: str, origins: Mapping[str, str]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        path = f"{prefix}{f.name}"
        hint = hints[f.name]
        inner = _strip_optional(hint)
        if dataclasses.is_dataclass(inner):
            kwargs[f.name] = _build(inner, data[f.name], f"{path}.", origins)
        else:
            kwargs[f.name] = _coerce(data[f.name], hint, path, origins)
    return cls(**kwargs)


def _origin_of(path: str, origins: Mapping[str, str]) -> str:
    while path:
        if path in origins:
            return origins[path]
        path = path.rpartition(".")[0]
    return "defaults"


def _coerce(value: Any, hint: Any, path: str, origins: Mapping[str, str]) -> Any:
    def bad() -> ConfigError:
        got = f"a {type(value).__name__} (value not shown)" if _SECRET_KEY.search(path) else repr(value)
        return ConfigError(
            f"{_origin_of(path, origins)}: key '{path}' must be {_type_name(hint)}"
            f"{' or null' if _is_optional(hint) else ''}, got {got}"
        )

    inner = _strip_optional(hint)
    if value is None and typing.get_origin(inner) is Literal and "null" in typing.get_args(inner):
        value = "null"  # YAML reads a bare `null` as None; here it is the policy's name
    if value is None:
        if _is_optional(hint):
            return None
        raise bad()
    if typing.get_origin(inner) in (Union, types.UnionType):
        for option in typing.get_args(inner):
            if option is type(None):
                continue
            try:
                return _coerce(value, option, path, origins)
            except ConfigError:
                continue
        raise bad()
    origin = typing.get_origin(inner)
    if origin is Literal:
        if value not in typing.get_args(inner):
            raise bad()
        return value
    if origin is tuple:
        item = typing.get_args(inner)[0]
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise bad()
        return tuple(_coerce(v, item, f"{path}[{i}]", origins) for i, v in enumerate(value))
    if origin in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise bad()
        key_t, val_t = typing.get_args(inner)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise bad()
            if val_t is str and isinstance(v, (bool, int, float)):
                v = str(v).lower() if isinstance(v, bool) else str(v)
            out[k] = v if val_t is Any else _coerce(v, val_t, f"{path}.{k}", origins)
        return out
    if inner is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if inner is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if inner is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        return float(value)
    if inner is str:
        if not isinstance(value, str):
            raise bad()
        return value
    raise TypeError(f"config type {inner!r} of '{path}' has no coercion rule")  # pragma: no cover


def _is_optional(hint: Any) -> bool:
    return typing.get_origin(hint) in (Union, types.UnionType) and type(None) in typing.get_args(
        hint
    )


# ------------------------------------------------------------------------ validation


def _validate(cfg: Config, origins: Mapping[str, str]) -> None:
    def err(key: str, msg: str) -> ConfigError:
        return ConfigError(f"{_origin_of(key, origins)}: key '{key}' {msg}")

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", cfg.name) or ".." in cfg.name:
        raise err("name", f"must be a plain name of letters, digits, '_', '-', '.', got {cfg.name!r}")
    check_path(cfg.output_dir, what="key 'output_dir'")
    src = cfg.source
    if (src.path is None) == (src.table is None):
        raise err("source", "needs exactly one of 'path' or 'table'")
    if src.path is not None:
        check_path(src.path, what="key 'source.path'")
    if src.table is not None and not re.fullmatch(r"[A-Za-z0-9_`]+(\.[A-Za-z0-9_`]+){0,2}", src.table):
        raise err("source.table", f"must be a table name like catalog.schema.name, got {src.table!r}")
    if cfg.vocab.min_count < 1:
        raise err("vocab.min_count", f"must be at least 1, got {cfg.vocab.min_count}")
    if cfg.vocab.max_size is not None and cfg.vocab.max_size < 1:
        raise err("vocab.max_size", f"must be at least 1 or null, got {cfg.vocab.max_size}")

    cols = cfg.columns
    seen: dict[str, str] = {}
    for kind in ("categorical", "numeric"):
        for name in getattr(cols, kind):
            if not name:
                raise err(f"columns.{kind}", "contains an empty column name")
            if name in seen:
                where = "twice in" if seen[name] == kind else f"in both columns.{seen[name]} and"
                raise err(f"columns.{kind}", f"declares column '{name}' {where} columns.{kind}")
            seen[name] = kind
    if len(set(cols.id)) != len(cols.id):
        raise err("columns.id", f"declares a column twice: {list(cols.id)}")
    for name in cols.id:
        if name in seen:
            raise err(
                "columns.id",
                f"names '{name}', which is also in columns.{seen[name]}; an id column is passed through "
                "unchanged to every output, a feature is encoded — declare it in one of the two",
            )
        if name in OUTPUT_COLUMNS:
            raise err("columns.id", f"names '{name}', a column embedlib writes itself; rename it in the source")
    if cfg.vocab.engine == "arrow" and (src.table is not None or src.format == "csv"):
        what = "source.table" if src.table is not None else "source.format=csv"
        raise err("vocab.engine", f"is 'arrow', which reads Parquet/Delta files, but {what} is set; "
                  "use vocab.engine=auto or spark")
    for name in cols.log1p:
        if name not in cols.numeric:
            raise err("columns.log1p", f"names '{name}', which is not in columns.numeric")
    _validate_training(cfg, err)


def _validate_training(cfg: Config, err: Any) -> None:
    m, t, sc = cfg.model, cfg.train, cfg.score
    if m.max_embedding_dim < 1:
        raise err("model.max_embedding_dim", f"must be at least 1, got {m.max_embedding_dim}")
    for col, dim in m.embedding_dims.items():
        if col not in cfg.columns.categorical:
            raise err("model.embedding_dims", f"names '{col}', which is not in columns.categorical")
        if dim < 1:
            raise err(f"model.embedding_dims.{col}", f"must be at least 1, got {dim}")
    if not m.hidden or any(h < 1 for h in m.hidden):
        raise err("model.hidden", f"must be a non-empty list of positive sizes, got {list(m.hidden)}")
    if m.bottleneck < 1:
        raise err("model.bottleneck", f"must be at least 1, got {m.bottleneck}")
    if not 0.0 <= m.corruption < 1.0:
        raise err("model.corruption", f"must be in [0, 1), got {m.corruption}")
    for key in ("num_workers", "epochs", "batch_size", "shuffle_buffer"):
        if getattr(t, key) < 1:
            raise err(f"train.{key}", f"must be at least 1, got {getattr(t, key)}")
    if t.learning_rate <= 0:
        raise err("train.learning_rate", f"must be positive, got {t.learning_rate}")
    if not 0.0 < t.validation_fraction < 1.0:
        raise err("train.validation_fraction", f"must be in (0, 1), got {t.validation_fraction}")
    if t.patience < 0:
        raise err("train.patience", f"must be 0 or more, got {t.patience}")
    if t.max_rows is not None and t.sample_fraction is not None:
        raise err("train.max_rows", "and train.sample_fraction are both set; choose one")
    if t.max_rows is not None and t.max_rows < 1:
        raise err("train.max_rows", f"must be at least 1, got {t.max_rows}")
    if t.sample_fraction is not None and not 0.0 < t.sample_fraction <= 1.0:
        raise err("train.sample_fraction", f"must be in (0, 1], got {t.sample_fraction}")
    if t.num_shards is not None and t.num_shards < 1:
        raise err("train.num_shards", f"must be at least 1, got {t.num_shards}")
    if not 0.0 < sc.threshold_quantile < 1.0:
        raise err("score.threshold_quantile", f"must be in (0, 1), got {sc.threshold_quantile}")
    if sc.top_reasons < 0:
        raise err("score.top_reasons", f"must be 0 or more, got {sc.top_reasons}")
    if sc.batch_size < 1:
        raise err("score.batch_size", f"must be at least 1, got {sc.batch_size}")
    for section, obj in (("score", sc), ("features", cfg.features)):
        for key in ("source", "output"):
            value = getattr(obj, key)
            if value is None:
                continue
            if looks_like_table_name(value):
                if not is_catalog_table(value):
                    raise err(f"{section}.{key}", f"must be a path or a catalog table catalog.schema.table "
                              f"(names of letters, digits and '_'), got {value!r}; write a relative path "
                              f"with dots as ./{value}")
            else:
                check_path(value, what=f"key '{section}.{key}'")
    if cfg.output_schema is not None and not is_catalog_schema(cfg.output_schema):
        raise err("output_schema", "must be catalog.schema (two names of letters, digits and '_'), "
                  f"got {cfg.output_schema!r}")
    outputs = [(k, v) for k, v in (("score.output", sc.output), ("features.output", cfg.features.output)) if v]
    run_tables = {"vocab": cfg.layout.vocab, "embeddings": cfg.layout.embeddings,
                  "score_runs": cfg.layout.score_runs}
    for key, value in outputs:
        for other_key, other in outputs + list(run_tables.items()):
            if other_key != key and _same_path(value, other):
                raise err(key, f"is the same table as {other_key} ({value}); give each output its own path")


def _same_path(a: str, b: str) -> bool:
    from embedlib.layout import has_scheme

    def norm(p: str) -> str:
        return (p if has_scheme(p) or looks_like_table_name(p) else os.path.abspath(p)).rstrip("/")

    return norm(a) == norm(b)


_SECRET_KEY = re.compile(r"(key|secret|token|password|passwd|credential|sas|auth)", re.I)

#: Columns the score and features jobs write themselves; an id column may not take these names.
OUTPUT_COLUMNS = frozenset({"anomaly_score", "is_anomaly", "contributions", "reasons", "code", "bundle_id"})


def redact(conf: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a Spark/options mapping with every secret-looking value replaced."""
    return {k: ("***" if _SECRET_KEY.search(k) else v) for k, v in conf.items()}
