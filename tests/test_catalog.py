"""Catalog tables (catalog.schema.table) as sources and outputs.

Reading a catalog table works on any session (here: a Parquet table in the test
session's warehouse, through `spark_catalog.default`). Writing the run's Delta
tables to a catalog needs the Spark Delta connector: the test session has it (the
session catalog is Delta's, over a local warehouse), and the whole pipeline runs
on catalog tables; with ``delta.engine: delta-rs`` every job refuses a catalog
output up front, naming the table and what to do, before doing any work.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest

from embedlib.cli import main
from embedlib.core.config import ConfigError, load_config
from embedlib.core.layout import RunLayout
from embedlib.spark.tables import TableError

from .conftest import ADULT_CONF, ADULT_DATA, ADULT_TEST, BASE_CONF, copy_run, tables_of


def cfg_with(*sets: str):  # type: ignore[no-untyped-def]
    return load_config([BASE_CONF, ADULT_CONF], [f"source.path={ADULT_DATA}", *sets])


@contextmanager
def parquet_table(spark, name: str, rows):  # type: ignore[no-untyped-def]
    """``rows`` saved as the Parquet catalog table ``name`` (not Delta: no connector here), dropped after."""
    rows.write.mode("overwrite").format("parquet").saveAsTable(name)
    try:
        yield name
    finally:
        spark.sql(f"DROP TABLE IF EXISTS {name}")


def held_out_rows(spark):  # type: ignore[no-untyped-def]
    """adult.test as the demo config reads it."""

    return tables_of(spark).read_source(cfg_with().source.with_target(str(ADULT_TEST)))


def test_output_schema_makes_every_table_a_catalog_table(tmp_path: Path) -> None:
    cfg = cfg_with(f"output_dir={tmp_path}", "output_schema=main.fraud")
    layout = cfg.layout
    assert layout.vocab == "main.fraud.adult_demo_vocab"  # '-' in the run name becomes '_'
    assert (layout.embeddings, layout.features, layout.scores, layout.score_runs) == (
        "main.fraud.adult_demo_embeddings", "main.fraud.adult_demo_features",
        "main.fraud.adult_demo_scores", "main.fraud.adult_demo_score_runs")
    assert layout.bundle == f"{tmp_path}/adult-demo/bundle"  # files stay under output_dir
    assert RunLayout(str(tmp_path), "adult-demo").vocab == f"{tmp_path}/adult-demo/vocab"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("output_schema=main", "key 'output_schema' must be catalog.schema"),
        ("output_schema=main.fraud.x", "key 'output_schema' must be catalog.schema"),
        ("score.output=main.sch.bad-name", r"key 'score\.output' must be a path or a catalog table.*\./main"),
        ("features.output=a..b", r"key 'features\.output' must be a path or a catalog table"),
        ("score.source=main.s.t t", r"key 'score\.source' must be a path or a catalog table"),
    ],
)
def test_bad_catalog_names_are_refused(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        cfg_with(override)


def test_outputs_are_paths_or_three_part_names() -> None:
    cfg = cfg_with("score.output=main.fraud.scores", "features.output=./my.features.v1",
                   "score.source=main.fraud.new_rows")
    assert cfg.score.output == "main.fraud.scores"
    assert cfg.source.with_target(cfg.score.source).table == "main.fraud.new_rows"
    assert cfg.source.with_target(cfg.score.source).path is None
    assert cfg.source.with_target(cfg.features.output).path == "./my.features.v1"
    assert cfg.source.with_target(None) == cfg.source


def test_catalog_output_without_connector_fails_before_any_work(spark, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    args = ["--conf", str(BASE_CONF), "--conf", str(ADULT_CONF), "--set", f"output_dir={tmp_path}",
            "--set", f"source.path={ADULT_DATA}", "--set", "output_schema=spark_catalog.default",
            "--set", "delta.engine=delta-rs"]
    assert main(["vocab", *args]) == 2
    assert "catalog table spark_catalog.default.adult_demo_vocab needs the Spark Delta connector" in caplog.text
    assert "io.delta:delta-spark_" in caplog.text and "unset output_schema" in caplog.text
    assert not (tmp_path / "adult-demo").exists()
    assert not spark.catalog.tableExists("spark_catalog.default.adult_demo_vocab")

    from embedlib.spark.extract import run_features_job
    from embedlib.spark.score import run_score_job

    # checked before the bundle is even looked for (there is none here)
    with pytest.raises(TableError, match="catalog table spark_catalog.default.scores needs"):
        run_score_job(spark, cfg_with(f"output_dir={tmp_path}", "score.output=spark_catalog.default.scores",
                                      "delta.engine=delta-rs"))
    with pytest.raises(TableError, match="catalog table spark_catalog.default.features needs"):
        run_features_job(spark, cfg_with(f"output_dir={tmp_path}", "features.output=spark_catalog.default.features",
                                         "delta.engine=delta-rs"))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_pipeline_on_catalog_tables_with_the_connector(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A Delta catalog table as the source and ``output_schema`` for every run table: vocab, train,
    extract, score (twice: the rerun adds nothing) and features, all through the connector."""
    import json

    from embedlib.spark.extract import run_features_job

    spark.sql("CREATE SCHEMA IF NOT EXISTS spark_catalog.embedlib_it")
    source = "spark_catalog.embedlib_it.adult_rows"
    held_out_rows(spark).limit(4000).write.format("delta").mode("overwrite").saveAsTable(source)
    sets = [f"output_dir={tmp_path}", "output_schema=spark_catalog.embedlib_it", "source.path=null",
            f"source.table={source}",
            "score.source=null", "delta.engine=connector", "train.max_rows=3000", "train.epochs=2",
            "model.size=medium", "features.output=spark_catalog.embedlib_it.adult_features"]
    args = ["--conf", str(BASE_CONF), "--conf", str(ADULT_CONF)] + [a for s in sets for a in ("--set", s)]
    try:
        assert main(["run", *args]) == 0
        cfg = load_config([BASE_CONF, ADULT_CONF], sets)
        layout = cfg.layout
        for table in (layout.vocab, layout.embeddings, layout.scores, layout.score_runs):
            assert spark.catalog.tableExists(table), table
            assert spark.sql(f"DESCRIBE DETAIL {table}").first()["format"] == "delta"
        assert tables_of(spark).read(layout.scores).count() == 4000
        history = spark.sql(f"DESCRIBE HISTORY {layout.scores}").orderBy("version").collect()
        # version 0 creates the table empty; version 1 holds the run's rows and embedlib's metadata
        assert [r["version"] for r in history] == [0, 1]
        meta = json.loads(history[1]["userMetadata"])
        assert meta["source"] == source and meta["run_id"].endswith(meta["bundle_id"])
        assert main(["score", *args]) == 0  # the same source version: the same run id, nothing added
        assert tables_of(spark).read(layout.scores).count() == 4000
        assert tables_of(spark).read(layout.score_runs).count() == 1
        assert run_features_job(spark, cfg) == "spark_catalog.embedlib_it.adult_features"
        assert tables_of(spark).read("spark_catalog.embedlib_it.adult_features").count() == 4000
    finally:
        spark.sql("DROP SCHEMA IF EXISTS spark_catalog.embedlib_it CASCADE")


@pytest.mark.timeout(600)
def test_score_a_catalog_table_same_as_its_file(spark, adult_trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from pyspark.sql import functions as F

    from embedlib.spark.score import run_score_job

    copy_run(adult_trained[0], tmp_path / "run")
    with parquet_table(spark, "spark_catalog.default.adult_test_rows", held_out_rows(spark)) as table:
        by_table = run_score_job(spark, cfg_with(f"output_dir={tmp_path / 'run'}", f"score.source={table}",
                                                 f"score.output={tmp_path / 'from_table'}"))
        by_path = run_score_job(spark, cfg_with(f"output_dir={tmp_path / 'run'}", f"score.source={ADULT_TEST}",
                                                f"score.output={tmp_path / 'from_path'}"))
    assert by_table.source == table and by_table.rows == by_path.rows == 16281
    assert by_table.anomalies == by_path.anomalies and by_table.bundle_id == by_path.bundle_id

    def scores(path: Path) -> list[float]:
        frame = tables_of(spark).read(str(path)).select(F.round("anomaly_score", 9).alias("s"))
        return sorted(r["s"] for r in frame.collect())

    assert scores(tmp_path / "from_table") == scores(tmp_path / "from_path")


def test_evaluate_plants_in_a_catalog_table_as_in_its_file(spark, adult_trained) -> None:  # type: ignore[no-untyped-def]
    from embedlib.core.bundle import load_bundle
    from embedlib.evaluate import EvaluateOptions, planted_set

    bundle = load_bundle(adult_trained[0].layout.bundle)
    opts = EvaluateOptions(plant=0.02, seed=5)
    with parquet_table(spark, "spark_catalog.default.adult_test_planted", held_out_rows(spark)) as table:
        by_table = planted_set(tables_of(spark), cfg_with(f"score.source={table}"), bundle, opts)
        by_path = planted_set(tables_of(spark), cfg_with(f"score.source={ADULT_TEST}"), bundle, opts)
    assert table in by_table.description and len(by_table.labels) == 16281
    assert int(by_table.labels.sum()) == 326
    assert (by_table.labels == by_path.labels).all()
    assert by_table.scores == pytest.approx(by_path.scores, abs=1e-9)


@pytest.mark.timeout(600)
def test_a_changed_parquet_catalog_table_is_scored_again(spark, adult_trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The default run id follows a non-Delta table's files: unchanged → a rerun, changed → a new run."""
    from embedlib.spark.score import run_score_job

    copy_run(adult_trained[0], tmp_path / "run")
    rows = held_out_rows(spark)
    with parquet_table(spark, "spark_catalog.default.adult_daily_rows", rows.limit(1000)) as table:
        score_cfg = cfg_with(f"output_dir={tmp_path / 'run'}", f"score.source={table}")
        first = run_score_job(spark, score_cfg)
        again = run_score_job(spark, score_cfg)
        rows.limit(1500).write.mode("overwrite").format("parquet").saveAsTable(table)  # the next day's rows
        changed = run_score_job(spark, score_cfg)
    assert first.written and first.rows == 1000
    assert not again.written and again.run_id == first.run_id
    assert changed.written and changed.rows == 1500 and changed.run_id != first.run_id
    assert tables_of(spark).read(first.output).count() == 2500
