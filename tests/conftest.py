"""One cheap Spark session for the whole test run (its JVM also the Spark Connect server of the Connect tests), plus shared helpers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .jvm import short_jvm

if TYPE_CHECKING:
    from embedlib.spark.tables import Tables

ROOT = Path(__file__).resolve().parents[1]
ADULT_DATA = ROOT / "data" / "adult" / "adult.data.gz"
ADULT_TEST = ROOT / "data" / "adult" / "adult.test.gz"
ADULT_CONF = ROOT / "conf" / "adult.yaml"
BASE_CONF = ROOT / "conf" / "base.yaml"

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

#: Fixtures that start something outside this process (a server, a build, a cluster): a test that
#: uses one is marked ``launch`` like the tests that start a process themselves.
LAUNCHING_FIXTURES = ("wheel", "s3_server", "cluster")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tiers (pyproject.toml registers the markers): ``spark`` for every test that uses the Spark
    session, directly or through a fixture such as ``adult_trained``; ``launch`` for those that start a
    server, a build or a cluster through a fixture (tests that start a process themselves carry the mark).
    ``make check`` runs the tests with neither; ``make test`` runs every test."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if "spark" in names:
            item.add_marker(pytest.mark.spark)
        if names & set(LAUNCHING_FIXTURES) or item.get_closest_marker("distributed"):
            item.add_marker(pytest.mark.launch)  # several training processes are launches too


def spark_sets() -> list[str]:
    """``--set`` arguments that start an ``embedlib`` process's Spark with the short-run JVM options
    (:func:`tests.jvm.short_jvm`: C1, the serial collector, a class-data-sharing archive)."""
    return ["--set", f"spark.conf.spark.driver.extraJavaOptions={short_jvm()}"]


def submit_conf() -> list[str]:
    """``spark-submit`` arguments that give the driver and the executors the short-run JVM options."""
    return [a for role in ("driver", "executor") for a in ("--conf", f"spark.{role}.extraJavaOptions={short_jvm()}")]


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from embedlib.core.config import SparkConfig
    from embedlib.spark.session import get_session

    warehouse = tmp_path_factory.mktemp("warehouse")
    session = get_session(
        SparkConfig(
            master="local[2]",
            conf={
                "spark.sql.shuffle.partitions": "4",
                "spark.default.parallelism": "4",
                "spark.sql.warehouse.dir": str(warehouse),
                "spark.driver.memory": "2g",
                "spark.task.maxFailures": "1",
                # the same JVM serves Spark Connect clients (the `connect` fixture, CLI runs with
                # SPARK_REMOTE) on a port of the kernel's choosing: one server for the test session
                "spark.plugins": "org.apache.spark.sql.connect.SparkConnectPlugin",
                "spark.connect.grpc.binding.port": "0",
            },
        ),
        app_name="embedlib-tests",
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def connect_url(spark) -> str:  # type: ignore[no-untyped-def]
    """``sc://`` address of the Spark Connect server inside the shared session's JVM: what a Connect
    client process (``SPARK_REMOTE``; pyspark keeps a process to one kind of session) is given."""
    service = getattr(spark._jvm.org.apache.spark.sql.connect.service, "SparkConnectService$").__getattr__("MODULE$")
    return f"sc://localhost:{int(service.localPort())}"


#: The two Delta engines; the test session has both (`make setup` fetched the connector's jars).
ENGINES = ("connector", "delta-rs")


def tables_of(spark, engine: str = "auto") -> Tables:  # type: ignore[no-untyped-def]
    """The shared session's tables through Delta engine ``engine``: what a job whose ``delta.engine`` is
    ``engine`` opens (:func:`embedlib.spark.tables.open_tables`); nothing is set on the session."""
    from embedlib.core.config import DeltaConfig
    from embedlib.spark.tables import open_tables

    return open_tables(spark, DeltaConfig(engine=engine))  # type: ignore[arg-type]


@pytest.fixture(params=ENGINES)
def delta_engine(request) -> str:  # type: ignore[no-untyped-def]
    """A test that takes this runs once per Delta engine (its jobs' ``delta.engine``; its own reads and
    writes through ``tables_of(spark, delta_engine)``)."""
    return str(request.param)


@pytest.fixture()
def adult_cfg(tmp_path: Path):  # type: ignore[no-untyped-def]
    """The demo configuration, writing under a temp output directory."""
    from embedlib.core.config import load_config

    return load_config(
        [BASE_CONF, ADULT_CONF],
        [f"output_dir={tmp_path / 'out'}", f"source.path={ADULT_DATA}"],
    )


def adult_pandas(path: Path = ADULT_DATA):  # type: ignore[no-untyped-def]
    """The Adult file read independently of embedlib (pandas), '?' as missing."""
    import pandas as pd

    names = [
        "age", "workclass", "fnlwgt", "education", "education-num", "marital-status",
        "occupation", "relationship", "race", "sex", "capital-gain", "capital-loss",
        "hours-per-week", "native-country", "income",
    ]
    return pd.read_csv(
        path, header=None, names=names, skipinitialspace=True, na_values=["?"],
        keep_default_na=False, comment="|",
    )


#: Settings of the training tests: small and quick, the same for every backend.
TRAIN_SETS = [
    "train.epochs=6",
    "train.patience=10",
    "train.batch_size=512",
    "train.learning_rate=0.003",
    "train.seed=7",
    "model.size=medium",  # the size search has its own tests (test_sizing.py)
]


def train_cfg(out: Path, *extra: str):  # type: ignore[no-untyped-def]
    from embedlib.core.config import load_config

    return load_config(
        [BASE_CONF, ADULT_CONF],
        [f"output_dir={out}", f"source.path={ADULT_DATA}", *TRAIN_SETS, *extra],
    )


@pytest.fixture(scope="session")
def adult_trained(spark, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Adult: vocabulary + a local-backend training run, shared by the training tests."""
    from embedlib.spark.train import run_train_job
    from embedlib.spark.vocab import run_vocab_job

    cfg = train_cfg(tmp_path_factory.mktemp("adult_run"))
    run_vocab_job(spark, cfg)
    result = run_train_job(spark, cfg)
    return cfg, result


def copy_vocab(src_cfg, dst_cfg) -> None:  # type: ignore[no-untyped-def]
    """Reuse a built vocabulary table in another run directory."""
    import shutil

    shutil.copytree(src_cfg.layout.vocab, dst_cfg.layout.vocab)


@pytest.fixture()
def run_dir(adult_trained, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    """A run directory holding a copy of the trained Adult bundle and its vocabulary (no outputs)."""
    copy_run(adult_trained[0], tmp_path)
    return tmp_path


def cli(command: str, args: list[str], faults: str | None = None,
        master: str = "local[2]") -> subprocess.CompletedProcess[str]:
    """``embedlib <command>`` in its own process and Spark application (``faults``: embedlib.core.faults)."""
    from embedlib.core.faults import ENV as FAULTS

    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    env.pop(FAULTS, None)
    if faults:
        env[FAULTS] = faults
    cmd = [sys.executable, "-m", "embedlib.cli", command, *args, "--set", f"spark.master={master}", *spark_sets()]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)


def logged_address(log: Path, pattern: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> str:
    """The first group of ``pattern``'s first match in ``log``, the output of server ``proc``, once it
    appears: how a test learns what a server started on port 0 bound (the kernel's choice, so nothing
    can take the port between picking and binding it). Fails with the log's tail if ``proc`` exits or
    ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not (found := re.search(pattern, log.read_text(errors="replace"))):
        assert proc.poll() is None and time.monotonic() < deadline, \
            f"{log.name}: the server never logged {pattern!r}:\n{log.read_text(errors='replace')[-3000:]}"
        time.sleep(0.2)
    return found.group(1)


def adult_args(out: Path, *extra: str) -> list[str]:
    """CLI arguments of the Adult demo config, writing under ``out``."""
    return ["--conf", str(BASE_CONF), "--conf", str(ADULT_CONF),
            "--set", f"output_dir={out}", "--set", f"source.path={ADULT_DATA}", *extra]


def copy_run(cfg, dest: Path) -> Path:  # type: ignore[no-untyped-def]
    """Copy a trained run (vocabulary + bundle, no outputs) under ``dest``; return the copy's root."""
    import shutil

    root = dest / cfg.name
    shutil.copytree(cfg.layout.root, root, ignore=shutil.ignore_patterns("scores", "score_runs", "_work"))
    return root


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `python -m build --wheel` makes, built from a copy of the sources (no network)."""
    import shutil
    import subprocess

    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "embedlib", src / "embedlib", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(root / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (built,) = (root / "dist").glob("embedlib-*.whl")
    return built
