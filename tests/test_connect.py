"""Spark Connect: the same jobs over a Connect session as on a classic one, with the same results.

A Connect session (Databricks serverless, standard-access clusters, Databricks Connect) has no
``SparkContext``, broadcast variables, accumulators or JVM on the client, and pyspark keeps a process
to one kind of session. So each job here runs as a Connect client process (``embedlib <command>``
with ``SPARK_REMOTE``) against the Connect server inside the shared session's JVM (one server for the
test session; no JVM starts per run), and is compared with the same job run on the classic ``spark``
in this process: the same vocabulary (content hash), the same scores to 1e-9 and run summary, the
same embeddings, design matrix and drift report, and the same streamed scores.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable

from .conftest import (
    ADULT_CONF,
    ADULT_DATA,
    ADULT_TEST,
    BASE_CONF,
    ROOT,
    adult_pandas,
    copy_run,
    spark_sets,
    tables_of,
)

ROWS = 3000  # of Adult's held-out rows: every path runs whole, on a sample


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 held-out Adult rows as a Parquet file, with a row id."""
    frame = adult_pandas(ADULT_TEST).head(ROWS).reset_index(drop=True)
    frame.insert(0, "row_id", np.arange(len(frame), dtype=np.int64))
    path = tmp_path_factory.mktemp("connect_src") / "held_out.parquet"
    frame.to_parquet(path, index=False)
    return path


def _sets(root: Path, source: Path | None, *extra: str) -> list[str]:
    """A run under ``root`` scoring ``source`` (Parquet, with ``row_id``); None: a vocabulary run only."""
    scoring = [f"score.source.path={source}", "score.source.format=parquet", f"features.source.path={source}",
               "features.source.format=parquet", "columns.id=[row_id]"] if source is not None else []
    return [f"output_dir={root}", f"source.path={ADULT_DATA}", *scoring, *extra]


def _cfg(root: Path, source: Path | None, *extra: str):  # type: ignore[no-untyped-def]
    from embedlib.core.config import load_config

    return load_config([BASE_CONF, ADULT_CONF], _sets(root, source, *extra))


def over_connect(url: str, command: str, sets: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    """``embedlib <command>`` as a Spark Connect client of ``url`` (``SPARK_REMOTE``)."""
    env = dict(os.environ, SPARK_REMOTE=url, PYSPARK_PYTHON=sys.executable)
    argv = [sys.executable, "-m", "embedlib.cli", command, "--conf", str(BASE_CONF), "--conf", str(ADULT_CONF),
            *[a for s in sets for a in ("--set", s)], *args]
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    return proc


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Spark Connect session" in proc.stderr  # it did run over Connect
    return proc


def _table(path: str | Path, key: str | list[str] = "row_id") -> pd.DataFrame:
    return DeltaTable(str(path)).to_pandas().sort_values(key).reset_index(drop=True)


@pytest.mark.launch
@pytest.mark.parametrize("engine", ["connector", "delta-rs"])
def test_score_job_over_connect_equals_classic(spark, connect_url: str, adult_trained, held_out: Path,
                                               tmp_path: Path, engine: str) -> None:  # type: ignore[no-untyped-def]
    """`embedlib score` over Connect writes the scores, reasons and run summary the classic job writes
    with the same bundle (trained by a classic run), through either Delta engine; a rerun adds nothing."""
    from embedlib.spark.score import run_score_job

    copy_run(adult_trained[0], tmp_path / "classic")
    classic_cfg = _cfg(tmp_path / "classic", held_out, f"delta.engine={engine}")
    run_score_job(spark, classic_cfg)
    copy_run(adult_trained[0], tmp_path / "remote")
    sets = _sets(tmp_path / "remote", held_out, f"delta.engine={engine}", "spark.master=local[2]")
    proc = _ok(over_connect(connect_url, "score", sets))
    assert "spark.master local[2] is ignored" in proc.stderr  # the server's master, not this one
    remote_cfg = _cfg(tmp_path / "remote", held_out)
    classic, remote = _table(classic_cfg.scores_output), _table(remote_cfg.scores_output)
    assert len(remote) == ROWS and remote["row_id"].tolist() == list(range(ROWS))
    np.testing.assert_allclose(remote["anomaly_score"], classic["anomaly_score"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(remote["calibrated_score"], classic["calibrated_score"], rtol=1e-9, atol=1e-9)
    assert remote["is_anomaly"].tolist() == classic["is_anomaly"].tolist()
    # score.detail: flagged (the default): the flagged rows' reasons, nulls on the others, as classic's
    assert [None if rs is None else [r["column"] for r in rs] for rs in remote["reasons"]] == \
        [None if rs is None else [r["column"] for r in rs] for rs in classic["reasons"]]
    assert remote["reasons"].notna().tolist() == remote["is_anomaly"].tolist()
    assert "__embedlib_counts" not in remote.columns
    # the summary's counts came from each task's last row (there is no accumulator over Connect)
    columns = ["rows", "anomalies", "null_rate", "oov_rate", "bin_counts"]
    got = DeltaTable(remote_cfg.layout.score_runs).to_pandas()[columns]
    want = DeltaTable(classic_cfg.layout.score_runs).to_pandas()[columns]
    assert got.map(str).to_dict("records") == want.map(str).to_dict("records")
    assert got["rows"].tolist() == [ROWS]
    if engine == "delta-rs":  # the same source version and bundle: the same run id, nothing written
        again = _ok(over_connect(connect_url, "score", sets))
        assert "nothing written" in again.stderr and len(_table(remote_cfg.scores_output)) == ROWS


@pytest.mark.launch
def test_vocabulary_over_connect_has_the_classic_hash(spark, connect_url: str, adult_trained,
                                                      tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`embedlib vocab` over Connect writes the vocabulary the classic run wrote (the same content
    hash) with both counting engines: Spark's aggregation of a CSV, and pyarrow inside Spark tasks
    over a Parquet table's files."""
    from embedlib.spark.vocab import load_vocabulary, run_vocab_job

    def hash_of(proc: subprocess.CompletedProcess[str]) -> str:
        return next(line.split(":", 1)[1].strip() for line in proc.stdout.splitlines()
                    if line.startswith("content hash:"))

    classic = load_vocabulary(tables_of(spark), adult_trained[0].layout.vocab)  # the shared run's, built on `spark`
    assert hash_of(_ok(over_connect(connect_url, "vocab", _sets(tmp_path / "csv", None)))) == \
        classic.content_hash
    parquet = tmp_path / "adult.parquet"
    adult_pandas().to_parquet(parquet, index=False)
    on_files = (f"source.path={parquet}", "source.format=parquet", "vocab.engine=arrow")
    expected = run_vocab_job(spark, _cfg(tmp_path / "classic", None, *on_files)).content_hash
    proc = _ok(over_connect(connect_url, "vocab", _sets(tmp_path / "remote", None, *on_files)))
    assert hash_of(proc) == expected


@pytest.mark.launch
def test_extract_features_and_drift_over_connect_equal_classic(spark, connect_url: str, adult_trained,
                                                              held_out: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from embedlib.spark.extract import run_extract_job, run_features_job
    from embedlib.spark.runs import run_drift_job
    from embedlib.spark.score import run_score_job

    copy_run(adult_trained[0], tmp_path / "classic")
    copy_run(adult_trained[0], tmp_path / "remote")
    sets = _sets(tmp_path / "remote", held_out, "features.flatten=true")
    remote = _cfg(tmp_path / "remote", held_out, "features.flatten=true")
    # the Connect clients (sessions of their own on the server, writing under remote/) and the classic jobs
    # (under classic/) go at once; the three commands of a run depend on none of the others
    with ThreadPoolExecutor(max_workers=3) as pool:
        clients = [pool.submit(over_connect, connect_url, command, sets) for command in ("extract", "features", "score")]
        cfg = _cfg(tmp_path / "classic", held_out, "features.flatten=true")
        embeddings, _ = run_extract_job(spark, cfg)
        features = run_features_job(spark, cfg)
        run_score_job(spark, cfg)
        drift = run_drift_job(spark, cfg)
        for client in clients:
            _ok(client.result())
    for path_classic, path_remote, key in ((embeddings, remote.layout.embeddings, ["column", "index"]),
                                           (features, remote.features_output, ["row_id"])):
        a, b = _table(path_classic, key), _table(path_remote, key)
        assert len(a) > 0
        pd.testing.assert_frame_equal(b, a)
    report = over_connect(connect_url, "drift", sets)
    assert report.returncode in (0, 3), report.stderr[-3000:]  # 3: an alert, the same as classic's

    def same(lines: list[str], root: Path) -> list[str]:  # the runs' start times and folders aside
        return [re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d(:\d\d)?", "<time>", line).replace(str(root), "<run>")
                for line in lines]

    assert same(report.stdout.splitlines(), tmp_path / "remote") == same(drift, tmp_path / "classic")
    assert len(drift) > 3


@pytest.mark.launch
def test_stream_over_connect_scores_each_file_once(spark, connect_url: str, adult_trained, held_out: Path,
                                                   tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`embedlib score --stream` over Connect: the micro-batches run in the server's Python process,
    commit once each, and a second catch-up run scores only the file that arrived since."""
    copy_run(adult_trained[0], tmp_path)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    rows = pd.read_parquet(held_out)
    rows.iloc[:1000].to_parquet(incoming / "part-0.parquet", index=False)
    sets = [*_sets(tmp_path, incoming), "delta.engine=delta-rs", "score.stream.max_files_per_trigger=1"]
    first = _ok(over_connect(connect_url, "score", sets, "--stream"))
    assert "streamed 1,000 rows" in first.stdout, first.stdout
    rows.iloc[1000:2500].to_parquet(incoming / "part-1.parquet", index=False)
    _ok(over_connect(connect_url, "score", sets, "--stream"))
    cfg = _cfg(tmp_path, incoming)
    got = _table(cfg.scores_output)
    assert got["row_id"].tolist() == list(range(2500))
    summaries = DeltaTable(cfg.layout.score_runs).to_pandas()
    assert sorted(summaries["rows"]) == [1000, 1500] and summaries["run_id"].str.startswith("stream-").all()


@pytest.mark.launch
def test_horovod_over_connect_names_the_alternative(connect_url: str, adult_trained, held_out: Path,
                                                     tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    copy_run(adult_trained[0], tmp_path)
    proc = over_connect(connect_url, "train", _sets(tmp_path, held_out, "train.backend=horovod",
                                                    "train.num_workers=2"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "needs a classic Spark session" in proc.stderr and "train.backend=torch_distributor" in proc.stderr


@pytest.mark.launch
@pytest.mark.slow
def test_spark_remote_local_starts_its_own_server_and_scores_as_classic(
        spark, adult_trained, held_out: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``SPARK_REMOTE=local[2] embedlib score`` (a local Connect server started by the run, with the
    Delta connector's jars): the classic job's scores. Slow (~20 s: a JVM of its own), the one test
    that starts a server the way a user's first try does."""
    from embedlib.spark.score import run_score_job

    copy_run(adult_trained[0], tmp_path / "classic")
    classic_cfg = _cfg(tmp_path / "classic", held_out)
    run_score_job(spark, classic_cfg)
    copy_run(adult_trained[0], tmp_path / "remote")
    _ok(over_connect("local[2]", "score", _sets(tmp_path / "remote", held_out), *spark_sets()))
    remote = _table(_cfg(tmp_path / "remote", held_out).scores_output)
    np.testing.assert_allclose(remote["anomaly_score"], _table(classic_cfg.scores_output)["anomaly_score"],
                               rtol=1e-9, atol=1e-9)


@pytest.mark.launch
def test_a_task_failure_over_connect_is_one_line(connect_url: str, adult_trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Bad input found inside a task (a ±inf numeric, ``inf_policy: error``) reaches a Connect client
    wrapped in gRPC's error, and is still the one line and exit code 2 of a classic run
    (``tests/test_bad_input.py::test_task_failure_leaves_no_stack_trace_on_stderr``)."""
    rows = adult_pandas(ADULT_TEST).head(50)
    rows["age"] = rows["age"].astype(float)
    rows.loc[[1, 7], "age"] = -np.inf
    rows.to_parquet(tmp_path / "inf.parquet", index=False)
    copy_run(adult_trained[0], tmp_path)
    proc = over_connect(connect_url, "score", [f"output_dir={tmp_path}", f"source.path={ADULT_DATA}",
                                               f"score.source.path={tmp_path / 'inf.parquet'}",
                                               "score.source.format=parquet"])
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "ERROR embedlib: score failed: numeric column 'age' has 2 infinite value(s)" in proc.stderr, \
        proc.stderr[-3000:]
    for trace in ("Traceback", "\tat org.apache", "\tat java.", "PythonException", "SparkConnectGrpcException"):
        assert trace not in proc.stderr, proc.stderr[-3000:]
