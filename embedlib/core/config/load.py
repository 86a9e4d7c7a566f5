"""Loading a :class:`~embedlib.core.config.Config`: YAML files, ``--set`` overrides, coercion, validation.

Unknown keys and values of the wrong type are errors that name the key and the
file (or ``--set``) that supplied it; a value of a secret-looking key is never shown.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from embedlib.core.config.schema import _SECRET_KEY, Config, ConfigError
from embedlib.core.config.validate import origin_of, validate
from embedlib.core.layout import check_path

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
    validate(cfg, origins)
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
        elif isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_update(into[key], value)  # a mapping where a string may also stand (score.source), in parts
            origins[path] = origin
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value
            origins[path] = origin


def _deep_update(into: dict[str, Any], data: Mapping[str, Any]) -> None:
    for key, value in data.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_update(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value


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
    if dataclasses.is_dataclass(hint):
        return f"a mapping of {', '.join(f.name for f in dataclasses.fields(hint))}"
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


def _coerce(value: Any, hint: Any, path: str, origins: Mapping[str, str]) -> Any:
    def bad() -> ConfigError:
        got = f"a {type(value).__name__} (value not shown)" if _SECRET_KEY.search(path) else repr(value)
        return ConfigError(
            f"{origin_of(path, origins)}: key '{path}' must be {_type_name(hint)}"
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
        structured = [o for o in typing.get_args(inner) if dataclasses.is_dataclass(o)]
        if structured and isinstance(value, Mapping):  # its own errors name the key inside it
            return _coerce(value, structured[0], path, origins)
        for option in typing.get_args(inner):
            if option is type(None):
                continue
            try:
                return _coerce(value, option, path, origins)
            except ConfigError:
                continue
        raise bad()
    if dataclasses.is_dataclass(inner):  # a mapping where a string may also stand (score.source)
        if not isinstance(value, Mapping):
            raise bad()
        known = {f.name for f in dataclasses.fields(inner)}
        unknown = sorted(str(k) for k in value if k not in known)
        if unknown:
            raise ConfigError(f"{origin_of(path, origins)}: unknown key '{path}.{unknown[0]}' (known keys "
                              f"here: {', '.join(f'{path}.{k}' for k in sorted(known))})")
        return _build(inner, value, f"{path}.", origins)
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
