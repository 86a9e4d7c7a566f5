"""The Spark ML estimator and model: a Pipeline stage that fits, saves, loads and scores like the jobs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable

from embedlib.core.config import ConfigError, load_config

from .conftest import ADULT_CONF, ADULT_DATA, ADULT_TEST, BASE_CONF, adult_pandas

#: The training tests' settings (conftest.TRAIN_SETS) as the estimator's Params.
TRAIN_PARAMS = {"epochs": 6, "patience": 10, "batchSize": 512, "learningRate": 0.003, "seed": 7, "size": "medium"}


@pytest.fixture(scope="module")
def adult_frames(spark, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Adult's training rows and 2,000 test rows with a row_id, as DataFrames (and the test Parquet file)."""
    folder = tmp_path_factory.mktemp("ml_data")
    train = adult_pandas(ADULT_DATA)
    test = adult_pandas(ADULT_TEST).head(2000).copy()
    test.insert(0, "row_id", np.arange(len(test), dtype=np.int64))
    train.to_parquet(folder / "train.parquet", index=False)
    test.to_parquet(folder / "test.parquet", index=False)
    return (spark.read.parquet(str(folder / "train.parquet")), spark.read.parquet(str(folder / "test.parquet")),
            folder / "test.parquet")


def _detector(out: Path):  # type: ignore[no-untyped-def]
    from embedlib.ml import EmbeddingAnomalyDetector

    cfg = load_config([BASE_CONF, ADULT_CONF])
    return EmbeddingAnomalyDetector(categoricalCols=list(cfg.columns.categorical), numericCols=list(cfg.columns.numeric),
                                    outputDir=str(out), name="ml", **TRAIN_PARAMS)


def test_pipeline_fit_save_load_transform_equals_the_score_job(spark, adult_frames, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from pyspark.ml import Pipeline, PipelineModel

    from embedlib.core.vocab import SchemaError
    from embedlib.ml import EmbeddingAnomalyModel
    from embedlib.spark.score import run_score_job

    train, test, test_file = adult_frames
    fitted = Pipeline(stages=[_detector(tmp_path / "runs").setThresholdQuantile(0.95)]).fit(train)
    fitted.write().overwrite().save(str(tmp_path / "pipeline"))
    loaded = PipelineModel.load(str(tmp_path / "pipeline"))
    model = loaded.stages[0]
    assert isinstance(model, EmbeddingAnomalyModel)
    assert model.getOrDefault("bundlePath").startswith(str(tmp_path / "pipeline"))  # the copy saved with the pipeline
    assert model.getOrDefault("learningRate") == 0.003 and model.getOrDefault("categoricalCols")[0] == "workclass"
    scored = loaded.transform(test)
    assert scored.columns[: len(test.columns)] == test.columns  # the input's columns, then the scores
    assert {"anomaly_score", "is_anomaly", "contributions", "reasons", "calibrated_score"} <= set(scored.columns)
    got = pd.DataFrame(scored.select("row_id", "anomaly_score", "calibrated_score", "is_anomaly").toPandas())
    got = got.sort_values("row_id")

    # `embedlib score` on the same rows, in the run the estimator wrote
    cfg = load_config([BASE_CONF, ADULT_CONF], [
        f"output_dir={tmp_path / 'runs'}", "name=ml", f"source.path={tmp_path / 'runs' / 'ml' / '_work' / 'fit-source'}",
        "source.format=parquet", f"score.source.path={test_file}", "score.source.format=parquet",
        "columns.id=[row_id]", f"score.output={tmp_path / 'job_scores'}"])
    run_score_job(spark, cfg)
    job = DeltaTable(str(tmp_path / "job_scores")).to_pandas().sort_values("row_id")
    assert got["row_id"].tolist() == job["row_id"].tolist() == list(range(2000))
    np.testing.assert_allclose(got["anomaly_score"].to_numpy(), job["anomaly_score"].to_numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(got["calibrated_score"].to_numpy(), job["calibrated_score"].to_numpy(), rtol=0, atol=1e-6)
    assert got["is_anomaly"].tolist() == job["is_anomaly"].tolist()
    assert model.bundle.manifest["threshold_quantile"] == 0.95 and 0.03 < got["is_anomaly"].mean() < 0.08

    # the output columns under other names, and a fixed threshold for the flag
    renamed = model.copy().setScoreCol("score").setFlagCol("flag").setReasonsCol("why").setThreshold(1e9)
    out = renamed.transform(test.limit(50))
    assert {"score", "flag", "why", "contributions"} <= set(out.columns) and "anomaly_score" not in out.columns
    assert renamed.getThreshold() == 1e9 and not any(r["flag"] for r in out.select("flag").collect())
    with pytest.raises(SchemaError, match="output column\\(s\\) age"):
        model.copy().setScoreCol("age").transform(test)

    # the matrices and the design matrix come from the same bundle
    emb = model.embeddings().to_pandas()
    bundle = model.bundle
    assert len(emb) == sum(len(bundle.vocab[c].values) + 2 for c in bundle.spec.categorical)
    features = pd.DataFrame(model.features(test.limit(5)).toPandas())
    assert features.columns[0] == "row_id" and len(features["workclass"].iloc[0]) == bundle.spec.embedding_dims[0]


def test_every_param_has_a_setter_and_a_getter_and_a_cluster_needs_an_output_dir() -> None:
    from embedlib.ml import CONFIG_PARAMS, EmbeddingAnomalyDetector, EmbeddingAnomalyModel

    det = EmbeddingAnomalyDetector().setCategoricalCols(["city"]).setNumericCols(["x"]).setLearningRate(0.01)
    assert (det.getCategoricalCols(), det.getNumericCols(), det.getLearningRate()) == (["city"], ["x"], 0.01)
    assert det.getScoreCol() == "anomaly_score" and str(det.getMaxSteps.__doc__).startswith("``maxSteps`` (config key train.max_steps")
    for stage in (det, EmbeddingAnomalyModel()):
        for param in stage.params:
            upper = param.name[0].upper() + param.name[1:]
            assert callable(getattr(stage, f"set{upper}", None)) and callable(getattr(stage, f"get{upper}", None)), param.name
    det.setSeed(5).setSize("small").setIdCols(["row_id"]).setName("n")
    # the accessors type checkers see are the generated ones, one pair per config setting
    source = (Path(__file__).parents[1] / "embedlib" / "ml_params.py").read_text()
    block = source.split("BEGIN generated accessors")[1].split("END generated accessors")[0]
    declared = set(re.findall(r"def ((?:set|get)\w+)\(", block))
    assert declared == {f"{verb}{n[0].upper()}{n[1:]}" for n in CONFIG_PARAMS for verb in ("set", "get")}
    assert (det.getSeed(), det.getSize(), det.getIdCols(), det.getName()) == (5, "small", ["row_id"], "n")

    class Session:  # what _output_dir reads of a session: its master
        def __init__(self, master: str) -> None:
            self.conf = {"spark.master": master}

    with pytest.raises(ConfigError, match="outputDir is not set and the session's master is spark://head:7077"):
        det._output_dir(Session("spark://head:7077"))
    assert Path(det._output_dir(Session("local[2]"))).is_dir()  # a local session: a temporary folder
    assert det.setOutputDir("/shared/runs")._output_dir(Session("yarn")) == "/shared/runs"


def test_estimator_params_and_bad_input(spark, adult_frames, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from embedlib.core.vocab import SchemaError
    from embedlib.ml import EmbeddingAnomalyDetector

    train, _, _ = adult_frames
    det = _detector(tmp_path / "runs")
    assert det.getOrDefault("batchSize") == 512 and det.getParam("maxSteps").doc.startswith("config key train.max_steps")
    det.write().overwrite().save(str(tmp_path / "estimator"))
    again = EmbeddingAnomalyDetector.load(str(tmp_path / "estimator"))
    assert again.getOrDefault("learningRate") == 0.003 and again.getOrDefault("numericCols") == det.getOrDefault("numericCols")
    with pytest.raises(TypeError, match='param "batchSize"'):
        EmbeddingAnomalyDetector(batchSize="large")
    with pytest.raises(SchemaError, match="lacks column\\(s\\) workclass"):
        _detector(tmp_path / "r2").fit(train.drop("workclass"))
    with pytest.raises(ConfigError, match="train.batch_size"):  # the config's own rules, naming the key
        _detector(tmp_path / "r3").setParams(batchSize=0).fit(train)
    with pytest.raises(ConfigError, match="unknown key 'score.nope'"):
        _detector(tmp_path / "r4").setParams(configOverrides=["score.nope=1"]).fit(train)
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r3" / "ml").exists()  # refused before any work


def fit_indexed_pipeline(spark, data: str, out: Path) -> tuple[pd.DataFrame, dict]:  # type: ignore[no-untyped-def]
    """``Pipeline([StringIndexer, detector])`` fitted on ``data``, saved and loaded: the loaded stage's
    Params read back through their getters, and its scores of every row."""
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.feature import StringIndexer

    from embedlib.ml import EmbeddingAnomalyDetector, EmbeddingAnomalyModel

    df = spark.read.parquet(data)
    detector = (EmbeddingAnomalyDetector().setCategoricalCols(["workclass", "education_ix"])
                .setNumericCols(["age", "hours-per-week"]).setIdCols(["row_id"]).setOutputDir(str(out / "runs"))
                .setName("indexed").setMaxSteps(200).setSize("small").setSeed(3).setScoreCol("score"))
    fitted = Pipeline(stages=[StringIndexer(inputCol="education", outputCol="education_ix"), detector]).fit(df)
    fitted.write().overwrite().save(str(out / "pipeline"))
    stage = PipelineModel.load(str(out / "pipeline")).stages[1]
    assert isinstance(stage, EmbeddingAnomalyModel)
    params = {p.name: getattr(stage, f"get{p.name[0].upper()}{p.name[1:]}")() for p in stage.params if stage.isDefined(p)}
    scored = PipelineModel.load(str(out / "pipeline")).transform(df)
    return pd.DataFrame(scored.select("row_id", "score", "is_anomaly").toPandas()).sort_values("row_id"), params


REMOTE = """
import json, sys
from pathlib import Path
from pyspark.sql import SparkSession
from tests.test_ml import fit_indexed_pipeline
spark = SparkSession.builder.remote(sys.argv[1]).getOrCreate()
scores, params = fit_indexed_pipeline(spark, sys.argv[2], Path(sys.argv[3]))
scores.to_parquet(Path(sys.argv[3]) / "scores.parquet")
Path(sys.argv[3], "params.json").write_text(json.dumps(params))
"""


@pytest.mark.launch
@pytest.mark.slow
def test_an_indexer_and_the_detector_in_a_pipeline_on_classic_and_connect(  # type: ignore[no-untyped-def]
        spark, connect_url: str, tmp_path: Path) -> None:
    """The stage after a ``StringIndexer`` (its double index column taken as a categorical), fitted,
    saved, loaded and scored on the classic session and by a Spark Connect client: every Param reads
    back through its getter, and the two give the same scores (two fits of 200 steps, ~40 s)."""
    import json
    import os
    import subprocess
    import sys

    rows = adult_pandas(ADULT_TEST).head(2000)
    rows.insert(0, "row_id", np.arange(len(rows), dtype=np.int64))
    rows.to_parquet(tmp_path / "rows.parquet", index=False)
    classic, params = fit_indexed_pipeline(spark, str(tmp_path / "rows.parquet"), tmp_path / "classic")
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
    done = subprocess.run([sys.executable, "-c", REMOTE, connect_url, str(tmp_path / "rows.parquet"),
                           str(tmp_path / "remote")], cwd=Path(__file__).parents[1], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    remote = pd.read_parquet(tmp_path / "remote" / "scores.parquet")
    remote_params = json.loads((tmp_path / "remote" / "params.json").read_text())
    assert params["categoricalCols"] == ["workclass", "education_ix"] and params["scoreCol"] == "score"
    assert params["maxSteps"] == 200 and params["size"] == "small" and params["seed"] == 3
    local_only = {"bundlePath", "outputDir"}
    assert {k: v for k, v in remote_params.items() if k not in local_only} == \
        {k: v for k, v in params.items() if k not in local_only}
    assert classic["row_id"].tolist() == remote["row_id"].tolist() == list(range(2000))
    np.testing.assert_allclose(remote["score"].to_numpy(), classic["score"].to_numpy(), rtol=0, atol=1e-9)
    assert remote["is_anomaly"].tolist() == classic["is_anomaly"].tolist()
