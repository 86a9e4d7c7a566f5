"""The whole pipeline under spark-submit on a real Spark standalone cluster, against a local run.

The test starts a standalone master and two workers (one core, 1 GiB each) from pyspark's
own `bin/spark-class`, bound to 127.0.0.1, builds the wheel, and submits `jobs/pipeline.py`
with `--master spark://127.0.0.1:<port> --py-files <wheel>` and the configuration layered
as a user would: conf/base.yaml, conf/adult.yaml, conf/cluster.yaml, then --set overrides
for this small machine. Training runs through TorchDistributor with 2 processes as a barrier
stage on the two executors, and the tables are written through the Delta connector (its jars
shipped with --jars). The same submission with `--master local[2]` (TorchDistributor then runs
its 2 processes on the driver), writing with delta-rs, is the reference; it runs at the same time
(on this 2-core machine the test took 108 s before this and the JVM archive of tests/jvm.py, 75 s with both).

What must match exactly: the vocabulary (same rows, same content hash), the encoded row
counts, the bundle's columns and embedding dimensions, the epochs run, the number of scored
rows and of embedding rows. Both runs train 2-process DDP on byte-identical shards with the
same seeds and one torch thread per process, so the losses agree to float32 round-off; the
bound allows a relative 1e-3 (a rank that trained on the wrong shards or a broken all-reduce
moves the validation loss by several percent, see tests/test_distributed.py), and the score
distributions must agree to the same tolerance.

Every process the test starts (master, workers, spark-submit) and every process under them
(executors, Python workers, torchrun) is stopped by pid at teardown, pass or fail.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
from deltalake import DeltaTable

from embedlib.core.bundle import load_bundle
from embedlib.core.vocab import Vocabulary

from .conftest import ADULT_CONF, ADULT_DATA, ADULT_TEST, BASE_CONF, ROOT, logged_address, submit_conf
from .jvm import short_jvm

CLUSTER_CONF = ROOT / "conf" / "cluster.yaml"
BIN = Path(sys.executable).parent
RTOL = 1e-3


def spark_class() -> str:
    import pyspark

    return str(Path(pyspark.__file__).parent / "bin" / "spark-class")


def descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (Linux /proc), children first in the order found."""
    found: list[int] = []
    stack = [pid]
    while stack:
        parent = stack.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            stack += children
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\nState:\tZ" in status.read_text())


class Processes:
    """The processes this test starts; :meth:`stop_all` ends them and everything under them, by pid."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs, self.env = logs, env
        self.procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115  (closed in stop_all)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)
        self.procs.append((name, proc, log))
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def check_running(self) -> None:
        for name, proc, _ in self.procs:
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}")

    def stop_all(self) -> list[int]:
        """Stop in reverse order of start; returns the pids still alive afterwards (none, normally)."""
        tree: list[int] = []
        for _, proc, _ in reversed(self.procs):
            below = descendants(proc.pid)
            tree += [proc.pid, *below]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # a worker's shutdown hook stops its executors
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=30)
            for pid in below:
                if alive(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        for _, _, log in self.procs:
            log.close()
        deadline = time.monotonic() + 10
        while any(alive(p) for p in tree) and time.monotonic() < deadline:
            time.sleep(0.2)
        return [p for p in tree if alive(p)]


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[tuple[str, Processes, Path]]:
    """A standalone master and two 1-core workers on 127.0.0.1: ``(master URL, processes, work dir)``."""
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable,
               PYSPARK_DRIVER_PYTHON=sys.executable, SPARK_DAEMON_MEMORY="384m",
               SPARK_DAEMON_JAVA_OPTS=short_jvm())
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = Processes(logs, env)
    work = tmp_path / "workers"
    try:
        # every daemon binds a port of the kernel's choosing (0) and the test reads the bound ones
        # from the master's log: no port is picked first and bound later, so nothing can take it between
        started = procs.start("master", [spark_class(), "org.apache.spark.deploy.master.Master",
                                         "--host", "127.0.0.1", "--port", "0", "--webui-port", "0"])
        master = logged_address(logs / "master.log", r"Starting Spark master at (spark://\S+)", started)
        ui = int(logged_address(logs / "master.log", r"MasterWebUI.* started at http://[^:\s]+:(\d+)", started))
        for i in (1, 2):
            procs.start(f"worker{i}", [
                spark_class(), "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                "--port", "0", "--webui-port", "0", "--cores", "1",
                "--memory", "1g", "--work-dir", str(work / f"w{i}"), master,
            ])
        deadline = time.monotonic() + 180
        while True:
            procs.check_running()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/", timeout=5) as resp:
                    state = json.load(resp)
                if sum(w["state"] == "ALIVE" for w in state.get("workers", [])) == 2:
                    break
            except (OSError, ValueError):  # not up yet, or a page that is not the JSON yet
                pass
            assert time.monotonic() < deadline, "workers did not register:\n" + procs.log("master")[-3000:]
            time.sleep(1)
        yield master, procs, work
    finally:
        left = procs.stop_all()
        assert not left, f"processes still alive after teardown: {left}"


def connector_args() -> list[str]:
    """spark-submit arguments that give a job the Delta connector: the jars `make setup` fetched
    (shipped to the executors with --jars) and the Delta extension and catalog."""
    from embedlib.spark.session import DELTA_CONNECTOR, connector_jars

    jars = connector_jars()
    assert jars, "no Delta connector jars: run `make setup`"
    return ["--jars", ",".join(jars)] + [a for k, v in DELTA_CONNECTOR.items() for a in ("--conf", f"{k}={v}")]


def submit(procs: Processes | None, master: str, wheel: Path, out: Path, name: str, env: dict[str, str],
           extra: tuple[str, ...] = (), engine: str = "auto") -> str:
    """spark-submit jobs/pipeline.py on ``master`` (``extra``: more spark-submit arguments);
    returns the driver's output."""
    cmd = [
        str(BIN / "spark-submit"), "--master", master, "--py-files", str(wheel), *extra,
        "--driver-memory", "1g", "--conf", "spark.executor.memory=768m", "--conf", "spark.ui.enabled=false",
        *submit_conf(),
        "--conf", f"spark.pyspark.python={sys.executable}",
        "jobs/pipeline.py",
        "--conf", str(BASE_CONF), "--conf", str(ADULT_CONF), "--conf", str(CLUSTER_CONF),
        "--set", f"output_dir={out}", "--set", f"source.path={ADULT_DATA}", "--set", f"score.source={ADULT_TEST}",
        "--set", "spark.conf.spark.executor.memory=768m",       # the workers have 1 GiB each
        "--set", "spark.conf.spark.sql.shuffle.partitions=4",
        "--set", "spark.conf.spark.databricks.delta.snapshotPartitions=4",  # the connector's log replay
        "--set", "train.num_workers=2", "--set", "train.max_rows=8000", "--set", "train.epochs=3",
        "--set", "model.search_rows=2000",  # the size search's trials as tasks on the executors, on a sample
        "--set", "train.patience=10", "--set", "train.learning_rate=0.003", "--set", "train.seed=7",
        "--set", f"delta.engine={engine}",
    ]
    if procs is None:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        output = proc.stdout + proc.stderr
    else:
        p = procs.start(name, cmd)
        try:
            p.wait(timeout=900)
        except subprocess.TimeoutExpired:
            p.kill()
        output = procs.log(name)
        proc = p  # type: ignore[assignment]
    assert proc.returncode == 0, output[-6000:]
    return output


def timed(call: Callable[..., str], *args: Any, **kwargs: Any) -> tuple[str, float]:
    started = time.monotonic()
    return call(*args, **kwargs), time.monotonic() - started


def delta_rows(path: Path):  # type: ignore[no-untyped-def]
    return DeltaTable(str(path)).to_pyarrow_table()


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_pipeline_on_standalone_cluster_matches_local_run(cluster, wheel: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    master, procs, work = cluster
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable,
               PYSPARK_DRIVER_PYTHON=sys.executable)

    # the job on the cluster through the Delta connector, its jars shipped to the executors; the
    # reference runs locally and writes with delta-rs, so the same comparison shows that both
    # engines write the same tables (each read back here by delta-rs)
    # the two submissions go at once: they share no file or port, and each waits on JVM starts, executor
    # launches and the barrier stage's processes for much of its time
    with ThreadPoolExecutor(max_workers=1) as pool:
        local = pool.submit(timed, submit, None, "local[2]", wheel, tmp_path / "local", "submit-local", env)
        cluster_out, cluster_seconds = timed(submit, procs, master, wheel, tmp_path / "cluster", "submit-cluster",
                                             env, extra=tuple(connector_args()), engine="connector")
        local_out, local_seconds = local.result()

    # both drivers ran embedlib from the wheel given with --py-files
    assert f"{wheel.name}/embedlib/__init__.py) run" in cluster_out
    assert f"{wheel.name}/embedlib/__init__.py) run" in local_out
    # training ran as 2 processes, one in each worker's executor, importing embedlib from the
    # copy of the wheel Spark fetched into that executor's directory (not the installed package)
    where = {}
    for rank in (0, 1):
        found = re.search(rf"torch_distributor rank {rank}: embedlib \S+ from (\S+),", cluster_out)
        assert found, f"no log line of rank {rank}"
        where[rank] = Path(found.group(1))
        assert where[rank].parent.name == wheel.name and work in where[rank].parents, where[rank]
    assert {where[0].relative_to(work).parts[0], where[1].relative_to(work).parts[0]} == {"w1", "w2"}
    assert "Started distributed training with 2 executor processes" in cluster_out

    run_c, run_l = tmp_path / "cluster" / "adult-demo", tmp_path / "local" / "adult-demo"
    engines = {str(c.get("engineInfo")) for c in DeltaTable(str(run_c / "scores")).history()}
    assert engines and all(e.startswith("Apache-Spark/") and "Delta-Lake/" in e for e in engines), engines
    assert all(str(c.get("engineInfo")).startswith("delta-rs") for c in DeltaTable(str(run_l / "scores")).history())

    vocab_c, vocab_l = Vocabulary.load_delta(str(run_c / "vocab")), Vocabulary.load_delta(str(run_l / "vocab"))
    assert vocab_c.to_arrow().equals(vocab_l.to_arrow())
    assert vocab_c.content_hash == vocab_l.content_hash and vocab_c.meta["row_count"] == 32561

    bundle_c, bundle_l = load_bundle(str(run_c / "bundle")), load_bundle(str(run_l / "bundle"))
    assert bundle_c.spec == bundle_l.spec
    m_c, m_l = bundle_c.manifest["metrics"], bundle_l.manifest["metrics"]
    for key in ("backend", "world_size", "epochs_run", "train_rows", "validation_rows", "steps_per_epoch"):
        assert m_c[key] == m_l[key], key
    assert m_c["backend"] == "torch_distributor" and m_c["world_size"] == 2 and m_c["epochs_run"] == 3
    assert m_c["train_rows"] + m_c["validation_rows"] == 8000
    val_c = [h["validation_loss"] for h in m_c["history"]]
    val_l = [h["validation_loss"] for h in m_l["history"]]
    assert val_c == pytest.approx(val_l, rel=RTOL)
    assert bundle_c.threshold == pytest.approx(bundle_l.threshold, rel=RTOL)

    scores_c, scores_l = delta_rows(run_c / "scores"), delta_rows(run_l / "scores")
    assert scores_c.num_rows == scores_l.num_rows == 16281
    assert scores_c.schema.names == scores_l.schema.names
    s_c = np.sort(scores_c.column("anomaly_score").to_numpy())
    s_l = np.sort(scores_l.column("anomaly_score").to_numpy())
    assert np.allclose(s_c, s_l, rtol=RTOL, atol=1e-6)
    assert delta_rows(run_c / "embeddings").num_rows == delta_rows(run_l / "embeddings").num_rows
    runs_c, runs_l = delta_rows(run_c / "score_runs").to_pylist(), delta_rows(run_l / "score_runs").to_pylist()
    assert len(runs_c) == len(runs_l) == 1 and runs_c[0]["rows"] == runs_l[0]["rows"] == 16281
    assert runs_c[0]["anomalies"] == runs_l[0]["anomalies"]
    assert m_c["model_size"] == m_l["model_size"]  # model.size auto: trials as tasks on the executors

    print(  # the figures for the record (pytest -s)
        f"\ncluster (connector) {cluster_seconds:.0f}s, local (delta-rs) {local_seconds:.0f}s\n"
        f"validation loss per epoch  cluster {[round(v, 5) for v in val_c]}  local {[round(v, 5) for v in val_l]}\n"
        f"max relative gap {max(abs(a - b) / b for a, b in zip(val_c, val_l)):.2e}; threshold cluster "
        f"{bundle_c.threshold:.5f} local {bundle_l.threshold:.5f}; anomalies cluster {runs_c[0]['anomalies']} "
        f"local {runs_l[0]['anomalies']}; "
        f"max |score gap| {np.max(np.abs(s_c - s_l)):.2e} nats"
    )
