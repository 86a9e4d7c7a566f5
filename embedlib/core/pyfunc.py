"""The bundle as an MLflow model (``mlflow.pyfunc``), and bundles read back from MLflow.

Training with ``tracking.mlflow: true`` logs the bundle as a pyfunc model with a signature (the
bundle's columns in, the three score columns out), an input example (one typical row: each
categorical's most frequent value, each numeric's mean), ``pip_requirements`` pinned to this
embedlib's version and the package's code (``code_paths``, so the model loads where embedlib is not
installed); with ``tracking.registered_model`` it is registered as a new version of that model (a
``catalog.schema.model`` name under Unity Catalog). ``mlflow.pyfunc.load_model(uri).predict(pandas_df)``
and ``mlflow.pyfunc.spark_udf(spark, uri, result_type=RESULT_TYPE)`` score like ``embedlib score`` —
the same :func:`embedlib.core.output.build_output`, threshold and ranking. ``score.model:
models:/<name>/<version>`` (or any MLflow model URI) scores with a registered model's bundle.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from embedlib.core import output
from embedlib.core.bundle import Bundle, BundleError, load_bundle

__all__ = ["BUNDLE_ARTIFACT", "RESULT_TYPE", "BundleModel", "LoggedModel", "bundle_from_model", "input_example",
           "log_bundle_model", "requirements", "score_pandas", "signature"]

log = logging.getLogger(__name__)

#: The artifact (a folder) of the pyfunc model that holds the bundle's files.
BUNDLE_ARTIFACT = "bundle"
#: The Spark type of the model's output, for ``mlflow.pyfunc.spark_udf(..., result_type=RESULT_TYPE)``.
RESULT_TYPE = "anomaly_score double, calibrated_score double, is_anomaly boolean"


def score_pandas(bundle: Bundle, frame: pd.DataFrame) -> pd.DataFrame:
    """``anomaly_score``, ``calibrated_score`` (NaN without calibration) and ``is_anomaly`` of each
    row of ``frame``: :func:`embedlib.core.output.score_pandas`'s (the score job's) without reasons."""
    scores = output.score_pandas(bundle, frame.reset_index(drop=True), top_reasons=0)
    return scores[["anomaly_score", "calibrated_score", "is_anomaly"]].astype(
        {"anomaly_score": "float64", "calibrated_score": "float64", "is_anomaly": "bool"})


class BundleModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]
    """An embedlib bundle served by MLflow: :func:`score_pandas` on each batch."""

    def load_context(self, context: Any) -> None:
        self.bundle = load_bundle(context.artifacts[BUNDLE_ARTIFACT])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return score_pandas(self.bundle, pd.DataFrame(model_input))


def signature(bundle: Bundle) -> Any:
    """Inputs: the bundle's columns by name, each of MLflow's type ``any`` and optional — the model
    reads categoricals as text and numerics as numbers itself, as the score job does (MLflow's own
    checks would refuse an int column with nulls, or ints where the source had doubles); outputs:
    the three score columns."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec
    from mlflow.types.schema import AnyType

    inputs: list[ColSpec | TensorSpec] = [ColSpec(AnyType(), c, required=False) for c in bundle.spec.columns]
    outputs: list[ColSpec | TensorSpec] = [ColSpec("double", "anomaly_score"), ColSpec("double", "calibrated_score"),
                                           ColSpec("boolean", "is_anomaly")]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def input_example(bundle: Bundle) -> pd.DataFrame:
    """One typical row of the bundle's columns: each categorical's most frequent value (the vocabulary
    numbers values by count; None for a column without one), each numeric's training mean."""
    row: dict[str, Any] = {}
    for column in bundle.spec.categorical:
        values = bundle.vocab[column].values
        row[column] = values[0] if values else None  # values are numbered most frequent first
    for column in bundle.spec.numeric:
        stats = bundle.vocab.numeric[column]
        mean = float(stats.mean)  # after log1p for a log1p column: back to the column's own units
        row[column] = math.copysign(math.expm1(abs(mean)), mean) if stats.log1p else mean
    return pd.DataFrame([row], columns=list(bundle.spec.columns))


def requirements() -> list[str]:
    """What an environment that serves the model installs: this embedlib, pinned (its code also
    travels with the model), and the MLflow client it was logged with."""
    from embedlib.core.version import __version__

    return [f"embedlib=={__version__}", f"mlflow-skinny>={mlflow.__version__.split('+')[0]}"]


@dataclass(frozen=True)
class LoggedModel:
    """What :func:`log_bundle_model` logged: the model's URI, and its registered name and version."""

    uri: str
    registered: str | None = None  # models:/<name>/<version>


def log_bundle_model(bundle_path: str, folder: str, registered_model: str | None = None) -> LoggedModel:
    """Log the bundle (its files already in local ``folder``) as a pyfunc model of the active MLflow
    run, with its signature, input example, requirements and embedlib's code; with
    ``registered_model``, register it as a new version of that model."""
    bundle = load_bundle(bundle_path)
    info = mlflow.pyfunc.log_model(
        name="model", python_model=BundleModel(), artifacts={BUNDLE_ARTIFACT: folder},
        signature=signature(bundle), input_example=input_example(bundle), pip_requirements=requirements(),
        code_paths=[str(Path(__file__).resolve().parents[1])], registered_model_name=registered_model,  # the package
    )
    version = getattr(info, "registered_model_version", None)
    registered = f"models:/{registered_model}/{version}" if registered_model and version is not None else None
    return LoggedModel(str(info.model_uri), registered)


def bundle_from_model(uri: str) -> Bundle:
    """The bundle of an MLflow model (``models:/name/version``, ``runs:/…/model``, ``models:/<id>``),
    loaded through MLflow (its files downloaded to a local folder) and verified."""
    try:
        model = mlflow.pyfunc.load_model(uri)
    except Exception as exc:  # MlflowException: no such registered model, version or run
        raise BundleError(f"score.model {uri} cannot be read from MLflow: {str(exc).splitlines()[0]}; check the "
                          "model name and version (the registry of tracking.tracking_uri)") from exc
    python_model = model.unwrap_python_model()
    if not isinstance(python_model, BundleModel):
        raise BundleError(f"score.model {uri} is an MLflow model, but not one embedlib logged (it is a "
                          f"{type(python_model).__name__}); give the URI of a model `embedlib train` logged")
    log.info("scoring with the bundle of MLflow model %s (%s)", uri, python_model.bundle.path)
    return python_model.bundle
