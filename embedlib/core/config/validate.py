"""Validation of a loaded configuration: every rule across keys, each error naming its key and
where the value came from (a file, ``--set`` or the defaults)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from embedlib.core.config.schema import OUTPUT_COLUMNS, Config, ConfigError, SourceConfig
from embedlib.core.layout import (
    check_path,
    is_catalog_schema,
    is_catalog_table,
    is_table_name,
    looks_like_table_name,
)

__all__ = ["TRIGGER_INTERVAL", "origin_of", "validate"]

#: A processing-time trigger as Spark reads it: a number and a unit.
TRIGGER_INTERVAL = re.compile(r"\d+(\.\d+)? *(milliseconds?|ms|seconds?|s|minutes?|min|hours?|h)")


def origin_of(path: str, origins: Mapping[str, str]) -> str:
    while path:
        if path in origins:
            return origins[path]
        path = path.rpartition(".")[0]
    return "defaults"


def validate(cfg: Config, origins: Mapping[str, str]) -> None:
    def err(key: str, msg: str) -> ConfigError:
        return ConfigError(f"{origin_of(key, origins)}: key '{key}' {msg}")

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", cfg.name) or ".." in cfg.name:
        raise err("name", f"must be a plain name of letters, digits, '_', '-', '.', got {cfg.name!r}")
    check_path(cfg.output_dir, what="key 'output_dir'")
    src = cfg.source
    _check_source(src, "source", err)
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
    if m.max_embedding_dim is not None and m.max_embedding_dim < 1:
        raise err("model.max_embedding_dim", f"must be at least 1, got {m.max_embedding_dim}")
    for col, dim in m.embedding_dims.items():
        if col not in cfg.columns.categorical:
            raise err("model.embedding_dims", f"names '{col}', which is not in columns.categorical")
        if dim < 1:
            raise err(f"model.embedding_dims.{col}", f"must be at least 1, got {dim}")
    if m.hidden is not None and (not m.hidden or any(h < 1 for h in m.hidden)):
        raise err("model.hidden", f"must be a non-empty list of positive sizes (or null: from model.size), "
                  f"got {list(m.hidden)}")
    if m.bottleneck is not None and m.bottleneck < 1:
        raise err("model.bottleneck", f"must be at least 1, got {m.bottleneck}")
    if not 0.0 <= m.corruption < 1.0:
        raise err("model.corruption", f"must be in [0, 1), got {m.corruption}")
    for key in ("num_workers", "epochs", "batch_size", "shuffle_buffer"):
        if getattr(t, key) is not None and getattr(t, key) < 1:
            raise err(f"train.{key}", f"must be at least 1, got {getattr(t, key)}")
    if t.max_steps is not None and t.max_steps < 0:
        raise err("train.max_steps", f"must be 0 (no step budget), a positive count, or null (sized from the "
                  f"data), got {t.max_steps}")
    if t.max_steps == 0 and t.epochs is None and t.patience == 0:
        raise err("train.max_steps", "is 0 (no step budget) while train.epochs is null and train.patience is 0: "
                  "nothing would stop training; set one of them")
    if not 0.0 <= t.min_improvement < 1.0:
        raise err("train.min_improvement", f"must be in [0, 1), got {t.min_improvement}")
    if m.masks is not None and m.masks < 1:
        raise err("model.masks", f"must be at least 1 or null (one mask per column), got {m.masks}")
    if m.search_rows < 1:
        raise err("model.search_rows", f"must be at least 1, got {m.search_rows}")
    if m.search_steps < 1:
        raise err("model.search_steps", f"must be at least 1, got {m.search_steps}")
    if not m.search_seconds > 0:
        raise err("model.search_seconds", f"must be positive, got {m.search_seconds}")
    if not 0.0 < m.mask_rate <= 1.0:
        raise err("model.mask_rate", f"must be in (0, 1], got {m.mask_rate}")
    if m.adaptive_above is not None and m.adaptive_above < 257:
        raise err("model.adaptive_above", f"must be at least 257 (an adaptive head keeps the 256 most frequent "
                  f"values in its head) or null (a full softmax for every column), got {m.adaptive_above}")
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
    if t.max_restarts < 0:
        raise err("train.max_restarts", f"must be 0 (no restart) or more, got {t.max_restarts}")
    if t.lazy_above is not None and t.lazy_above < 1:
        raise err("train.lazy_above", f"must be at least 1 (embedding rows) or null (every table dense), got {t.lazy_above}")
    if t.num_shards is not None and t.num_shards < 1:
        raise err("train.num_shards", f"must be at least 1, got {t.num_shards}")
    if not 0.0 < sc.threshold_quantile < 1.0:
        raise err("score.threshold_quantile", f"must be in (0, 1), got {sc.threshold_quantile}")
    if sc.top_reasons < 0:
        raise err("score.top_reasons", f"must be 0 or more, got {sc.top_reasons}")
    if sc.batch_size < 1:
        raise err("score.batch_size", f"must be at least 1, got {sc.batch_size}")
    if cfg.tracking.registered_model is not None and not cfg.tracking.mlflow:
        raise err("tracking.registered_model", "registers the MLflow model training logs, but tracking.mlflow is "
                  "false: set tracking.mlflow: true, or unset tracking.registered_model")
    if sc.mode == "merge" and not cfg.columns.id:
        raise err("score.mode", "is merge, which keeps the latest score of each row by its id columns, but "
                  "columns.id is empty: declare the columns that identify a row (columns.id), or use append")
    if sc.stream.trigger != "availableNow" and not TRIGGER_INTERVAL.fullmatch(sc.stream.trigger):
        raise err("score.stream.trigger", f"must be availableNow or an interval such as '30 seconds' or "
                  f"'5 minutes', got {sc.stream.trigger!r}")
    if cfg.drift.psi_alert <= 0:
        raise err("drift.psi_alert", f"must be above 0, got {cfg.drift.psi_alert}")
    if sc.stream.max_files_per_trigger is not None and sc.stream.max_files_per_trigger < 1:
        raise err("score.stream.max_files_per_trigger", f"must be at least 1 or null, got {sc.stream.max_files_per_trigger}")
    if sc.stream.checkpoint is not None:
        check_path(sc.stream.checkpoint, what="key 'score.stream.checkpoint'")
    for section, obj in (("score", sc), ("features", cfg.features)):
        for key in ("source", "output"):
            value = getattr(obj, key)
            if value is None:
                continue
            if isinstance(value, SourceConfig):
                _check_source(value, f"{section}.{key}", err)
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


def _check_source(src: SourceConfig, key: str, err: Any) -> None:
    """``source`` (or a mapping given for ``score.source``/``features.source``) names one thing."""
    if (src.path is None) == (src.table is None):
        raise err(key, "needs exactly one of 'path' or 'table'")
    if src.path is not None:
        check_path(src.path, what=f"key '{key}.path'")
    if src.table is not None and not is_table_name(src.table):
        raise err(f"{key}.table", f"must be a table name like catalog.schema.name, got {src.table!r}")


def _same_path(a: str, b: str) -> bool:
    from embedlib.core.layout import has_scheme

    def norm(p: str) -> str:
        return (p if has_scheme(p) or looks_like_table_name(p) else os.path.abspath(p)).rstrip("/")

    return norm(a) == norm(b)
