"""Spark ML: :class:`EmbeddingAnomalyDetector` (an ``Estimator``) and :class:`EmbeddingAnomalyModel`.

The estimator's ``fit(df)`` runs the same jobs as ``embedlib vocab`` and ``embedlib train`` on a
Parquet copy of the declared columns of ``df`` (written under the run directory, so the run is
reproducible and resumable like any other), through a configuration built by the same loader as
the CLI's (every value checked by the same rules). The model's ``transform(df)`` is the score job's
``score_frame``; ``features(df)`` the features job's ``features_frame``; ``embeddings()`` the extract
job's table. ``save``/``load`` go through Spark ML's writer and reader: the params as Spark ML
metadata, the bundle copied beside them — so the model is a stage a ``Pipeline`` saves and loads.

Params: ``categoricalCols``, ``numericCols``, ``idCols`` (pyspark's naming), ``outputDir``, ``name``,
``configOverrides`` (any other config key, as ``key=value`` strings), ``thresholdQuantile``
(``score.threshold_quantile``: the share of training rows below the bundle's threshold), the output
columns' names (``scoreCol``, ``flagCol``, ``calibratedScoreCol``, ``contributionsCol``,
``calibratedContributionsCol``, ``reasonsCol``; today's names by default), and every setting of the
config's ``model`` and ``train`` sections under its config name in camelCase (``learningRate`` is
``train.learning_rate``); unset ones keep the config's defaults. The model adds ``bundlePath``,
``rankBy``, ``topReasons`` and ``threshold`` (a fixed threshold for ``transform``'s flag). Every Param
has a setter and a getter as pyspark's stages do (``setCategoricalCols``/``getCategoricalCols``;
those of the config settings are generated, ``setLearningRate`` … ``getLazyAbove``).

``outputDir`` is where ``fit`` writes the run: storage every executor reads. Unset, a local session
uses a new temporary folder; any other session (a cluster, Spark Connect without a local master) is
refused, since executors cannot read the driver's temporary folder.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import (
    DefaultParamsReadable,
    DefaultParamsReader,
    DefaultParamsWritable,
    DefaultParamsWriter,
    MLReadable,
    MLReader,
    MLWritable,
    MLWriter,
)

from embedlib.ml_params import CONFIG_PARAMS, OUTPUT_COLS, EmbedlibParams

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame

    from embedlib.core.bundle import Bundle

__all__ = ["CONFIG_PARAMS", "OUTPUT_COLS", "EmbeddingAnomalyDetector", "EmbeddingAnomalyModel"]

class EmbeddingAnomalyDetector(Estimator["EmbeddingAnomalyModel"], EmbedlibParams, DefaultParamsReadable["EmbeddingAnomalyDetector"],
                               DefaultParamsWritable):
    """Learns the vocabulary and the embedding model of a DataFrame: ``fit(df)`` → :class:`EmbeddingAnomalyModel`."""

    def __init__(self, **params: Any) -> None:
        super().__init__()
        self._set(**params)

    def setParams(self, **params: Any) -> EmbeddingAnomalyDetector:
        return self._set(**params)

    def _output_dir(self, spark: Any) -> str:
        """``outputDir``, or on a local session a new temporary folder; elsewhere an unset outputDir is
        refused (the executors would not read the driver's temporary folder)."""
        if self.isDefined(self.outputDir):
            return str(self.getOrDefault(self.outputDir))
        master = str(spark.conf.get("spark.master", "") or "")
        if not master.startswith("local"):
            from embedlib.core.config import ConfigError

            raise ConfigError(f"EmbeddingAnomalyDetector: outputDir is not set and the session's master is "
                              f"{master or 'not local (Spark Connect)'}: set outputDir to storage every executor "
                              "reads (a Unity Catalog volume, dbfs:/..., s3://...); only a local session may use a "
                              "temporary folder of the driver's")
        return tempfile.mkdtemp(prefix="embedlib-")

    def _fit(self, dataset: DataFrame) -> EmbeddingAnomalyModel:
        from embedlib.core.layout import RunLayout
        from embedlib.core.vocab import SchemaError
        from embedlib.spark.train import run_train_job
        from embedlib.spark.vocab import run_vocab_job

        declared = [*self.getOrDefault(self.idCols), *self.getOrDefault(self.categoricalCols),
                    *self.getOrDefault(self.numericCols)]
        missing = [c for c in declared if c not in dataset.columns]
        if missing:
            raise SchemaError(f"EmbeddingAnomalyDetector: the DataFrame lacks column(s) {', '.join(missing)} "
                              f"(declared in idCols/categoricalCols/numericCols); it has {', '.join(dataset.columns)}")
        output = self._output_dir(dataset.sparkSession)
        source = RunLayout(output, self.getOrDefault(self.name)).fit_source
        cfg = self.config(output, source)  # bad settings fail here, before any work
        dataset = indexed_as_integers(dataset, self.getCategoricalCols())
        dataset.select(*[f"`{c}`" for c in dict.fromkeys(declared)]).write.mode("overwrite").parquet(source)
        spark = dataset.sparkSession
        run_vocab_job(spark, cfg)
        result = run_train_job(spark, cfg)
        model = EmbeddingAnomalyModel(bundlePath=result.bundle_path)
        return self._copyValues(model)


class EmbeddingAnomalyModel(Model, EmbedlibParams, MLReadable["EmbeddingAnomalyModel"], MLWritable):
    """Scores rows with a bundle: ``transform(df)`` adds the score job's columns to ``df``'s."""

    bundlePath: Param[str] = Param(Params._dummy(), "bundlePath", "the model bundle this model scores with",
                                   TypeConverters.toString)
    rankBy: Param[str] = Param(Params._dummy(), "rankBy", "score.rank_by of transform (default: the bundle's)",
                               TypeConverters.toString)
    topReasons: Param[int] = Param(Params._dummy(), "topReasons", "score.top_reasons of transform", TypeConverters.toInt)
    threshold: Param[float] = Param(Params._dummy(), "threshold", "score.threshold of transform: flag rows above "
                                    "this (default: the bundle's, at thresholdQuantile)", TypeConverters.toFloat)

    def __init__(self, **params: Any) -> None:
        super().__init__()
        self._bundle: Bundle | None = None
        self._setDefault(topReasons=3)
        self._set(**params)

    def setBundlePath(self, value: str) -> EmbeddingAnomalyModel:
        """Sets ``bundlePath``."""
        return self._set(bundlePath=value)

    def getBundlePath(self) -> str:
        """``bundlePath``: the model bundle this model scores with."""
        return str(self.getOrDefault(self.bundlePath))

    def setRankBy(self, value: str) -> EmbeddingAnomalyModel:
        """Sets ``rankBy`` (calibrated | nats)."""
        return self._set(rankBy=value)

    def getRankBy(self) -> str:
        """``rankBy`` (unset: the bundle's)."""
        return str(self.getOrDefault(self.rankBy)) if self.isDefined(self.rankBy) else self.bundle.rank_by

    def setTopReasons(self, value: int) -> EmbeddingAnomalyModel:
        """Sets ``topReasons``."""
        return self._set(topReasons=value)

    def getTopReasons(self) -> int:
        """``topReasons`` (default 3)."""
        return int(self.getOrDefault(self.topReasons))

    def setThreshold(self, value: float) -> EmbeddingAnomalyModel:
        """Sets ``threshold``: transform flags rows whose ranking is above it."""
        return self._set(threshold=value)

    def getThreshold(self) -> float:
        """``threshold`` (unset: the bundle's, for the ranking)."""
        return float(self.getOrDefault(self.threshold)) if self.isDefined(self.threshold) \
            else self.bundle.threshold_for(self.getRankBy())

    @property
    def bundle(self) -> Bundle:
        """The bundle (loaded and verified once per path)."""
        from embedlib.core.bundle import load_bundle

        path = self.getOrDefault(self.bundlePath)
        if self._bundle is None or self._bundle.path != path:
            self._bundle = load_bundle(path)
        return self._bundle

    def _transform(self, dataset: DataFrame) -> DataFrame:
        from embedlib.core.output import output_names
        from embedlib.spark.score import score_frame
        from embedlib.spark.workers import passthrough_columns

        names = self.output_names()
        taken = [new for old, new in names.items() if new != old and new in dataset.columns]
        if taken:
            from embedlib.core.vocab import SchemaError

            raise SchemaError(f"transform: output column(s) {', '.join(taken)} (set by the *Col Params) are "
                              "columns of the DataFrame already; choose other names")
        dataset = indexed_as_integers(dataset, self.bundle.spec.categorical)
        keep = passthrough_columns("all", (), dataset.columns, output_names(), "transform")
        rank_by = self.getOrDefault(self.rankBy) if self.isDefined(self.rankBy) else None
        threshold = self.getOrDefault(self.threshold) if self.isDefined(self.threshold) else None
        scored = score_frame(dataset.sparkSession, dataset, self.bundle, ids=keep, rank_by=rank_by,
                             threshold=threshold, top_reasons=self.getOrDefault(self.topReasons), table="the DataFrame")
        renamed = {old: new for old, new in names.items() if new != old}
        return scored.withColumnsRenamed(renamed) if renamed else scored

    def features(self, dataset: DataFrame, flatten: bool = False) -> DataFrame:
        """The design matrix of ``dataset`` (the features job's), its columns kept beside it."""
        from embedlib.spark.extract import features_frame, features_names
        from embedlib.spark.workers import passthrough_columns

        dataset = indexed_as_integers(dataset, self.bundle.spec.categorical)
        keep = passthrough_columns("all", (), dataset.columns, features_names(self.bundle, flatten), "features")
        return features_frame(dataset.sparkSession, dataset, self.bundle, ids=keep, flatten=flatten,
                              table="the DataFrame")

    def embeddings(self) -> pa.Table:
        """Every categorical value's embedding (the extract job's table: column, value, index, count,
        vector, bundle_id)."""
        from embedlib.spark.extract import embedding_table

        return embedding_table(self.bundle)

    def write(self) -> MLWriter:
        return _ModelWriter(self)

    @classmethod
    def read(cls) -> MLReader[EmbeddingAnomalyModel]:
        return _ModelReader(cls)


def indexed_as_integers(dataset: DataFrame, categorical: Sequence[str]) -> DataFrame:
    """``dataset`` with each categorical column that a Spark ML indexer made (``StringIndexer``,
    ``VectorIndexer``: a double with nominal or binary ML attributes) cast to a long, the type a
    categorical takes (a double is refused as one): ``Pipeline([StringIndexer(...), detector])``."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType

    def indexed(column: str) -> bool:
        field = dataset.schema[column]
        kind = (field.metadata or {}).get("ml_attr", {}).get("type")
        return isinstance(field.dataType, DoubleType) and kind in ("nominal", "binary")

    casts = {c: F.col(f"`{c}`").cast("long") for c in categorical if c in dataset.columns and indexed(c)}
    return dataset.withColumns(casts) if casts else dataset


BUNDLE_DIR = "bundle"


class _ModelWriter(MLWriter):
    """Spark ML metadata (the params but the bundle's path) and the bundle copied into ``<path>/bundle``."""

    def __init__(self, instance: EmbeddingAnomalyModel) -> None:
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:
        from embedlib.core.bundle import copy_bundle
        from embedlib.core.layout import join

        params = {p.name: v for p, v in self.instance._paramMap.items() if p.name != "bundlePath"}
        DefaultParamsWriter.saveMetadata(self.instance, path, self.sparkSession, paramMap=params)
        copy_bundle(self.instance.getOrDefault(self.instance.bundlePath), join(path, BUNDLE_DIR))


class _ModelReader(MLReader[EmbeddingAnomalyModel]):
    def __init__(self, cls: type[EmbeddingAnomalyModel]) -> None:
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> EmbeddingAnomalyModel:
        from embedlib.core.layout import join

        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        model = self.cls()
        model._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(model, metadata, skipParams=["bundlePath"])
        model.set(model.bundlePath, join(path.rstrip("/"), BUNDLE_DIR))
        return model
