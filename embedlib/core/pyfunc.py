"""The bundle as an MLflow model (``mlflow.pyfunc``), and bundles read back from MLflow.

Training with ``tracking.mlflow: true`` logs the bundle as a pyfunc model with a signature (the
bundle's columns with their source types in, the scores out), so
``mlflow.pyfunc.load_model(uri).predict(pandas_df)`` and
``mlflow.pyfunc.spark_udf(spark, uri, result_type="double")`` score like ``embedlib score`` — the
same :func:`embedlib.core.output.build_output`, threshold and ranking. ``score.model:
models:/<name>/<version>`` (or any MLflow model URI) scores with a registered model's bundle.
"""

from __future__ import annotations

import logging
from typing import Any

import mlflow.pyfunc
import pandas as pd

from embedlib.core import output
from embedlib.core.bundle import Bundle, BundleError, load_bundle

__all__ = ["BUNDLE_ARTIFACT", "BundleModel", "bundle_from_model", "log_bundle_model", "score_pandas", "signature"]

log = logging.getLogger(__name__)

#: The artifact (a folder) of the pyfunc model that holds the bundle's files.
BUNDLE_ARTIFACT = "bundle"


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


def log_bundle_model(bundle_path: str, folder: str) -> str:
    """Log the bundle (its files already in local ``folder``) as a pyfunc model of the active MLflow
    run; return the model's URI."""
    info = mlflow.pyfunc.log_model(name="model", python_model=BundleModel(), artifacts={BUNDLE_ARTIFACT: folder},
                                   signature=signature(load_bundle(bundle_path)))
    return str(info.model_uri)


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
