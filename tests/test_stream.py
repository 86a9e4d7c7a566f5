"""``embedlib score --stream``: Structured Streaming over files and Delta, each micro-batch one
idempotent Delta commit — files arriving in steps, a query killed mid-commit and restarted, a
batch re-run after its commit landed, a file whose columns changed, both Delta engines."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml
from deltalake import DeltaTable, write_deltalake

from embedlib.core.config import load_config
from embedlib.core.vocab import SchemaError
from embedlib.spark.score import run_score_job
from embedlib.spark.stream import APP_PREFIX, checkpoint_of, run_score_stream, start_score_stream
from embedlib.spark.tables import TableError

from .conftest import ADULT_CONF, ADULT_TEST, BASE_CONF, adult_pandas, cli


@pytest.fixture(scope="module")
def test_rows() -> pd.DataFrame:
    """adult.test with a ``row_id`` column, so duplicates and losses show."""
    frame = adult_pandas(ADULT_TEST)
    frame.insert(0, "row_id", range(len(frame)))
    return frame


def stream_sets(out: Path, source: Path, engine: str, fmt: str = "parquet", *extra: str) -> list[str]:
    return [f"output_dir={out}", f"source.path={source}", f"source.format={fmt}", "source.options={}",
            "source.schema=null", f"score.source={source}", "columns.id=[row_id]", "score.batch_size=2000",
            f"delta.engine={engine}", *extra]


def stream_cfg(out: Path, source: Path, engine: str, fmt: str = "parquet", *extra: str):  # type: ignore[no-untyped-def]
    return load_config([BASE_CONF, ADULT_CONF], stream_sets(out, source, engine, fmt, *extra))


def scores(out: Path) -> pd.DataFrame:
    return DeltaTable(str(out / "adult-demo" / "scores")).to_pandas()


def summaries(out: Path) -> pd.DataFrame:
    return DeltaTable(str(out / "adult-demo" / "score_runs")).to_pandas()


def arrive(folder: Path, frame: pd.DataFrame, name: str) -> None:
    """A file lands in the source folder atomically (written aside, then moved in)."""
    folder.mkdir(exist_ok=True)
    aside = folder.parent / f".{name}"
    frame.to_parquet(aside, index=False)
    aside.rename(folder / name)


def test_files_arriving_in_steps_are_scored_once_as_the_batch_job_scores_them(  # type: ignore[no-untyped-def]
        spark, run_dir: Path, test_rows: pd.DataFrame, delta_engine: str) -> None:
    incoming = run_dir / "incoming"
    parts = np.array_split(np.arange(len(test_rows)), 3)
    arrive(incoming, test_rows.iloc[parts[0]], "part-0.parquet")
    cfg = stream_cfg(run_dir, incoming, delta_engine, "parquet", "score.stream.max_files_per_trigger=1")
    first = run_score_stream(spark, cfg)
    assert [r.rows for r in first] == [len(parts[0])] and all(r.written for r in first)
    arrive(incoming, test_rows.iloc[parts[1]], "part-1.parquet")
    arrive(incoming, test_rows.iloc[parts[2]], "part-2.parquet")
    second = run_score_stream(spark, cfg)  # one file per micro-batch: two batches
    assert [r.rows for r in second] == [len(parts[1]), len(parts[2])]
    got = scores(run_dir)
    assert len(got) == len(test_rows) and set(got["row_id"]) == set(test_rows["row_id"])
    table = DeltaTable(str(run_dir / "adult-demo" / "scores"))
    query_id = first[0].run_id.split("-", 1)[1].rsplit("-", 1)[0]
    assert table.transaction_version(APP_PREFIX + query_id) == 2  # batch ids 0, 1, 2
    runs = summaries(run_dir).sort_values("run_id")
    assert runs["run_id"].tolist() == [f"stream-{query_id}-{i}" for i in range(3)]
    assert runs["rows"].tolist() == [len(p) for p in parts]
    assert runs["anomalies"].sum() == got["is_anomaly"].sum()

    # the same rows as the batch job scores them: same scores, flags and reasons
    whole = run_dir / "whole.parquet"
    test_rows.to_parquet(whole, index=False)
    batch_out = run_dir / "batch"
    shutil.copytree(run_dir / "adult-demo", batch_out / "adult-demo",
                    ignore=shutil.ignore_patterns("scores", "score_runs", "_work"))
    run_score_job(spark, load_config([BASE_CONF, ADULT_CONF], stream_sets(batch_out, whole, delta_engine)))
    both = got.merge(scores(batch_out), on="row_id", suffixes=("", "_batch"))
    assert len(both) == len(test_rows)
    assert np.allclose(both["anomaly_score"], both["anomaly_score_batch"], atol=1e-9, rtol=0)
    assert (both["is_anomaly"] == both["is_anomaly_batch"]).all()
    assert [None if rs is None else [r["column"] for r in rs] for rs in both["reasons"]] == \
        [None if rs is None else [r["column"] for r in rs] for rs in both["reasons_batch"]]
    assert both["reasons"].notna().tolist() == both["is_anomaly"].tolist()  # score.detail: flagged
    assert (both["run_id"].str.startswith(f"stream-{query_id}-")).all()  # each micro-batch's own run id

    # nothing new: no micro-batch, no commit
    version = table.version()
    assert run_score_stream(spark, cfg) == []
    assert DeltaTable(str(run_dir / "adult-demo" / "scores")).version() == version
    # the query stopped after its last commit landed and before the checkpoint recorded the batch:
    # the restarted query runs batch 2 again, and its commit (same app id and version) is skipped
    commits = Path(checkpoint_of(cfg, cfg.source.with_target(cfg.score.source))) / "commits"
    for name in ("2", ".2.crc"):
        (commits / name).unlink()
    again = run_score_stream(spark, cfg)
    assert [(r.run_id, r.written) for r in again] == [(f"stream-{query_id}-2", False)]
    assert DeltaTable(str(run_dir / "adult-demo" / "scores")).version() == version
    assert len(scores(run_dir)) == len(test_rows) and len(summaries(run_dir)) == 3


@pytest.mark.launch
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_stream_killed_mid_commit_restarts_without_loss_or_duplicates(  # type: ignore[no-untyped-def]
        spark, run_dir: Path, test_rows: pd.DataFrame, delta_engine: str, capsys) -> None:
    """Only the query that dies is a process of its own: the first run and the restart are the same
    ``embedlib score --stream`` in this process, on the test session."""
    from embedlib.cli import main

    incoming = run_dir / "incoming"
    half = len(test_rows) // 2
    arrive(incoming, test_rows.iloc[:half], "part-0.parquet")
    args = ["--conf", str(BASE_CONF), "--conf", str(ADULT_CONF), "--stream"]
    for item in stream_sets(run_dir, incoming, delta_engine):
        args += ["--set", item]
    assert main(["score", *args]) == 0
    assert f"streamed {half:,} rows" in capsys.readouterr().out
    arrive(incoming, test_rows.iloc[half:], "part-1.parquet")
    table = run_dir / "adult-demo" / "scores"
    version = DeltaTable(str(table)).version()
    # the process dies with the second micro-batch's data files written and not committed
    proc = cli("score", args, faults="commit.kill=1")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert DeltaTable(str(table)).version() == version and len(scores(run_dir)) == half
    assert main(["score", *args]) == 0
    got = scores(run_dir)
    assert len(got) == len(test_rows) and got["row_id"].is_unique
    assert summaries(run_dir)["rows"].sort_values().tolist() == sorted([half, len(test_rows) - half])


def test_a_new_file_with_other_columns_stops_the_stream_before_writing(  # type: ignore[no-untyped-def]
        spark, run_dir: Path, test_rows: pd.DataFrame) -> None:
    incoming = run_dir / "incoming"
    arrive(incoming, test_rows.iloc[:1000], "part-0.parquet")
    cfg = stream_cfg(run_dir, incoming, "delta-rs")
    run_score_stream(spark, cfg)
    version = DeltaTable(str(run_dir / "adult-demo" / "scores")).version()
    arrive(incoming, test_rows.iloc[1000:2000].drop(columns=["occupation"]), "part-1.parquet")
    with pytest.raises(SchemaError, match=r"new file .*part-1.parquet lacks column\(s\) occupation"):
        run_score_stream(spark, cfg)
    as_text = test_rows.iloc[1000:2000].astype({"age": str})
    as_text.to_parquet(incoming / "part-1.parquet", index=False)  # rewritten in place: still wrong
    with pytest.raises(SchemaError, match="column 'age' of new file .*part-1.parquet is string, the stream "
                                          "reads it as bigint"):
        run_score_stream(spark, cfg)
    assert DeltaTable(str(run_dir / "adult-demo" / "scores")).version() == version
    assert len(scores(run_dir)) == 1000 and len(summaries(run_dir)) == 1
    test_rows.iloc[1000:2000].to_parquet(incoming / "part-1.parquet", index=False)  # fixed in place
    assert [r.rows for r in run_score_stream(spark, cfg)] == [1000]
    assert len(scores(run_dir)) == 2000 and scores(run_dir)["row_id"].is_unique


def test_a_delta_source_streams_through_the_connector_on_a_running_query(  # type: ignore[no-untyped-def]
        spark, run_dir: Path, test_rows: pd.DataFrame) -> None:
    source = run_dir / "source_delta"
    write_deltalake(str(source), pa.Table.from_pandas(test_rows.iloc[:3000], preserve_index=False))
    cfg = stream_cfg(run_dir, source, "connector", "delta", "score.stream.trigger=1 second")
    stream = start_score_stream(spark, cfg)
    try:
        stream.query.processAllAvailable()
        write_deltalake(str(source), pa.Table.from_pandas(test_rows.iloc[3000:5000], preserve_index=False),
                        mode="append")
        stream.query.processAllAvailable()
        deadline = time.monotonic() + 120
        while sum(r.rows for r in stream.runs) < 5000 and time.monotonic() < deadline:
            time.sleep(1)
    finally:
        stream.query.stop()
    assert stream.error is None
    assert sorted(r.rows for r in stream.runs) == [2000, 3000]
    got = scores(run_dir)
    assert len(got) == 5000 and set(got["row_id"]) == set(range(5000))
    with pytest.raises(TableError, match="streaming from Delta table .* needs the "
                                                                        "Spark Delta connector"):
        start_score_stream(spark, stream_cfg(run_dir, source, "delta-rs", "delta"))


def test_stream_settings_that_cannot_hold_are_refused(spark, run_dir: Path, test_rows: pd.DataFrame) -> None:  # type: ignore[no-untyped-def]
    from embedlib.core.config import ConfigError

    incoming = run_dir / "incoming"
    arrive(incoming, test_rows.iloc[:100], "part-0.parquet")
    with pytest.raises(TableError, match="score.mode=overwrite: a stream appends"):
        start_score_stream(spark, stream_cfg(run_dir, incoming, "delta-rs", "parquet", "score.mode=overwrite"))
    with pytest.raises(TableError, match="unset score.run_id"):
        start_score_stream(spark, stream_cfg(run_dir, incoming, "delta-rs", "parquet", "score.run_id=r1"))
    with pytest.raises(ConfigError, match="score.stream.trigger.*must be availableNow or an interval"):
        stream_cfg(run_dir, incoming, "delta-rs", "parquet", "score.stream.trigger=soon")
    with pytest.raises(TableError, match="none could be read.*add a file first or set source.schema"):
        start_score_stream(spark, stream_cfg(run_dir, run_dir / "empty", "delta-rs", "parquet"))
    assert not (run_dir / "adult-demo" / "scores").exists()


def test_a_csv_stream_checks_each_new_file_s_header(spark, run_dir: Path, test_rows: pd.DataFrame) -> None:  # type: ignore[no-untyped-def]
    incoming = run_dir / "csv_incoming"
    incoming.mkdir()

    def arrive_csv(frame: pd.DataFrame, name: str) -> None:
        aside = run_dir / f".{name}"
        frame.to_csv(aside, index=False)
        aside.rename(incoming / name)

    arrive_csv(test_rows.iloc[:1500], "part-0.csv")
    # a schema of its own (Spark maps a CSV's columns by position; the header is checked by name)
    ddl = "row_id INT, " + yaml.safe_load(ADULT_CONF.read_text())["source"]["schema"]
    cfg = stream_cfg(run_dir, incoming, "delta-rs", "csv", "source.options={header: true}",
                     f"source.schema={json.dumps(ddl)}")
    assert [r.rows for r in run_score_stream(spark, cfg)] == [1500]
    arrive_csv(test_rows.iloc[1500:2500].drop(columns=["education"]), "part-1.csv")
    with pytest.raises(SchemaError, match=r"new file .*part-1.csv lacks column\(s\) education"):
        run_score_stream(spark, cfg)
    assert len(scores(run_dir)) == 1500
    test_rows.iloc[1500:2500].to_csv(incoming / "part-1.csv", index=False)  # fixed in place
    assert [r.rows for r in run_score_stream(spark, cfg)] == [1000]
    got = scores(run_dir)
    assert len(got) == 2500 and set(got["row_id"]) == set(range(2500))
