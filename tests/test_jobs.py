"""Entry points: `embedlib vocab` in-process and jobs/build_vocab.py under spark-submit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from embedlib.cli import main
from embedlib.vocab import Vocabulary

from .conftest import ADULT_CONF, ADULT_DATA, BASE_CONF, ROOT, adult_args


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


@pytest.mark.timeout(600)
def test_build_vocab_job_on_local_cluster_equals_local(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Adult as 4 Parquet files, so both executors get work
    from embedlib.config import load_config
    from embedlib.tables import read_source

    from .conftest import adult_pandas  # noqa: F401  (same data, read by Spark below)

    src = str(tmp_path / "adult_parquet")
    read_source(spark, load_config([BASE_CONF, ADULT_CONF], [f"source.path={ADULT_DATA}"]).source) \
        .repartition(4).write.parquet(src)
    sets = ["--set", f"source.path={src}", "--set", "source.format=parquet",
            "--set", "source.options={}", "--set", "source.schema=null"]

    assert main(["vocab", *adult_args(tmp_path / "local"), *sets]) == 0

    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    cmd = [
        str(Path(sys.executable).parent / "spark-submit"),
        "--master", "local-cluster[2,1,1024]",
        "--conf", "spark.executor.memory=768m",
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
