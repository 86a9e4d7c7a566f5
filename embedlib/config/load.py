"""Loading a :class:`~embedlib.config.Config`: YAML files, ``--set`` overrides, coercion, validation.

Unknown keys and values of the wrong type are errors that name the key and the
file (or ``--set``) that supplied it; a value of a secret-looking key is never shown.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from embedlib.config.schema import _SECRET_KEY, OUTPUT_COLUMNS, Config, ConfigError
from embedlib.layout import (
    check_path,
    is_catalog_schema,
    is_catalog_table,
    is_table_name,
    looks_like_table_name,
)

__all__ = ["load_config"]


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
    if src.table is not None and not is_table_name(src.table):
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
    if not m.search_seconds > 0:
        raise err("model.search_seconds", f"must be positive, got {m.search_seconds}")
    if not 0.0 < m.mask_rate <= 1.0:
        raise err("model.mask_rate", f"must be in (0, 1], got {m.mask_rate}")
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
