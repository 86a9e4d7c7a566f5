"""Faults injected into real jobs: failed task attempts, reruns, concurrent writers,
a training worker killed mid-epoch, jobs killed between writing files and committing.

Each fault comes from ``EMBEDLIB_FAULTS`` (see :mod:`embedlib.core.faults`). Jobs whose
process must die, or that need their own Spark master, run as real subprocesses
of ``embedlib``; their outputs are read back with delta-rs, without Spark.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from embedlib.cli import main
from embedlib.core.faults import ENV as FAULTS
from embedlib.core.train import TrainFailure
from embedlib.core.vocab import Vocabulary
from embedlib.reports import train_report
from embedlib.spark.score import run_score_job
from embedlib.spark.train import run_train_job

from .conftest import (
    ADULT_CONF,
    ADULT_DATA,
    ADULT_TEST,
    BASE_CONF,
    ENGINES,
    adult_pandas,
    cli,
    copy_run,
    copy_vocab,
    tables_of,
    train_cfg,
)

ROWS = 16281  # adult.test


@pytest.fixture(scope="module")
def test_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """adult.test as Parquet with a ``row_id`` column, so duplicates and losses show."""
    frame = adult_pandas(ADULT_TEST)
    frame.insert(0, "row_id", range(len(frame)))
    path = tmp_path_factory.mktemp("source") / "adult_test.parquet"
    frame.to_parquet(path, index=False)
    return path


def score_sets(out: Path, source: Path, run_id: str, engine: str = "auto") -> list[str]:
    return [f"output_dir={out}", f"source.path={source}", "source.format=parquet", "source.options={}",
            "source.schema=null", f"score.source={source}", "columns.id=[row_id]", "score.batch_size=2000",
            f"score.run_id={run_id}", f"delta.engine={engine}"]


def score_args(out: Path, source: Path, run_id: str, engine: str = "auto") -> list[str]:
    args = ["--conf", str(BASE_CONF), "--conf", str(ADULT_CONF)]
    for item in score_sets(out, source, run_id, engine):
        args += ["--set", item]
    return args


def score_config(out: Path, source: Path, run_id: str, engine: str = "auto"):  # type: ignore[no-untyped-def]
    from embedlib.core.config import load_config

    return load_config([BASE_CONF, ADULT_CONF], score_sets(out, source, run_id, engine))


def scores(out: Path) -> pd.DataFrame:
    return pa.table(DeltaTable(str(out / "adult-demo" / "scores")).to_pyarrow_table()).to_pandas()


def staged_files(table: Path) -> set[str]:
    """Data files in a table's folder, committed or not (delta-rs stages under data/, the connector
    writes into the folder itself)."""
    return {str(p.relative_to(table)) for p in table.rglob("*.parquet") if "_delta_log" not in p.parts}


@pytest.mark.launch
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_failed_task_attempts_are_retried_without_duplicates(adult_trained, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                            test_source: Path) -> None:
    """Per Delta engine, in its own run directory: the two engines' processes go at once (each spends
    much of its time starting its JVM and Python workers: 64 -> 53 s on this 2-core machine)."""
    runs = {engine: copy_run(adult_trained[0], tmp_path / engine).parent for engine in ENGINES}
    with ThreadPoolExecutor(max_workers=len(runs)) as pool:
        for done in [pool.submit(_retried_without_duplicates, run, test_source, engine) for engine, run in runs.items()]:
            done.result()


def _retried_without_duplicates(run_dir: Path, test_source: Path, delta_engine: str) -> None:
    # local[2,3]: up to 3 attempts per task; partition 0 fails its first two, after a batch went out
    proc = cli("score", score_args(run_dir, test_source, "r1", delta_engine),
               faults="score.fail_attempts=2", master="local[2,3]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("injected fault score.fail_attempts") >= 2  # the fault did happen
    got = scores(run_dir)
    assert len(got) == ROWS and got["row_id"].is_unique
    assert set(got["row_id"]) == set(range(ROWS))
    runs = DeltaTable(str(run_dir / "adult-demo" / "score_runs")).to_pandas()
    assert runs["rows"].tolist() == [ROWS]  # failed attempts are not counted either
    # nor are their batches in the per-column counts the workers add up (each task's, observed): every
    # row sits in exactly one drift bin of each column
    bins = dict(runs["bin_counts"][0])
    assert len(bins) == 14 and all(sum(counts) == ROWS for counts in bins.values()), bins

    # local[2]: no retry, the job fails, and the table does not move
    table = run_dir / "adult-demo" / "scores"
    version = DeltaTable(str(table)).version()
    proc = cli("score", score_args(run_dir, test_source, "r2", delta_engine), faults="score.fail_attempts=1")
    assert proc.returncode == 1  # a runtime failure, not bad input
    assert "score failed: injected fault score.fail_attempts: attempt 0 of partition 0 fails" in proc.stderr
    assert "Traceback" not in proc.stderr  # one line, no stack trace
    assert DeltaTable(str(table)).version() == version
    assert len(scores(run_dir)) == ROWS
    assert len(DeltaTable(str(run_dir / "adult-demo" / "score_runs")).to_pandas()) == 1


@pytest.mark.launch
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_jobs_killed_before_commit_leave_nothing_visible(adult_trained, run_dir: Path, test_source: Path,  # type: ignore[no-untyped-def]
                                                       delta_engine: str) -> None:
    """Only the runs that die are processes of their own; the reruns and the first score run use the
    test session (the same ``embedlib`` command, in this process), which also shows that a job finds
    nothing of the dead process's files in its way."""
    cfg, _ = adult_trained
    fresh = run_dir / "fresh"
    # the process dies after data files are written, before the commit that would make them visible
    vocab_args = ["--conf", str(BASE_CONF), "--conf", str(ADULT_CONF), "--set", f"output_dir={fresh}",
                  "--set", f"source.path={ADULT_DATA}", "--set", f"delta.engine={delta_engine}"]
    proc = cli("vocab", vocab_args, faults="commit.kill=1")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    vocab = fresh / "adult-demo" / "vocab"
    assert staged_files(vocab) and not DeltaTable.is_deltatable(str(vocab))  # files, but no table
    assert main(["vocab", *vocab_args]) == 0
    rebuilt = Vocabulary.load_delta(str(vocab))
    assert rebuilt.to_arrow().equals(Vocabulary.load_delta(cfg.layout.vocab).to_arrow())  # leftovers not read
    assert rebuilt.content_hash == Vocabulary.load_delta(cfg.layout.vocab).content_hash

    assert main(["score", *score_args(run_dir, test_source, "r1", delta_engine)]) == 0
    table = run_dir / "adult-demo" / "scores"
    version, before = DeltaTable(str(table)).version(), staged_files(table)
    proc = cli("score", score_args(run_dir, test_source, "r2", delta_engine), faults="commit.kill=1")
    assert proc.returncode == -signal.SIGKILL
    assert DeltaTable(str(table)).version() == version
    leftovers = staged_files(table) - before
    assert leftovers and len(scores(run_dir)) == ROWS
    assert main(["score", *score_args(run_dir, test_source, "r2", delta_engine)]) == 0
    got = scores(run_dir)
    assert len(got) == 2 * ROWS and (got["row_id"].value_counts() == 2).all()
    committed = {a["path"] for a in pa.table(DeltaTable(str(table)).get_add_actions(flatten=True)).to_pylist()}
    assert not committed & leftovers


def test_rerun_rebuilds_a_missing_run_summary(spark, adult_trained, run_dir: Path, test_source: Path,  # type: ignore[no-untyped-def]
                                              delta_engine: str) -> None:
    run = score_config(run_dir, test_source, "r1", delta_engine)
    first = run_score_job(spark, run)
    assert first.written and first.rows == ROWS
    # the run stopped after committing its scores and before its summary
    shutil.rmtree(run.layout.score_runs)
    again = run_score_job(spark, run)
    assert not again.written and len(scores(run_dir)) == ROWS
    summary = DeltaTable(run.layout.score_runs).to_pandas()
    assert summary["run_id"].tolist() == ["r1"] and summary["rows"].tolist() == [ROWS]
    assert summary["anomalies"].tolist() == [first.anomalies]
    assert not run_score_job(spark, run).written and len(DeltaTable(run.layout.score_runs).to_pandas()) == 1


def test_concurrent_score_runs_both_land_once(spark, adult_trained, run_dir: Path, test_source: Path,  # type: ignore[no-untyped-def]
                                              delta_engine: str) -> None:
    # two different runs and a duplicate of one of them, all started at once
    run_ids = ["a", "b", "a"]
    barrier = threading.Barrier(len(run_ids))
    results: dict[int, Any] = {}

    def work(k: int) -> None:
        barrier.wait()
        try:
            results[k] = run_score_job(spark, score_config(run_dir, test_source, run_ids[k], delta_engine))
        except BaseException as exc:  # surfaced below
            results[k] = exc

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(run_ids))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    errors = [r for r in results.values() if isinstance(r, BaseException)]
    assert not errors, errors
    got = scores(run_dir)
    assert len(got) == 2 * ROWS and (got["row_id"].value_counts() == 2).all()
    runs = DeltaTable(str(run_dir / "adult-demo" / "score_runs")).to_pandas()
    assert sorted(runs["run_id"]) == ["a", "b"]
    assert sum(r.written for r in results.values()) == 2


def test_commit_conflicts_are_retried_not_lost_or_doubled(spark, tmp_path: Path, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    """Another writer commits between our check and our commit (real delta-rs conflicts)."""
    _conflicts_through_delta_rs(spark, tmp_path, monkeypatch, caplog)


def _conflicts_through_delta_rs(spark, tmp_path: Path, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    import deltalake
    from deltalake import write_deltalake
    from deltalake.transaction import CommitProperties, Transaction

    target = str(tmp_path / "t")
    ours = spark.createDataFrame(pd.DataFrame({"x": [1, 2, 3]}))
    theirs = pa.table({"x": pa.array([10, 20], pa.int64())})

    # 1. the table is created by someone else while we stage: we append to it
    real_create = deltalake.transaction.create_table_with_add_actions

    def create_first(*args, **kwargs):  # type: ignore[no-untyped-def]
        write_deltalake(target, theirs)
        monkeypatch.setattr(deltalake.transaction, "create_table_with_add_actions", real_create)
        return real_create(*args, **kwargs)

    monkeypatch.setattr(deltalake.transaction, "create_table_with_add_actions", create_first)
    with caplog.at_level(logging.WARNING, logger="embedlib.spark.tables"):
        first = tables_of(spark, "delta-rs").write(ours, target, txn=("app", 1))
    assert first.committed and sorted(DeltaTable(target).to_pandas()["x"]) == [1, 2, 3, 10, 20]
    assert "conflicted with another writer" in caplog.text

    # 2. the same run (app transaction) is committed by another writer meanwhile: we skip
    real_commit = deltalake.DeltaTable.create_write_transaction

    def commit_first(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        write_deltalake(target, theirs, mode="append",
                        commit_properties=CommitProperties(app_transactions=[Transaction("app", 2)]))
        monkeypatch.setattr(deltalake.DeltaTable, "create_write_transaction", real_commit)
        return real_commit(self, *args, **kwargs)

    monkeypatch.setattr(deltalake.DeltaTable, "create_write_transaction", commit_first)
    second = tables_of(spark, "delta-rs").write(ours, target, txn=("app", 2))
    assert not second.committed
    assert sorted(DeltaTable(target).to_pandas()["x"]) == [1, 2, 3, 10, 10, 20, 20]
    committed = {a["path"] for a in pa.table(DeltaTable(target).get_add_actions(flatten=True)).to_pylist()}
    assert staged_files(Path(target)) <= committed  # the skipped write removed its staged files


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_killed_training_worker_fails_fast_and_rerun_resumes(spark, adult_trained, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    cfg, _ = adult_trained
    run = train_cfg(tmp_path, "train.backend=torch_distributor", "train.num_workers=2", "train.epochs=3",
                    "train.max_restarts=0")
    copy_vocab(cfg, run)
    monkeypatch.setenv(FAULTS, "train.kill_rank=1:2")  # rank 1 is SIGKILLed halfway through epoch 2
    with pytest.raises(TrainFailure) as failure:
        run_train_job(spark, run)
    message = str(failure.value)
    assert "rank 1 (pid" in message and "died without reporting an error" in message
    assert "rank 0 (pid" in message and "failed" in message  # it lost its peer
    assert "the last checkpoint is epoch 1" in message and "resume from epoch 2" in message
    assert not Path(run.layout.bundle).exists()
    saved = json.loads(Path(run.layout.checkpoints, "epoch-0001.json").read_text())["state"]["history"]
    monkeypatch.delenv(FAULTS)
    resumed = run_train_job(spark, run)
    assert [h["epoch"] for h in resumed.metrics["history"]] == [1, 2, 3]
    # epoch 1 came from the checkpoint, not from training it again (its timing would differ)
    assert resumed.metrics["history"][0] == saved[0]
    assert Path(resumed.bundle_path, "bundle.json").exists()
    assert resumed.metrics["restarts"] == 0


@pytest.mark.distributed
@pytest.mark.slow
def test_a_killed_training_worker_is_launched_again_and_resumes(spark, adult_trained, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                monkeypatch, caplog) -> None:
    """By default (``train.max_restarts: 1``) a run whose worker died is launched again at once: it resumes
    from the last checkpoint and finishes, saying which rank died and that it restarted."""
    cfg, _ = adult_trained
    run = train_cfg(tmp_path, "train.backend=torch_distributor", "train.num_workers=2", "train.epochs=3")
    copy_vocab(cfg, run)
    monkeypatch.setenv(FAULTS, "train.kill_rank=1:2")  # a fresh run's rank 1 is SIGKILLed halfway through epoch 2
    with caplog.at_level(logging.WARNING, logger="embedlib.spark.train.backends"):
        result = run_train_job(spark, run)
    (warning,) = [r.getMessage() for r in caplog.records if "launching the 2 workers again" in r.getMessage()]
    assert "rank 1 (pid" in warning and "died without reporting an error" in warning
    assert "the last checkpoint is epoch 1" in warning and "(restart 1 of 1)" in warning
    assert result.metrics["restarts"] == 1
    assert "launched again 1 time(s)" in "\n".join(train_report(result))  # what `embedlib train` prints
    # epochs 2 and 3 ran once, after the restart: one record each, epoch 1 the checkpoint's
    assert [h["epoch"] for h in result.metrics["history"]] == [1, 2, 3]
    saved = json.loads(Path(run.layout.checkpoints, "epoch-0001.json").read_text())["state"]["history"]
    assert result.metrics["history"][0] == saved[0]
    assert Path(result.bundle_path, "bundle.json").exists()


@pytest.mark.launch
def test_a_worker_crashing_in_native_code_leaves_its_stack(tmp_path: Path) -> None:
    """A rank that dies of a signal in native code (gloo's std::terminate is an abort) cannot report an
    error; it writes every thread's Python stack to its stderr, which the launcher prints in the driver's
    log, and its report stays ``running`` (read as "died")."""
    import subprocess
    import sys

    from embedlib.core.train.checkpoint import CheckpointStore

    store = CheckpointStore(folder=str(tmp_path / "checkpoints"), reports=str(tmp_path / "reports"), fingerprint="f")
    script = (
        "import os, sys\n"
        "from embedlib.spark.train.backends import _reporting\n"
        "from embedlib.core.train.checkpoint import CheckpointStore\n"
        "class Job:\n"
        f"    store = CheckpointStore(folder={store.folder!r}, reports={store.reports!r}, fingerprint='f')\n"
        "def abort_in_native_code():\n"
        "    os.abort()\n"
        "_reporting(Job, 1, abort_in_native_code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGABRT
    assert "Fatal Python error: Aborted" in proc.stderr and "abort_in_native_code" in proc.stderr, proc.stderr
    assert store.read_report(1)["state"] == "running"


def test_connector_conflicts_are_retried_or_recognised_as_done() -> None:
    """The connector path's retry rule, on the exceptions it raises (forced here: a real race is rare)."""
    from embedlib.spark.tables.connector import with_conflict_retries

    calls: list[int] = []

    def append_conflict_once() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("py4j: io.delta.exceptions.ConcurrentAppendException: Files were added ...")

    assert with_conflict_retries(append_conflict_once, "t", ("app", 1)) is True and len(calls) == 2

    def same_run_committed() -> None:
        raise RuntimeError("io.delta.exceptions.ConcurrentTransactionException: app app version 1")

    assert with_conflict_retries(same_run_committed, "t", ("app", 1)) is False

    def other_failure() -> None:
        raise RuntimeError("java.io.IOException: disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        with_conflict_retries(other_failure, "t", None)
