"""MLflow tracking, optional: ``tracking.mlflow: true`` and ``pip install 'embedlib[mlflow]'``.

Training logs one MLflow run: the configuration as parameters (flattened to
``section.key``, secret-looking Spark and reader settings redacted), the
per-epoch ``train_loss`` / ``validation_loss`` (and ``validation_loss_by_column/<column>``)
with ``step`` = epoch, the final figures (best validation loss, threshold, rows,
seconds) and the bundle's files as artifacts under ``bundle/``. Scoring logs one
run with its summary: rows, anomalies, threshold, score quantiles, null and
out-of-vocabulary rates. Both runs carry the tags ``embedlib.name`` and
``embedlib.bundle_id``, which link a score run to the training run of its bundle.

Everything is logged from the driver through an ``MlflowClient`` built for the
configured URI (never MLflow's global state), after the work is done — so
training workers need no access to the tracking store, and only rank 0's
metrics (the ones every rank agreed on) are logged. With tracking off nothing
here imports MLflow.

Where runs go (``tracking.tracking_uri``): the configured URI; if null,
``MLFLOW_TRACKING_URI`` when set, the workspace on Databricks, and otherwise a
``./mlruns`` file store in the working directory (MLflow 3.7+ keeps file stores
in maintenance mode and wants ``MLFLOW_ALLOW_FILE_STORE=true``, which embedlib sets
for ``file:`` URIs unless it is already set; for shared use point
``tracking_uri`` at a tracking server or a database). The experiment
(``tracking.experiment``) defaults to ``embedlib-<name>``
(``/Shared/embedlib-<name>`` on Databricks, where experiments are workspace paths).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedlib.core.config import redact
from embedlib.core.version import __version__
from embedlib.spark.session import on_databricks

if TYPE_CHECKING:
    from embedlib.core.bundle import Bundle
    from embedlib.core.config import Config
    from embedlib.core.pyfunc import LoggedModel
    from embedlib.core.summary import ScoreRun

__all__ = ["TrackingError", "check_tracking", "experiment_name", "log_scoring", "log_training", "tracking_uri"]

log = logging.getLogger(__name__)

#: MLflow's limits: parameter values are cut to this length, batches to these sizes.
MAX_PARAM_LENGTH = 6000
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000

_REDACTED_MAPPINGS = ("spark.conf", "source.options")


class TrackingError(ValueError):
    """Tracking is configured but cannot work; the message says what to install or set."""


def _mlflow_client(uri: str | None) -> Any:
    if uri is not None and uri.startswith("file:"):
        # MLflow >= 3.7 refuses file stores unless this is set; a file store is what
        # the configuration (or its default) asked for. An explicit "false" still wins.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise TrackingError(
            f"tracking.mlflow is true but MLflow cannot be imported here ({exc}); "
            "install it with pip install 'embedlib[mlflow]', or set tracking.mlflow: false"
        ) from exc
    return MlflowClient(tracking_uri=uri)


def check_tracking(cfg: Config) -> None:
    """Fail before any work if tracking is on and MLflow is missing."""
    if cfg.tracking.mlflow:
        _mlflow_client(tracking_uri(cfg))


def tracking_uri(cfg: Config) -> str | None:
    """The tracking URI runs go to; None leaves it to MLflow (environment or Databricks)."""
    uri = cfg.tracking.tracking_uri
    if uri is not None:
        if "://" in uri or uri in ("databricks", "databricks-uc") or uri.startswith("databricks://"):
            return uri
        return Path(uri).resolve().as_uri()  # a plain path: a file store
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    if on_databricks():
        return "databricks"
    return Path("mlruns").resolve().as_uri()


def experiment_name(cfg: Config) -> str:
    if cfg.tracking.experiment:
        return cfg.tracking.experiment
    return f"/Shared/embedlib-{cfg.name}" if on_databricks() else f"embedlib-{cfg.name}"


def flatten_config(cfg: Config) -> dict[str, str]:
    """``section.key`` → value text, with secret-looking Spark and reader settings redacted."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            if prefix in _REDACTED_MAPPINGS:
                value = redact(value)
            if not value:
                out[prefix] = "{}"
            for key, item in value.items():
                walk(f"{prefix}.{key}", item)
            return
        text = json.dumps(list(value)) if isinstance(value, (list, tuple)) else ("null" if value is None else str(value))
        out[prefix] = text[:MAX_PARAM_LENGTH]

    for key, value in dataclasses.asdict(cfg).items():
        walk(key, value)
    return out


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@contextmanager
def _run(cfg: Config, command: str, tags: Mapping[str, str]) -> Iterator[tuple[Any, str]]:
    """An MLflow run for ``command``: ``(client, run_id)``; FAILED if the body raises."""
    uri = tracking_uri(cfg)
    client = _mlflow_client(uri)
    name = experiment_name(cfg)
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment is not None else client.create_experiment(name)
    all_tags = {"embedlib.name": cfg.name, "embedlib.command": command, "embedlib.version": __version__, **tags}
    run = client.create_run(experiment_id, tags=all_tags, run_name=f"{cfg.name}-{command}")
    run_id = run.info.run_id
    try:
        yield client, run_id
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    log.info("MLflow run %s (%s) logged to experiment %s at %s", run_id, command, name,
             uri or "MLflow's default tracking URI")


def _log(client: Any, run_id: str, params: Mapping[str, str], metrics: Sequence[tuple[str, float, int]]) -> None:
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    for chunk in _chunks([Param(k, v) for k, v in params.items()], PARAMS_PER_BATCH):
        client.log_batch(run_id, params=list(chunk))
    entries = [Metric(key, float(value), now, step) for key, value, step in metrics]
    for chunk in _chunks(entries, METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=list(chunk))


def _metric_key(text: str) -> str:
    """MLflow metric names allow letters, digits, ``_ - . / ``: map anything else to ``_``."""
    return "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in text)


def log_training(cfg: Config, bundle_path: str, bundle_id: str, metrics: Mapping[str, Any],
                 threshold: float) -> str | None:
    """Log a finished training run; returns the MLflow run id (None with tracking off)."""
    if not cfg.tracking.mlflow:
        return None
    from embedlib.core.bundle import read_bundle_files

    values: list[tuple[str, float, int]] = []
    for record in metrics.get("history", []):
        epoch = int(record["epoch"])
        values.append(("train_loss", record["train_loss"], epoch))
        values.append(("validation_loss", record["validation_loss"], epoch))
        for column, loss in record.get("validation_columns", {}).items():
            values.append((_metric_key(f"validation_loss_by_column/{column}"), loss, epoch))
    final = {
        "best_validation_loss": metrics.get("validation_loss"),
        "best_epoch": metrics.get("best_epoch"),
        "epochs_run": metrics.get("epochs_run"),
        "world_size": metrics.get("world_size"),
        "train_rows": metrics.get("train_rows"),
        "validation_rows": metrics.get("validation_rows"),
        "train_seconds": metrics.get("train_seconds"),
        "steps": metrics.get("steps"),
        "converged": None if metrics.get("converged") is None else float(bool(metrics.get("converged"))),
        "threshold": threshold,
    }
    values += [(key, float(value), 0) for key, value in final.items() if value is not None]
    tags = {"embedlib.bundle_id": bundle_id, "embedlib.backend": str(metrics.get("backend"))}
    with _run(cfg, "train", tags) as (client, run_id):
        _log(client, run_id, flatten_config(cfg), values)
        with tempfile.TemporaryDirectory(prefix="embedlib-bundle-") as tmp:
            for name, blob in read_bundle_files(bundle_path).items():
                (Path(tmp) / name).write_bytes(blob)
            client.log_artifacts(run_id, tmp, artifact_path="bundle")
            logged = _log_model(tracking_uri(cfg), run_id, bundle_path, tmp, cfg.tracking.registered_model)
        client.set_tag(run_id, "embedlib.model_uri", logged.uri)
        if logged.registered is not None:
            client.set_tag(run_id, "embedlib.registered_model", logged.registered)
            log.info("bundle %s logged as MLflow model %s and registered as %s (score with score.model=%s)",
                     bundle_id, logged.uri, logged.registered, logged.registered)
        else:
            log.info("bundle %s logged as MLflow model %s (register it, or set tracking.registered_model, to "
                     "score it by name: score.model)", bundle_id, logged.uri)
    return str(run_id)


def _log_model(uri: str | None, run_id: str, bundle_path: str, folder: str,
               registered_model: str | None) -> LoggedModel:
    """The bundle as a pyfunc model of run ``run_id`` (:mod:`embedlib.core.pyfunc`), registered as a
    new version of ``registered_model`` when set."""
    import mlflow

    from embedlib.core.pyfunc import log_bundle_model

    previous = mlflow.get_tracking_uri()
    if uri is not None:
        mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(run_id=run_id):
            return log_bundle_model(bundle_path, folder, registered_model)
    finally:
        mlflow.set_tracking_uri(previous)


def model_bundle(cfg: Config, model_uri: str) -> Bundle:
    """The bundle of the MLflow model ``model_uri`` (``score.model``: ``models:/name/version``),
    from the configured tracking URI and its model registry."""
    import mlflow

    from embedlib.core.pyfunc import bundle_from_model

    uri = tracking_uri(cfg)
    _mlflow_client(uri)  # MLflow importable, file stores allowed
    previous = mlflow.get_tracking_uri()
    if uri is not None:
        mlflow.set_tracking_uri(uri)
    try:
        return bundle_from_model(model_uri)
    finally:
        mlflow.set_tracking_uri(previous)


def log_scoring(cfg: Config, run: ScoreRun) -> str | None:
    """Log a score run's summary; returns the MLflow run id (None with tracking off)."""
    if not cfg.tracking.mlflow:
        return None
    params = {
        "score.run_id": run.run_id,
        "score.source": run.source,
        "score.output": run.output,
        "score.bundle_id": run.bundle_id,
        "score.written": str(run.written).lower(),
        "score.started_at": run.started_at,
    }
    values: list[tuple[str, float, int]] = [
        ("rows", run.rows, 0),
        ("anomalies", run.anomalies, 0),
        ("anomaly_rate", run.anomalies / max(run.rows, 1), 0),
        ("threshold", run.threshold, 0),
        ("seconds", run.seconds, 0),
    ]
    values += [(f"score_q{float(q) * 100:g}", v, 0) for q, v in run.quantiles.items()]
    values += [(_metric_key(f"null_rate/{c}"), r, 0) for c, r in run.null_rate.items()]
    values += [(_metric_key(f"oov_rate/{c}"), r, 0) for c, r in run.oov_rate.items()]
    with _run(cfg, "score", {"embedlib.bundle_id": run.bundle_id}) as (client, run_id):
        _log(client, run_id, params, values)
    return str(run_id)
