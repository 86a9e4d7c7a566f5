"""MLflow tracking against a real local file store, read back with MlflowClient."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from embedlib.core.bundle import load_bundle
from embedlib.core.config import load_config
from embedlib.spark.tracking import TrackingError, experiment_name, flatten_config, tracking_uri

from .conftest import ADULT_CONF, ADULT_TEST, BASE_CONF, copy_vocab, train_cfg


@pytest.mark.timeout(600)
def test_train_and_score_runs_are_logged_and_read_back(spark, adult_trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    from embedlib.spark.score import run_score_job
    from embedlib.spark.train import run_train_job

    store = tmp_path / "mlruns"
    cfg = train_cfg(
        tmp_path / "out", "train.epochs=3", "tracking.mlflow=true", f"tracking.tracking_uri={store}",
        f"score.source={ADULT_TEST}", "spark.conf={spark.embedlib.test.password: hunter2}",
    )
    copy_vocab(adult_trained[0], cfg)  # the shared run's vocabulary: the same source and settings
    result = run_train_job(spark, cfg)
    scored = run_score_job(spark, cfg)
    assert result.tracking_run_id and scored.tracking_run_id

    assert os.environ["MLFLOW_ALLOW_FILE_STORE"] == "true"  # set by embedlib for its file store
    client = MlflowClient(tracking_uri=store.as_uri())
    experiment = client.get_experiment_by_name("embedlib-adult-demo")
    assert experiment is not None
    train_run = client.get_run(result.tracking_run_id)
    assert train_run.info.experiment_id == experiment.experiment_id
    assert train_run.info.status == "FINISHED"
    params = train_run.data.params
    assert params["train.epochs"] == "3" and params["train.backend"] == "local"
    assert params["train.learning_rate"] == "0.003"
    assert json.loads(params["columns.categorical"])[0] == "workclass"
    assert params["spark.conf.spark.embedlib.test.password"] == "***"
    assert "hunter2" not in json.dumps(params)
    assert train_run.data.tags["embedlib.bundle_id"] == result.bundle_id

    history = result.metrics["history"]
    assert len(history) == result.metrics["epochs_run"] == 3
    for key in ("train_loss", "validation_loss", "validation_loss_by_column/native-country"):
        logged = client.get_metric_history(result.tracking_run_id, key)
        assert [m.step for m in sorted(logged, key=lambda m: m.step)] == [1, 2, 3]
    logged_val = sorted(client.get_metric_history(result.tracking_run_id, "validation_loss"), key=lambda m: m.step)
    assert [m.value for m in logged_val] == pytest.approx([h["validation_loss"] for h in history])
    metrics = train_run.data.metrics
    assert metrics["best_validation_loss"] == pytest.approx(result.metrics["validation_loss"])
    assert metrics["threshold"] == pytest.approx(result.threshold)
    assert metrics["train_rows"] == result.metrics["train_rows"]

    names = {a.path for a in client.list_artifacts(result.tracking_run_id, "bundle")}
    assert names == {"bundle/bundle.json", "bundle/weights.safetensors", "bundle/vocab.parquet"}
    local = client.download_artifacts(result.tracking_run_id, "bundle", str(tmp_path / "downloaded"))
    assert load_bundle(local).bundle_id == result.bundle_id  # the logged files verify as the same bundle

    score_run = client.get_run(scored.tracking_run_id)
    assert score_run.info.experiment_id == experiment.experiment_id
    assert score_run.data.tags["embedlib.bundle_id"] == result.bundle_id
    assert score_run.data.tags["embedlib.command"] == "score"
    sm = score_run.data.metrics
    assert sm["rows"] == scored.rows == 16281
    assert sm["anomalies"] == scored.anomalies
    assert sm["anomaly_rate"] == pytest.approx(scored.anomalies / scored.rows)
    assert sm["threshold"] == pytest.approx(scored.threshold)
    assert sm["score_q99"] == pytest.approx(scored.quantiles["0.99"])
    assert sm["null_rate/occupation"] == pytest.approx(scored.null_rate["occupation"]) and sm["null_rate/occupation"] > 0
    assert score_run.data.params["score.run_id"] == scored.run_id


def test_missing_mlflow_is_a_clear_error_before_any_work(spark, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from embedlib.spark.train import run_train_job

    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    cfg = train_cfg(tmp_path, "tracking.mlflow=true")
    with pytest.raises(TrackingError, match=r"pip install 'embedlib\[mlflow\]'.*tracking.mlflow: false"):
        run_train_job(spark, cfg)
    assert not (tmp_path / "adult-demo").exists()


def test_tracking_uri_and_experiment_defaults(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    cfg = load_config([BASE_CONF, ADULT_CONF], ["tracking.mlflow=true"])
    assert tracking_uri(cfg) == (tmp_path / "mlruns").resolve().as_uri()
    assert experiment_name(cfg) == "embedlib-adult-demo"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(cfg) is None  # MLflow reads its own variable
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "17.3")
    assert tracking_uri(cfg) == "databricks"
    assert experiment_name(cfg) == "/Shared/embedlib-adult-demo"
    named = load_config([BASE_CONF, ADULT_CONF], ["tracking.experiment=/Users/me/exp", "tracking.tracking_uri=runs"])
    assert experiment_name(named) == "/Users/me/exp"
    assert tracking_uri(named) == (tmp_path / "runs").resolve().as_uri()


def test_flattened_params_redact_secrets() -> None:
    cfg = load_config([BASE_CONF, ADULT_CONF], [
        "spark.conf={spark.hadoop.fs.s3a.secret.key: S3CRET, spark.sql.shuffle.partitions: '8'}",
        "source.options={header: false, sas_token: T0KEN}",
    ])
    params = flatten_config(cfg)
    assert params["spark.conf.spark.hadoop.fs.s3a.secret.key"] == "***"
    assert params["source.options.sas_token"] == "***"
    assert params["spark.conf.spark.sql.shuffle.partitions"] == "8"
    assert params["output_schema"] == "null" and params["model.hidden"] == "null"  # null: from model.size
    assert params["model.size"] == "auto" and params["delta.engine"] == "auto"
    assert "S3CRET" not in json.dumps(params) and "T0KEN" not in json.dumps(params)


@pytest.mark.timeout(900)
def test_bundle_as_an_mlflow_model_scores_like_the_job(spark, adult_trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Training with ``tracking.registered_model`` against a SQLite-backed tracking store and registry
    logs the bundle as a pyfunc model (requirements pinned, input example, embedlib's code) and registers
    it; by name it scores — with ``predict``, with ``spark_udf`` (the full struct) and as ``score.model``
    of the score job — like ``embedlib score``, to 1e-9."""
    import mlflow
    import numpy as np
    import pandas as pd
    from deltalake import DeltaTable

    from embedlib.core.bundle import BundleError
    from embedlib.core.pyfunc import RESULT_TYPE
    from embedlib.core.version import __version__
    from embedlib.spark.score import run_score_job
    from embedlib.spark.train import run_train_job

    from .conftest import adult_pandas

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rows = adult_pandas(ADULT_TEST).head(400).copy()
    rows.insert(0, "row_id", np.arange(len(rows), dtype=np.int64))
    rows.to_parquet(tmp_path / "rows.parquet", index=False)
    sets = ("train.epochs=2", "tracking.mlflow=true", f"tracking.tracking_uri={store}", "score.passthrough=[row_id]",
            "tracking.registered_model=adult-demo",
            f"score.source.path={tmp_path / 'rows.parquet'}", "score.source.format=parquet")
    cfg = train_cfg(tmp_path / "out", *sets)
    copy_vocab(adult_trained[0], cfg)  # the shared run's vocabulary: the same source and settings
    result = run_train_job(spark, cfg)
    run_score_job(spark, cfg)  # the run's own bundle
    job = DeltaTable(cfg.layout.scores).to_pandas().sort_values("row_id")

    mlflow.set_tracking_uri(store)
    assert result.tracking_run_id is not None
    by_name = mlflow.MlflowClient().get_run(result.tracking_run_id).data.tags["embedlib.registered_model"]
    assert by_name == "models:/adult-demo/1"  # registered by the training run itself
    model = mlflow.pyfunc.load_model(by_name)
    assert [c.name for c in model.metadata.get_input_schema().inputs][:2] == ["workclass", "education"]
    local = Path(mlflow.artifacts.download_artifacts(by_name))
    assert f"embedlib=={__version__}" in (local / "requirements.txt").read_text().split()
    assert (local / "code" / "embedlib" / "core" / "pyfunc.py").is_file()  # the code travels with the model
    example = model.metadata.load_input_example(str(local))
    assert list(example.columns) == list(model.metadata.get_input_schema().input_names()) and len(example) == 1
    assert example["workclass"].iloc[0] == "Private"  # the most frequent value
    predicted = pd.DataFrame(model.predict(rows.drop(columns=["row_id"])))
    for col in ("anomaly_score", "calibrated_score"):
        np.testing.assert_allclose(predicted[col].to_numpy(), job[col].to_numpy(), rtol=0, atol=1e-9)
    assert predicted["is_anomaly"].tolist() == job["is_anomaly"].tolist()

    udf = mlflow.pyfunc.spark_udf(spark, by_name, result_type=RESULT_TYPE, env_manager="local")
    frame = spark.read.parquet(str(tmp_path / "rows.parquet"))
    features = model.metadata.get_input_schema().input_names()  # the udf takes the signature's columns, in order
    by_udf = pd.DataFrame(frame.select("row_id", udf(*features).alias("s")).select("row_id", "s.*").toPandas())
    by_udf = by_udf.sort_values("row_id")
    for col in ("anomaly_score", "calibrated_score"):
        np.testing.assert_allclose(by_udf[col].to_numpy(), job[col].to_numpy(), rtol=0, atol=1e-9)
    assert by_udf["is_anomaly"].tolist() == job["is_anomaly"].tolist()

    registered = train_cfg(tmp_path / "other", *sets, f"score.model={by_name}")  # a run without a bundle of its own
    run_score_job(spark, registered)
    again = DeltaTable(registered.layout.scores).to_pandas().sort_values("row_id")
    np.testing.assert_allclose(again["anomaly_score"].to_numpy(), job["anomaly_score"].to_numpy(), rtol=0, atol=1e-9)
    with pytest.raises(BundleError, match="score.model models:/adult-demo/9 cannot be read from MLflow"):
        run_score_job(spark, train_cfg(tmp_path / "other", *sets, "score.model=models:/adult-demo/9"))


def test_a_registered_model_needs_tracking() -> None:
    from embedlib.core.config import ConfigError

    with pytest.raises(ConfigError, match="tracking.registered_model.*tracking.mlflow is false"):
        load_config([BASE_CONF, ADULT_CONF], ["tracking.registered_model=adult-demo"])
    cfg = load_config([BASE_CONF, ADULT_CONF], ["tracking.registered_model=main.fraud.embedlib", "tracking.mlflow=true"])
    assert cfg.tracking.registered_model == "main.fraud.embedlib"
