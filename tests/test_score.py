"""Extraction and scoring: Spark vs plain Python, planted anomalies, idempotent Delta writes."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from embedlib.core.bundle import BundleError, load_bundle
from embedlib.core.config import load_config
from embedlib.core.inference import score_rows
from embedlib.core.vocab import OOV_INDEX, SchemaError
from embedlib.spark.extract import (
    embedding_matrix,
    embedding_table,
    features_frame,
    run_extract_job,
    write_npz,
)
from embedlib.spark.score import run_score_job, score_frame

from .conftest import (
    ADULT_CONF,
    ADULT_TEST,
    BASE_CONF,
    ROOT,
    TRAIN_SETS,
    adult_pandas,
    copy_vocab,
    submit_conf,
)


@pytest.fixture(scope="module")
def test_rows() -> pd.DataFrame:
    frame = adult_pandas(ADULT_TEST).head(3000).copy()
    frame.insert(0, "row_id", np.arange(len(frame), dtype=np.int64))
    return frame


def odd_rows(test_rows: pd.DataFrame, n: int) -> pd.DataFrame:
    """The first ``n`` rows with an unseen country (row 0) and a missing age (row 1)."""
    rows = test_rows.head(n).copy()
    rows.loc[0, "native-country"] = "Atlantis"
    rows.loc[1, "age"] = None
    return rows


def score_cfg(run_cfg, *extra: str):  # type: ignore[no-untyped-def]
    return load_config([BASE_CONF, ADULT_CONF], [
        f"output_dir={run_cfg.output_dir}", f"source.path={run_cfg.source.path}", *TRAIN_SETS,
        f"score.source={ADULT_TEST}", *extra])


def test_spark_scores_equal_plain_python(spark, adult_trained, test_rows: pd.DataFrame) -> None:  # type: ignore[no-untyped-def]
    _, result = adult_trained
    bundle = load_bundle(result.bundle_path)
    df = spark.createDataFrame(test_rows)
    scored = score_frame(spark, df, bundle, ids=("row_id",), top_reasons=3, emit_code=True)
    assert scored.columns == ["row_id", "anomaly_score", "is_anomaly", "contributions", "reasons",
                              "calibrated_score", "calibrated_contributions", "code", "bundle_id"]
    got = pd.DataFrame(scored.toPandas()).sort_values("row_id").reset_index(drop=True)
    plain = score_rows(bundle, pa.Table.from_pandas(test_rows, preserve_index=False))
    np.testing.assert_allclose(got["anomaly_score"].to_numpy(), plain.score, rtol=0, atol=1e-6)
    assert plain.calibrated_score is not None
    np.testing.assert_allclose(got["calibrated_score"].to_numpy(), plain.calibrated_score, rtol=0, atol=1e-6)
    totals = got["contributions"].map(lambda m: sum(v for _, v in m) if isinstance(m, list) else sum(m.values()))
    np.testing.assert_allclose(totals.to_numpy(), got["anomaly_score"].to_numpy(), rtol=0, atol=1e-9)
    assert (got["is_anomaly"] == (got["calibrated_score"] > bundle.threshold)).all()
    assert (got["bundle_id"] == bundle.bundle_id).all()
    assert len(got["code"][0]) == bundle.spec.bottleneck
    top = got.loc[got["calibrated_score"].idxmax()]
    reasons = list(top["reasons"])
    calibrated = dict(top["calibrated_contributions"])
    contributions = dict(top["contributions"])
    # the reasons are the most surprising columns (score.rank_by: calibrated), each with its nats
    assert len(reasons) == 3
    assert calibrated[reasons[0]["column"]] >= calibrated[reasons[1]["column"]] >= calibrated[reasons[2]["column"]]
    assert calibrated[reasons[2]["column"]] >= max(v for c, v in calibrated.items()
                                                   if c not in {r["column"] for r in reasons})
    assert all(r["nats"] == pytest.approx(contributions[r["column"]]) for r in reasons)
    for reason in reasons:
        if reason["column"] in bundle.spec.categorical:
            assert 0 < reason["probability"] <= 1
            assert reason["expected"] in set(bundle.vocab[reason["column"]].values) | {"<null>", "<other>"}


def test_unseen_and_null_values_score_through_reserved_rows(spark, adult_trained, test_rows: pd.DataFrame) -> None:  # type: ignore[no-untyped-def]
    _, result = adult_trained
    bundle = load_bundle(result.bundle_path)
    rows = odd_rows(test_rows, 4)
    rows.loc[2, "workclass"] = None
    scored = score_frame(spark, spark.createDataFrame(rows), bundle, ids=("row_id",), top_reasons=14)
    got = {r["row_id"]: r for r in scored.collect()}
    assert len(got) == 4 and all(np.isfinite(r["anomaly_score"]) for r in got.values())
    reason = {x["column"]: x for x in got[0]["reasons"]}["native-country"]
    assert reason["value"] == "Atlantis"
    assert {x["column"]: x for x in got[2]["reasons"]}["workclass"]["value"] == "<null>"
    assert {x["column"]: x for x in got[1]["reasons"]}["age"]["nats"] == 0.0


def test_detects_planted_anomalies_better_than_baselines(spark, adult_trained) -> None:  # type: ignore[no-untyped-def]
    """Ours vs the seed design (MSE on embedding output) vs IsolationForest, same rows."""
    import json

    from sklearn.metrics import roc_auc_score

    from embedlib.core.baselines import fit_mse_autoencoder, isolation_forest_scores, mse_scores
    from embedlib.core.encode import Encoded, ShardSet, read_shards
    from embedlib.core.layout import read_text
    from embedlib.evaluate import plant_anomalies

    cfg, result = adult_trained
    bundle = load_bundle(result.bundle_path)
    held_out = adult_pandas(ADULT_TEST)  # all 16,281 held-out rows; the model never saw them
    planted, labels = plant_anomalies(held_out, bundle.spec.columns, fraction=0.02, seed=3)
    assert labels.sum() == 326
    test_table = pa.Table.from_pandas(planted, preserve_index=False)
    ours = score_rows(bundle, test_table).score

    shards = ShardSet.from_dict(json.loads(read_text(f"{cfg.layout.work}/encoded/_shards.json") or "{}"))
    parts = list(read_shards(shards.train_files, bundle.encoder))
    train = Encoded(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("cat", "num", "missing")))
    test_enc = bundle.encoder.arrays(test_table)
    mse_model = fit_mse_autoencoder(train, bundle.spec, epochs=cfg.train.epochs, batch_size=cfg.train.batch_size,
                                    learning_rate=cfg.train.learning_rate, seed=cfg.train.seed)
    seed_design = mse_scores(mse_model, test_enc)
    forest = isolation_forest_scores(train, test_enc, bundle.spec.cardinalities, seed=0)

    auc = {name: roc_auc_score(labels, s) for name, s in
           (("ours", ours), ("mse", seed_design), ("iforest", forest))}
    print("AUROC", {k: round(v, 4) for k, v in auc.items()})
    # floor and margins measured on this data and seed (see the closing note of the scoring issue)
    assert auc["ours"] >= 0.68, auc
    assert auc["ours"] > auc["mse"] + 0.02, auc
    assert auc["ours"] > auc["iforest"] + 0.08, auc


def test_extracted_matrices_match_the_model(spark, adult_trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, result = adult_trained
    bundle = load_bundle(result.bundle_path)
    table = embedding_table(bundle)
    sizes = sum(bundle.vocab.size(c) for c in bundle.spec.categorical)
    assert table.num_rows == sizes
    for row in table.to_pylist():
        matrix = embedding_matrix(bundle, row["column"])
        np.testing.assert_array_equal(np.asarray(row["vector"], dtype=np.float32), matrix[row["index"]])
        if row["index"] >= 2:
            assert bundle.vocab.lookup(row["column"], pa.array([row["value"]]))[0] == row["index"]
        else:
            assert row["value"] is None
    npz = write_npz(bundle, str(tmp_path / "npz"))
    data = np.load(npz[bundle.spec.categorical.index("sex")])
    assert list(data["values"][:2]) == ["<null>", "<other>"]
    np.testing.assert_array_equal(data["matrix"], embedding_matrix(bundle, "sex"))
    path, _ = run_extract_job(spark, cfg)
    back = pa.table(DeltaTable(path).to_pyarrow_table())
    assert back.num_rows == sizes and set(back.column("bundle_id").to_pylist()) == {bundle.bundle_id}


def test_features_for_new_data_use_the_oov_row(spark, adult_trained, test_rows: pd.DataFrame) -> None:  # type: ignore[no-untyped-def]
    _, result = adult_trained
    bundle = load_bundle(result.bundle_path)
    rows = odd_rows(test_rows, 3)
    flat = features_frame(spark, spark.createDataFrame(rows), bundle, ids=("row_id",), flatten=True)
    nested = features_frame(spark, spark.createDataFrame(rows), bundle, ids=("row_id",), flatten=False)
    got = {r["row_id"]: r for r in nested.collect()}
    oov_vector = embedding_matrix(bundle, "native-country")[OOV_INDEX]
    np.testing.assert_array_equal(np.asarray(got[0]["native-country"], dtype=np.float32), oov_vector)
    assert got[1]["age"] == 0.0 and got[1]["age_missing"] == 1.0
    st = bundle.vocab.numeric["age"]
    assert got[0]["age"] == pytest.approx((rows.loc[0, "age"] - st.mean) / st.scale)
    dim = bundle.spec.embedding_dims[bundle.spec.categorical.index("native-country")]
    frow = {r["row_id"]: r for r in flat.collect()}[0]
    assert [frow[f"native-country_e{d}"] for d in range(dim)] == pytest.approx(oov_vector.tolist())


def test_score_job_is_idempotent_and_atomic(spark, adult_trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, _ = adult_trained
    run = score_cfg(cfg)
    first = run_score_job(spark, run)
    assert first.written and first.rows == 16281
    out = run.layout.scores
    version = DeltaTable(out).version()
    again = run_score_job(spark, run)
    assert not again.written and DeltaTable(out).version() == version
    assert DeltaTable(out).count() == 16281
    other = run_score_job(spark, score_cfg(cfg, "score.run_id=manual-2"))
    assert other.written and DeltaTable(out).count() == 2 * 16281
    replaced = run_score_job(spark, score_cfg(cfg, "score.run_id=manual-3", "score.mode=overwrite"))
    assert replaced.written and DeltaTable(out).count() == 16281
    table = pa.table(DeltaTable(out).to_pyarrow_table())
    # no id declared: every source column first (score.passthrough's default), then the scores, the run
    assert table.column_names == [*adult_pandas(ADULT_TEST).columns, "anomaly_score", "is_anomaly", "contributions",
                                  "reasons", "calibrated_score", "calibrated_contributions", "bundle_id",
                                  "run_id", "scored_at"]
    assert set(table.column("run_id").to_pylist()) == {"manual-3"}
    assert pa.types.is_timestamp(table.schema.field("scored_at").type)
    scored_at = table.column("scored_at").to_pylist()
    assert len(set(scored_at)) == 1 and scored_at[0].replace(tzinfo=None) >= dt.datetime(2026, 1, 1)
    # score.detail: flagged (the default): the detail of the flagged rows only, nulls on the others
    flags = np.asarray(table.column("is_anomaly").to_pylist())
    assert 0 < flags.sum() < len(flags)
    for col in ("contributions", "calibrated_contributions", "reasons"):
        assert (~np.asarray(table.column(col).is_null().to_pylist()) == flags).all(), col
    runs = pa.table(DeltaTable(run.layout.score_runs).to_pyarrow_table()).to_pylist()
    assert [r["run_id"] for r in runs].count(first.run_id) == 1 and len(runs) == 3
    summary = runs[0]
    assert summary["rows"] == 16281 and dict(summary["score_quantiles"])["0.5"] > 0
    assert dict(summary["null_rate"])["workclass"] == pytest.approx(963 / 16281)


def test_score_bad_input(spark, adult_trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, _ = adult_trained
    # a copy of the run whose outputs go elsewhere
    run = load_config([BASE_CONF, ADULT_CONF], [f"output_dir={tmp_path}", *TRAIN_SETS])
    shutil.copytree(cfg.layout.bundle, run.layout.bundle)
    copy_vocab(cfg, run)
    bundle = load_bundle(run.layout.bundle)
    rows = adult_pandas(ADULT_TEST).head(50)
    with pytest.raises(SchemaError, match=r"lacks column\(s\) occupation"):
        score_frame(spark, spark.createDataFrame(rows.drop(columns=["occupation"])), bundle, ids=())
    from pyspark.sql import functions as F

    bad_type = spark.createDataFrame(rows).withColumn("age", F.array("age"))
    with pytest.raises(SchemaError, match="numeric column 'age' .* array<bigint>"):
        score_frame(spark, bad_type, bundle, ids=())
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(SchemaError, match="has no rows"):
        run_score_job(spark, score_cfg(run, f"score.source={empty}", f"output_dir={tmp_path}"))
    assert not Path(run.layout.scores).exists()
    # a vocabulary rebuilt with other parameters: the bundle no longer matches it
    from embedlib.spark.vocab import run_vocab_job

    run_vocab_job(spark, load_config([BASE_CONF, ADULT_CONF], [f"output_dir={tmp_path}", "vocab.min_count=5"]))
    with pytest.raises(BundleError, match="another vocabulary .*hash"):
        run_score_job(spark, score_cfg(run, f"output_dir={tmp_path}"))
    assert not Path(run.layout.scores).exists()


@pytest.mark.launch
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_score_job_on_local_cluster_equals_local(spark, adult_trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, _ = adult_trained
    for name in ("local", "cluster"):
        shutil.copytree(cfg.layout.root, tmp_path / name / cfg.name,
                        ignore=shutil.ignore_patterns("scores", "score_runs", "_work"))
    args = ["--conf", str(BASE_CONF), "--conf", str(ADULT_CONF), "--set", f"score.source={ADULT_TEST}",
            "--set", "score.run_id=r1"]
    from embedlib.cli import main

    assert main(["score", *args, "--set", f"output_dir={tmp_path / 'local'}"]) == 0
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    cmd = [str(Path(sys.executable).parent / "spark-submit"), "--master", "local-cluster[2,1,1024]",
           "--conf", "spark.executor.memory=768m", "--conf", "spark.ui.enabled=false", *submit_conf(),
           "--conf", f"spark.pyspark.python={sys.executable}",
           "jobs/score.py", *args, "--set", f"output_dir={tmp_path / 'cluster'}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-4000:]

    def read(name: str) -> pd.DataFrame:
        t = pa.table(DeltaTable(str(tmp_path / name / cfg.name / "scores")).to_pyarrow_table())
        return t.select(["anomaly_score"]).to_pandas().sort_values("anomaly_score").reset_index(drop=True)

    local, cluster = read("local"), read("cluster")
    assert len(local) == len(cluster) == 16281
    np.testing.assert_allclose(cluster["anomaly_score"], local["anomaly_score"], rtol=0, atol=1e-9)


def test_any_table_as_the_scoring_source(spark, adult_trained, test_rows: pd.DataFrame, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A model trained from CSV scores a Parquet file, a Delta table and a CSV file of another
    dialect, each given as a source of its own (``score.source`` as a mapping with its own format
    and reader options): the same scores as plain Python on the same rows."""
    from deltalake import write_deltalake

    cfg, result = adult_trained
    rows = test_rows.head(500)
    expected = score_rows(load_bundle(result.bundle_path), pa.Table.from_pandas(rows, preserve_index=False)).score
    rows.to_parquet(tmp_path / "rows.parquet", index=False)
    write_deltalake(str(tmp_path / "rows_delta"), pa.Table.from_pandas(rows, preserve_index=False))
    rows.to_csv(tmp_path / "rows.csv", sep=";", index=False)
    sources = {
        "parquet": [f"score.source.path={tmp_path / 'rows.parquet'}", "score.source.format=parquet"],
        "delta": [f"score.source.path={tmp_path / 'rows_delta'}", "score.source.format=delta"],
        "csv": [f"score.source.path={tmp_path / 'rows.csv'}", "score.source.format=csv",
                "score.source.options.sep=;", "score.source.options.header=true",
                "score.source.options.inferSchema=true"],
    }
    for name, sets in sources.items():
        run = score_cfg(cfg, *sets, "columns.id=[row_id]", f"score.output={tmp_path / ('scores_' + name)}")
        assert run.score.source is not None and not isinstance(run.score.source, str)
        assert run.score.source.format == name
        run_score_job(spark, run)
        got = DeltaTable(str(tmp_path / f"scores_{name}")).to_pandas().sort_values("row_id")
        assert got["row_id"].tolist() == rows["row_id"].tolist(), name
        np.testing.assert_allclose(got["anomaly_score"].to_numpy(), expected, rtol=0, atol=1e-5, err_msg=name)


def test_outputs_keep_source_columns_to_join_back(spark, adult_trained, test_rows: pd.DataFrame, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """No id declared: the scores hold every source column (each row readable on its own);
    a list keeps those (and the ids); a listed column named like an output column is refused;
    ``features.passthrough`` works the same way."""
    from embedlib.core.vocab import SchemaError
    from embedlib.reports import score_report
    from embedlib.spark.extract import run_features_job

    cfg, _ = adult_trained
    rows = test_rows.head(300).drop(columns=["row_id"])
    rows.to_parquet(tmp_path / "rows.parquet", index=False)
    source = [f"score.source.path={tmp_path / 'rows.parquet'}", "score.source.format=parquet"]
    all_cfg = score_cfg(cfg, *source, f"score.output={tmp_path / 'all'}")
    report = score_report(spark, run_score_job(spark, all_cfg), all_cfg)
    shown = [line for line in report if line.startswith("    row: ")]  # each top row's own values
    assert len(shown) == 10 and all("age=" in line and "native-country=" in line for line in shown)
    got = DeltaTable(str(tmp_path / "all")).to_pandas()
    assert list(got.columns[: len(rows.columns)]) == list(rows.columns)
    key = ["age", "fnlwgt", "education", "occupation", "hours-per-week"]
    def as_text(frame: pd.DataFrame) -> list[tuple[str, ...]]:
        return sorted(map(tuple, frame[key].astype(object).where(frame[key].notna(), "").astype(str).values))

    assert as_text(got) == as_text(rows)
    run_score_job(spark, score_cfg(cfg, *source, "score.passthrough=[fnlwgt, sex]", f"score.output={tmp_path / 'two'}"))
    two = DeltaTable(str(tmp_path / "two")).to_pandas()
    assert list(two.columns[:2]) == ["fnlwgt", "sex"] and "age" not in two.columns
    scores = got.set_index(["fnlwgt", "sex", "age"])["anomaly_score"]
    assert np.allclose(np.sort(two["anomaly_score"].to_numpy()), np.sort(scores.to_numpy()))
    with pytest.raises(SchemaError, match="score.passthrough names anomaly_score"):
        run_score_job(spark, score_cfg(cfg, *source, "score.passthrough=[age, anomaly_score]",
                                       f"score.output={tmp_path / 'bad'}"))
    feats = score_cfg(cfg, *feats_sets(tmp_path),
                      "features.passthrough=[income]", f"features.output={tmp_path / 'features'}")
    run_features_job(spark, feats)
    frame = DeltaTable(str(tmp_path / "features")).to_pandas()
    assert frame.columns[0] == "income" and sorted(frame["income"]) == sorted(rows["income"])
    with pytest.raises(SchemaError, match="features.passthrough names education"):  # the design matrix's own column
        run_features_job(spark, score_cfg(cfg, *feats_sets(tmp_path), "features.passthrough=[education]"))


def feats_sets(tmp_path: Path) -> list[str]:
    return [f"features.source.path={tmp_path / 'rows.parquet'}", "features.source.format=parquet"]


def test_an_append_to_a_scores_table_written_before_run_id_adds_the_run_columns(  # type: ignore[no-untyped-def]
        spark, adult_trained, tmp_path: Path, delta_engine: str) -> None:
    """A daily job's table written by an embedlib without ``run_id``/``scored_at`` (and with every row's
    detail) takes the new rows through either Delta engine: the two columns are added, the old rows
    hold nulls there, nothing of theirs changes (two score runs of 500 rows, ~2-7 s per engine)."""
    import pyarrow.compute as pc
    from deltalake import write_deltalake

    from .conftest import ADULT_DATA, copy_run

    cfg, _ = adult_trained
    copy_run(cfg, tmp_path / "run")
    rows = adult_pandas(ADULT_TEST).head(500)
    rows.insert(0, "row_id", np.arange(len(rows), dtype=np.int64))
    rows.to_parquet(tmp_path / "rows.parquet", index=False)
    out = tmp_path / "scores"

    def run(run_id: str, *sets: str) -> None:
        run_score_job(spark, load_config([BASE_CONF, ADULT_CONF], [
            f"output_dir={tmp_path / 'run'}", f"source.path={ADULT_DATA}", f"score.source={tmp_path / 'rows.parquet'}",
            "source.format=parquet", "source.schema=null", "columns.id=[row_id]", f"score.run_id={run_id}",
            f"score.output={out}", f"delta.engine={delta_engine}", *sets]))

    run("before", "score.detail=all")
    old = DeltaTable(str(out)).to_pyarrow_table().drop_columns(["run_id", "scored_at"])
    shutil.rmtree(out)
    write_deltalake(str(out), old)  # as an embedlib of 2026-12-07 wrote it
    run("after")
    table = pa.table(DeltaTable(str(out)).to_pyarrow_table()).sort_by([("run_id", "ascending"), ("row_id", "ascending")])
    assert table.num_rows == 1000 and table.column_names[-2:] == ["run_id", "scored_at"]
    runs = table.column("run_id").to_pylist()
    assert runs.count("after") == 500 and runs.count(None) == 500
    before = table.filter(pc.is_null(table.column("run_id")))
    assert before.drop_columns(["run_id", "scored_at"]).sort_by("row_id").equals(old.sort_by("row_id"))
    assert before.column("scored_at").null_count == 500 and before.column("reasons").null_count == 0
    after = table.filter(pc.equal(table.column("run_id"), "after"))
    assert after.column("scored_at").null_count == 0
    assert after.column("anomaly_score").to_pylist() == before.sort_by("row_id").column("anomaly_score").to_pylist()


def test_score_mode_merge_keeps_the_latest_score_of_each_row(  # type: ignore[no-untyped-def]
        spark, adult_trained, tmp_path: Path, delta_engine: str) -> None:
    """``score.mode: merge`` upserts on ``columns.id`` through either engine: a second run over rows
    200..599 (rows 200..399 changed) replaces rows 200..399, adds 400..599, keeps 0..199; its rerun
    changes nothing (three score runs of 400 rows, ~10 s per engine)."""
    from embedlib.core.config import ConfigError

    from .conftest import ADULT_DATA, copy_run

    cfg, result = adult_trained
    copy_run(cfg, tmp_path / "run")
    rows = adult_pandas(ADULT_TEST).head(600)
    rows.insert(0, "row_id", np.arange(len(rows), dtype=np.int64))
    first, second = rows.iloc[:400].copy(), rows.iloc[200:].copy()
    second.loc[second["row_id"] < 400, "age"] += 30  # the same entities, new values
    out = tmp_path / "latest"

    def run(run_id: str, frame: pd.DataFrame, *sets: str):  # type: ignore[no-untyped-def]
        frame.to_parquet(tmp_path / f"{run_id}.parquet", index=False)
        return run_score_job(spark, load_config([BASE_CONF, ADULT_CONF], [
            f"output_dir={tmp_path / 'run'}", f"source.path={ADULT_DATA}", f"score.source={tmp_path / run_id}.parquet",
            "source.format=parquet", "source.schema=null", "columns.id=[row_id]", f"score.run_id={run_id}",
            f"score.output={out}", "score.mode=merge", f"delta.engine={delta_engine}", *sets]))

    assert run("m1", first).written and DeltaTable(str(out)).count() == 400
    assert run("m2", second).written
    version = DeltaTable(str(out)).version()
    assert not run("m2", second).written and DeltaTable(str(out)).version() == version  # a rerun: nothing
    table = DeltaTable(str(out)).to_pandas().sort_values("row_id").reset_index(drop=True)
    assert table["row_id"].tolist() == list(range(600))  # one row per id
    assert (table["run_id"] == np.where(table["row_id"] < 200, "m1", "m2")).all()
    bundle = load_bundle(result.bundle_path)
    scores = {name: score_rows(bundle, pa.Table.from_pandas(frame, preserve_index=False)).score
              for name, frame in (("m1", first), ("m2", second))}
    np.testing.assert_allclose(table["anomaly_score"].to_numpy(), np.concatenate([scores["m1"][:200], scores["m2"]]),
                               rtol=0, atol=1e-9)  # 0..199 as m1 scored them, 200..599 as m2 did
    with pytest.raises(ConfigError, match="score.mode.*columns.id is empty"):
        load_config([BASE_CONF, ADULT_CONF], ["columns.id=[]", "score.mode=merge"])
