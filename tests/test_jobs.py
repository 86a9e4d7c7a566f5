"""Entry points: `embedlib vocab` in-process and jobs/build_vocab.py under spark-submit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from embedlib.cli import main
from embedlib.core.vocab import Vocabulary

from .conftest import ADULT_CONF, ADULT_DATA, BASE_CONF, ROOT, adult_args, submit_conf, tables_of


def test_cli_vocab_prints_summary(spark, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["vocab", *adult_args(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"vocabulary written to {tmp_path}/adult-demo/vocab" in out
    assert "native-country" in out and "United-States (29,170)" in out
    assert Vocabulary.load_delta(f"{tmp_path}/adult-demo/vocab").meta["row_count"] == 32561


def test_cli_bad_input_exits_2_with_message(spark, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    assert main(["vocab", *adult_args(tmp_path, "--set", "vocab.min_cnt=3")]) == 2
    assert "unknown key 'vocab.min_cnt'" in caplog.text
    caplog.clear()
    assert main(["vocab", *adult_args(tmp_path, "--set", "columns.numeric=[age, fnlwgt, capital-gain, capital-loss, salary]")]) == 2
    assert "lacks column(s) salary" in caplog.text
    assert not (tmp_path / "adult-demo" / "vocab").exists()


def test_cli_training_error_is_a_message(spark, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    assert main(["vocab", *adult_args(tmp_path)]) == 0
    code = main(["train", *adult_args(tmp_path, "--set", "train.backend=torch_distributor",
                                      "--set", "train.num_workers=64")])
    assert code == 2
    assert "train.num_workers=64 but there are only" in caplog.text
    assert not (tmp_path / "adult-demo" / "bundle").exists()
    assert not (tmp_path / "adult-demo" / "_work").exists()  # refused before any encoding


@pytest.mark.launch
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_build_vocab_job_on_local_cluster_equals_local(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Adult as 4 Parquet files, so both executors get work
    from embedlib.core.config import load_config

    from .conftest import adult_pandas  # noqa: F401  (same data, read by Spark below)

    src = str(tmp_path / "adult_parquet")
    tables_of(spark).read_source(load_config([BASE_CONF, ADULT_CONF], [f"source.path={ADULT_DATA}"]).source) \
        .repartition(4).write.parquet(src)
    sets = ["--set", f"source.path={src}", "--set", "source.format=parquet",
            "--set", "source.options={}", "--set", "source.schema=null"]

    assert main(["vocab", *adult_args(tmp_path / "local"), *sets]) == 0

    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    cmd = [
        str(Path(sys.executable).parent / "spark-submit"),
        "--master", "local-cluster[2,1,1024]",
        "--conf", "spark.executor.memory=768m", *submit_conf(),
        "--conf", "spark.ui.enabled=false",
        "--conf", f"spark.pyspark.python={sys.executable}",
        "jobs/build_vocab.py", *adult_args(tmp_path / "cluster"), *sets,
        "--set", "spark.conf={spark.sql.shuffle.partitions: '4'}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "vocabulary written to" in proc.stdout
    local = Vocabulary.load_delta(str(tmp_path / "local" / "adult-demo" / "vocab"))
    cluster = Vocabulary.load_delta(str(tmp_path / "cluster" / "adult-demo" / "vocab"))
    assert cluster.to_arrow().equals(local.to_arrow())
    assert cluster.content_hash == local.content_hash
    assert cluster.meta["row_count"] == 32561


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_job_gives_the_same_tables_on_both_delta_engines(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """vocab, train, extract, score, features and evaluate with delta.engine connector and delta-rs:
    the same vocabulary, embeddings, scores and design matrix, each table read by the other engine."""
    from pyspark.sql import functions as F

    from .conftest import ENGINES

    small = ["train.max_rows=2000", "train.epochs=1", "model.size=medium", "score.run_id=r1"]
    outs = {}
    for engine in ENGINES:
        out = tmp_path / engine
        args = adult_args(out, "--set", f"delta.engine={engine}", *[a for s in small for a in ("--set", s)])
        assert main(["run", *args]) == 0, engine
        assert main(["features", *args]) == 0, engine
        assert main(["evaluate", *args, "--plant", "0.02"]) == 0, engine
        assert main(["score", *args]) == 0  # the same run id again: nothing added
        outs[engine] = out / "adult-demo"

    def rows(root: Path, table: str, reader: str) -> list[tuple]:
        """The table's rows, doubles rounded, in a total order (list, map and struct columns as text);
        the bundle id aside (it hashes the training metrics, timings included), and so the run's id (it
        holds the bundle id) and time."""
        frame = tables_of(spark, reader).read(str(root / table)).drop("bundle_id", "run_id", "scored_at")
        frame = frame.select([F.round(c, 9).alias(c) if t in ("double", "float") else F.col(c).cast("string")
                              .alias(c) if t.startswith(("array", "map", "struct")) else F.col(c)
                              for c, t in frame.dtypes])
        return sorted((tuple(r) for r in frame.collect()), key=repr)

    connector, delta_rs = outs["connector"], outs["delta-rs"]
    for reader in ENGINES:  # each engine reads both engines' tables
        for table in ("vocab", "embeddings", "scores", "features"):
            assert rows(connector, table, reader) == rows(delta_rs, table, reader), table
        assert tables_of(spark, reader).read(str(connector / "scores")).count() == 16281
        for root in (connector, delta_rs):  # the run's columns, typed alike whoever wrote and reads them
            types = dict(tables_of(spark, reader).read(str(root / "scores")).dtypes)
            assert (types["run_id"], types["scored_at"]) == ("string", "timestamp"), (root, reader)
        assert tables_of(spark, reader).read(str(delta_rs / "score_runs")).count() == 1
        assert tables_of(spark, reader).read(str(connector / "score_runs")).count() == 1
    assert (connector / "evaluation" / "metrics.json").exists() and (delta_rs / "evaluation" / "metrics.json").exists()


@pytest.mark.launch
def test_connector_engine_without_its_jars_is_a_clear_error(tmp_path: Path) -> None:
    """delta.engine: connector in a session embedlib starts, with no connector jars to load: exit 2,
    naming the folder and what to run, before any work."""
    empty = tmp_path / "jars"
    empty.mkdir()
    env = dict(os.environ, EMBEDLIB_JARS=str(empty), PYSPARK_PYTHON=sys.executable)
    proc = subprocess.run([sys.executable, "-m", "embedlib.cli", "vocab", *adult_args(tmp_path / "out"),
                           "--set", "delta.engine=connector", "--set", "spark.master=local[1]"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"no Delta connector jars were found in {empty}" in proc.stderr
    assert "run `make setup`" in proc.stderr and "delta-spark_4.2_2.13:4.4.0" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.launch
def test_a_connector_built_for_another_spark_is_refused_naming_both(tmp_path: Path) -> None:
    """Connector jars whose delta-spark artifact names another Spark (here the real jar, renamed as
    Spark 3.5's): exit 2 naming both versions, instead of a JVM linkage error later."""
    import re
    import shutil

    import pyspark

    from embedlib.spark.session import connector_jars

    jars = tmp_path / "jars"
    jars.mkdir()
    for jar in connector_jars():
        shutil.copy(jar, jars / re.sub(r"^delta-spark_\d+\.\d+_", "delta-spark_3.5_", os.path.basename(jar)))
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
    proc = subprocess.run([sys.executable, "-m", "embedlib.cli", "vocab", *adult_args(tmp_path / "out"),
                           "--set", f"delta.jars={jars}", "--set", "spark.master=local[1]"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"is built for Spark 3.5, but Spark is {pyspark.__version__}" in proc.stderr
    assert "delta-spark_3.5_2.13-" in proc.stderr and "delta.engine to delta-rs" in proc.stderr
    assert not (tmp_path / "out" / "adult-demo" / "vocab").exists()
