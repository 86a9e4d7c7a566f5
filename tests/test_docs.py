"""The README's tables point at tests: every test it names must exist."""

from __future__ import annotations

import ast
import re

from .conftest import ROOT


def test_every_test_the_readme_names_exists() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    named = set(re.findall(r"(tests/[\w/]+\.py)::(\w+)", readme))
    assert len(named) > 30  # the Reliability tables
    missing = []
    for path, name in sorted(named):
        file = ROOT / path
        tree = ast.parse(file.read_text(encoding="utf-8")) if file.exists() else ast.Module(body=[], type_ignores=[])
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        if name not in defined:
            missing.append(f"{path}::{name}")
    assert not missing, f"README names tests that do not exist: {missing}"


def _leaf_keys(cls: type, prefix: str = "") -> list[str]:
    import dataclasses

    keys = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            keys += _leaf_keys(type(default), f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def test_every_config_key_is_in_the_reference_and_base_yaml() -> None:
    import yaml

    from embedlib.core.config import Config

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    reference = readme.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in reference.splitlines() if line.startswith("| `")]
    base = yaml.safe_load((ROOT / "conf" / "base.yaml").read_text(encoding="utf-8"))
    keys = _leaf_keys(Config)
    assert len(keys) > 50
    undocumented, not_in_base = [], []
    for key in keys:
        section, _, leaf = key.rpartition(".")
        # a row names `section.leaf`, or `section.first` / `leaf` for several keys of a section
        if not any(f"`{key}`" in row or (section and f"`{section}." in row and f"`{leaf}`" in row) for row in rows):
            undocumented.append(key)
        node = base
        for part in key.split("."):
            node = node.get(part, KeyError) if isinstance(node, dict) else KeyError
        if node is KeyError:
            not_in_base.append(key)
    assert not undocumented, f"config keys missing from the README's configuration reference: {undocumented}"
    assert not not_in_base, f"config keys missing from conf/base.yaml: {not_in_base}"
