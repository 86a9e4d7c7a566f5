"""The notebooks run, cell by cell, on a fresh kernel of this interpreter, and show real figures.

Refresh the outputs committed with them (after changing a notebook or the library):

    .venv/bin/python tests/test_notebooks.py --save
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ["01_walkthrough.ipynb", "02_why_not_mse_on_embeddings.ipynb"]
#: per notebook: figures it must show (inline PNGs)
FIGURES = {"01_walkthrough.ipynb": 4, "02_why_not_mse_on_embeddings.ipynb": 2}
#: the environment variable the notebooks read for their output directory
OUTPUT_ENV = "EMBEDLIB_NOTEBOOK_OUTPUT"


def execute(path: Path, output_dir: Path, *, probe: bool = True, java_options: str | None = None) -> tuple[Any, str | None]:
    """Run every cell of ``path`` on a new ``python3`` kernel (this interpreter) in ``notebooks/``.

    Raises ``nbclient.exceptions.CellExecutionError`` on the first cell that fails.
    With ``probe`` a first cell reports the kernel's ``sys.executable`` (and is removed again);
    returns the executed notebook and that path. ``java_options``: the JVM options of the Spark driver the
    notebook starts (given to the kernel as ``PYSPARK_SUBMIT_ARGS``).
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    if probe:
        nb.cells.insert(0, nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    os.environ[OUTPUT_ENV] = str(output_dir)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # "python3" is ipykernel's own kernel spec; jupyter_client starts it with sys.executable
    # Spark's JVM logs go to the kernel's console rather than into the cells
    client = NotebookClient(nb, kernel_name="python3", timeout=600, record_timing=False,
                            extra_arguments=["--IPKernelApp.capture_fd_output=False"],
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    env = dict(os.environ)
    if java_options:
        env["PYSPARK_SUBMIT_ARGS"] = f'--driver-java-options "{java_options}" pyspark-shell'
    client.execute(env=env)
    executable = None
    if probe:
        executable = "".join(o.get("text", "") for o in nb.cells.pop(0).outputs).strip()
    return nb, executable


def images(nb: Any) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def clean(nb: Any) -> Any:
    """The notebook as committed: outputs kept, volatile metadata dropped."""
    nb = copy.deepcopy(nb)
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    code = [c for c in nb.cells if c.cell_type == "code"]
    for count, cell in enumerate(code, start=1):  # 1, 2, … whatever ran before (the probe cell)
        cell.metadata.pop("execution", None)
        cell.execution_count = count
        for output in cell.outputs:
            if "execution_count" in output:
                output.execution_count = count
    return nb


@pytest.mark.launch
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name: str, tmp_path: Path) -> None:
    import nbformat

    from .jvm import short_jvm  # here: `python tests/test_notebooks.py --save` runs this file as a script

    nb, executable = execute(NOTEBOOKS / name, tmp_path, java_options=short_jvm())  # the tests' short-run JVM
    assert executable == sys.executable  # the project's environment, not another Python
    assert images(nb) >= FIGURES[name]
    for cell in nb.cells:
        assert not any(o.output_type == "error" for o in cell.get("outputs", []))
    assert any(tmp_path.iterdir())  # it wrote under the given output directory
    # the committed copy was executed and saved with its outputs, figures included
    committed = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    assert images(committed) >= FIGURES[name]


def main(argv: list[str]) -> int:
    import nbformat

    save = "--save" in argv
    out = Path(tempfile.gettempdir()) / "embedlib-notebooks"  # a fixed place: the saved outputs show it
    for name in NAMES:
        started = time.perf_counter()
        nb, executable = execute(NOTEBOOKS / name, out)
        print(f"{name}: {time.perf_counter() - started:.1f}s, {images(nb)} figure(s), kernel {executable}")
        if save:
            nbformat.write(clean(nb), NOTEBOOKS / name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
