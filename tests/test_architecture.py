"""The package map in the README is true: every module is on it, the import rules hold, no cycles."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from .conftest import ROOT

PACKAGE = ROOT / "embedlib"

#: module → third-party packages it must not pull in when imported (the README's map says why).
FORBIDDEN = {
    "embedlib.indices": ("torch", "pyspark", "pyarrow", "numpy"),
    "embedlib.model": ("pyspark", "pyarrow"),
    "embedlib.heads": ("pyspark", "pyarrow"),
    "embedlib.bundle": ("pyspark",),
    "embedlib.inference": ("pyspark",),
    "embedlib.inmemory": ("torch", "pyspark"),
    "embedlib.vocab.model": ("torch", "pyspark"),
    "embedlib.vocab": ("torch", "pyspark"),
    "embedlib.tables": ("torch", "pyspark"),
    "embedlib.config": ("torch", "pyspark", "pyarrow"),
    "embedlib.layout": ("torch", "pyspark", "pyarrow"),
    "embedlib.encode": ("torch", "pyspark"),
    "embedlib.runs": ("torch", "pyspark"),
}


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = ast.parse(path.read_text(encoding="utf-8"))
    return out


def _top_level_imports(tree: ast.Module) -> set[str]:
    """embedlib modules imported when the module is imported (not under TYPE_CHECKING, not in functions)."""
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else []:
            if isinstance(sub, ast.ImportFrom) and sub.module and sub.module.startswith("embedlib"):
                found.add(sub.module)
            elif isinstance(sub, ast.Import):
                found.update(a.name for a in sub.names if a.name.startswith("embedlib"))
    return found


@pytest.mark.launch
@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_import_rules(module: str) -> None:
    code = (f"import sys, {module}\n"
            f"bad = [m for m in {FORBIDDEN[module]!r} if m in sys.modules]\n"
            "print(','.join(bad))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"importing {module} pulls in {proc.stdout.strip()}"


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {}
    for name, tree in modules.items():
        deps = set()
        for target in _top_level_imports(tree):
            # `from embedlib.vocab.model import X` depends on embedlib.vocab.model and its packages
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                deps.add(target)
        graph[name] = deps
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_every_module_is_on_the_readme_map_and_none_is_too_long() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    missing = [m for m in _modules() if m != "embedlib" and f"`{m.removeprefix('embedlib.')}`" not in section]
    assert not missing, f"modules missing from the README's architecture map: {missing}"
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 420}
    assert not long, f"modules over ~400 lines (split them by responsibility): {long}"
