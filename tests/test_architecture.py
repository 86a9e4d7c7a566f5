"""The package map in the README is true: every module is on it and in a layer, the layers import only
downward, the import rules hold, no cycles (counting every import)."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from .conftest import ROOT

PACKAGE = ROOT / "embedlib"

#: module → third-party packages it must not pull in when imported (the README's map says why).
FORBIDDEN = {
    "embedlib.core.indices": ("torch", "pyspark", "pyarrow", "numpy"),
    "embedlib.core.model": ("pyspark", "pyarrow"),
    "embedlib.core.heads": ("pyspark", "pyarrow"),
    "embedlib.core.bundle": ("pyspark",),
    "embedlib.core.inference": ("pyspark",),
    "embedlib.inmemory": ("torch", "pyspark"),
    "embedlib.core.vocab.model": ("torch", "pyspark"),
    "embedlib.core.vocab": ("torch", "pyspark"),
    "embedlib.spark.vocab": ("torch", "pyspark"),
    "embedlib.spark.tables": ("torch", "pyspark"),
    "embedlib.core.config": ("torch", "pyspark", "pyarrow"),
    "embedlib.core.layout": ("torch", "pyspark", "pyarrow"),
    "embedlib.core.encode": ("torch", "pyspark"),
    "embedlib.spark.runs": ("torch", "pyspark"),
    "embedlib.core.summary": ("torch", "pyspark"),
    "embedlib.core.delta": ("torch", "pyspark"),
    "embedlib.core.output": ("pyspark",),
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


#: The three layers (README "Architecture") are the folders: ``embedlib.core`` (no pyspark in any import of
#: a module, function bodies and TYPE_CHECKING blocks included), ``embedlib.spark`` (everything that takes a
#: SparkSession or a DataFrame, and the MLflow services the jobs log to), and the front doors beside them
#: (the CLI and its commands, Spark ML, the evaluation job, ``embedlib.fit``). A module imports only its own
#: layer and those below it.
LAYERS = ("embedlib.core", "embedlib.spark")


def layer(module: str) -> int:
    """0 core, 1 Spark, 2 a front door."""
    for rank, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return rank
    return len(LAYERS)


#: The one allowed cycle edge: the package root's lazy ``embedlib.fit`` (the root imports nothing else).
LAZY_ROOT = ("embedlib", "embedlib.inmemory")


def _all_imports(name: str, tree: ast.Module, modules: set[str]) -> dict[str, int]:
    """Every module ``name`` imports, anywhere in it (function bodies and TYPE_CHECKING blocks too),
    with a line: ``from embedlib.a import b`` is ``embedlib.a.b`` when that is a module, else
    ``embedlib.a``; third-party packages by their top-level name."""
    found: dict[str, int] = {}
    package = name if name in _PACKAGES else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for target in targets:
            if target.startswith("embedlib"):
                while target and target not in modules:
                    target = target.rpartition(".")[0]
            else:
                target = target.split(".")[0]
            if target and target != name:
                found.setdefault(target, node.lineno)
    return found


_PACKAGES = {str(p.parent.relative_to(ROOT)).replace("/", ".") for p in PACKAGE.rglob("__init__.py")}


def _graph() -> dict[str, dict[str, int]]:
    modules = _modules()
    return {name: _all_imports(name, tree, set(modules)) for name, tree in modules.items()}


def test_no_import_cycles_counting_every_import() -> None:
    """No cycle among embedlib's modules, counting every import in a module at any depth (function
    bodies and TYPE_CHECKING blocks included); the root's lazy ``fit`` is the one allowed edge back."""
    graph = {name: {t for t in deps if t.startswith("embedlib")} for name, deps in _graph().items()}
    graph[LAZY_ROOT[0]].discard(LAZY_ROOT[1])
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


def test_layers_import_only_downward_and_the_core_has_no_pyspark() -> None:
    graph = _graph()
    assert {layer(m) for m in graph} == {0, 1, 2}, "the core, the Spark layer and the front doors each hold modules"
    bad = []
    for name, deps in sorted(graph.items()):
        for target, line in sorted(deps.items()):
            if target == "pyspark" and layer(name) == 0:
                bad.append(f"{name}:{line} imports pyspark (a core module)")
            elif target in graph and layer(target) > layer(name) and (name, target) != LAZY_ROOT:
                bad.append(f"{name}:{line} imports {target}, a layer above it")
    assert not bad, "\n".join(bad)


def test_every_module_is_on_the_readme_map_and_none_is_too_long() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    missing = [m for m in _modules() if m != "embedlib" and f"`{m.removeprefix('embedlib.')}`" not in section]
    assert not missing, f"modules missing from the README's architecture map: {missing}"
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 420}
    assert not long, f"modules over ~400 lines (split them by responsibility): {long}"


def test_every_folder_of_modules_is_a_regular_package() -> None:
    """No namespace package: a folder of modules without ``__init__.py`` is merged across the path, so a
    second copy of embedlib (an editable install beside the wheel Spark ships) can supply its modules."""
    folders = {path.parent for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts}
    missing = sorted(str(folder.relative_to(ROOT)) for folder in folders if not (folder / "__init__.py").exists())
    assert not missing, f"folders without __init__.py: {missing}"
