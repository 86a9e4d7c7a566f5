# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.embedlib-installed
TORCH_PIN := torch==2.13.0

.PHONY: demo test check setup check-env horovod lint typecheck bench wheel clean

check-env:
	@bash .ci/check_env.sh "$(PYTHON)"

# torch is pinned and installed first: a requirement that let pip choose would pull
# a newer torch with several GB of CUDA packages.
$(STAMP): setup.py
	@bash .ci/check_env.sh "$(PYTHON)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# The Delta connector (and hadoop-aws) jars for the installed pyspark, fetched with Maven once
# into ~/.cache/embedlib/jars (or $EMBEDLIB_JARS); a no-op when they are there.
setup: $(STAMP)
	@bash .ci/fetch_jars.sh $(PY)

# Horovod 0.28.1 built from its sdist with the C++17 fix (~3-10 min once, then cached).
horovod: setup
	bash .ci/build_horovod.sh $(PY)

demo: setup
	$(PY) -m embedlib.cli run --conf conf/base.yaml --conf conf/adult.yaml

test: setup horovod
	$(PY) -m ruff check embedlib jobs tests benchmarks
	$(PY) -m mypy
	$(PY) -m pytest

# The inner loop: lint, types and every test that needs neither the Spark session nor another process
# (the markers are set in tests/conftest.py). `make test` runs everything, these included.
check: setup
	$(PY) -m ruff check embedlib jobs tests benchmarks
	$(PY) -m mypy
	$(PY) -m pytest -m "not spark and not launch"

lint: setup
	$(PY) -m ruff check embedlib jobs tests benchmarks

typecheck: setup
	$(PY) -m mypy

bench: setup
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m pip install --quiet --no-deps deepod==0.4.1  # pins torch<1.13.1; runs on ours
	$(PY) benchmarks/detect_bench.py

# dist/embedlib-<version>-py3-none-any.whl, for spark-submit --py-files and Databricks
wheel: setup
	$(PY) -m build --wheel --no-isolation

clean:
	rm -rf output spark-warehouse metastore_db derby.log .pytest_cache .mypy_cache .ruff_cache build dist
