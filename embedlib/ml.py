"""Spark ML: :class:`EmbeddingAnomalyDetector` (an ``Estimator``) and :class:`EmbeddingAnomalyModel`.

The estimator's ``fit(df)`` runs the same jobs as ``embedlib vocab`` and ``embedlib train`` on a
Parquet copy of the declared columns of ``df`` (written under the run directory, so the run is
reproducible and resumable like any other), through a configuration built by the same loader as
the CLI's (every value checked by the same rules). The model's ``transform(df)`` is the score job's
``score_frame``; ``features(df)`` the features job's ``features_frame``; ``embeddings()`` the extract
job's table. ``save``/``load`` go through Spark ML's writer and reader: the params as Spark ML
metadata, the bundle copied beside them — so the model is a stage a ``Pipeline`` saves and loads.

Params: ``categoricalCols``, ``numericCols``, ``idCols`` (pyspark's naming), ``outputDir``, ``name``,
``configOverrides`` (any other config key, as ``key=value`` strings), and every setting of the
config's ``model`` and ``train`` sections under its config name in camelCase (``learningRate`` is
``train.learning_rate``); unset ones keep the config's defaults.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import types
import typing
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

from embedlib.core.config import Config, load_config
from embedlib.core.config.schema import ModelConfig, TrainConfig

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame

    from embedlib.core.bundle import Bundle

__all__ = ["EmbeddingAnomalyDetector", "EmbeddingAnomalyModel"]

log = logging.getLogger(__name__)

#: Config sections whose settings are Params, and the settings left to ``configOverrides``.
SECTIONS = {"model": ModelConfig, "train": TrainConfig}
NOT_PARAMS = {"embedding_dims"}  # a mapping: configOverrides=["model.embedding_dims.city=8"]


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _converter(hint: Any) -> Any:
    """The pyspark type converter of a config type; a union of two kinds (``bool | "auto"``) is
    passed as given and checked by the config loader, which names the key."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            return TypeConverters.identity
        hint = args[0]
    if hint is int:
        return TypeConverters.toInt
    if hint is float:
        return TypeConverters.toFloat
    if hint is bool:
        return TypeConverters.toBoolean
    if hint is str or typing.get_origin(hint) is typing.Literal:
        return TypeConverters.toString
    if typing.get_origin(hint) is tuple:
        return TypeConverters.toListInt
    return TypeConverters.identity


def _config_params() -> dict[str, tuple[str, Param[Any]]]:
    """``{param name: (config key, Param)}`` for every model and train setting."""
    out: dict[str, tuple[str, Param[Any]]] = {}
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in NOT_PARAMS:
                continue
            key = f"{section}.{f.name}"
            name = camel(f.name)
            assert name not in out, f"{key} and {out[name][0]} would share the Param {name}"
            out[name] = (key, Param(Params._dummy(), name, f"config key {key} (README, configuration reference)",
                                    _converter(hints[f.name])))
    return out


CONFIG_PARAMS = _config_params()


class _EmbedlibParams(Params):
    categoricalCols: Param[list[str]] = Param(Params._dummy(), "categoricalCols", "categorical columns (columns.categorical)",
                                              TypeConverters.toListString)
    numericCols: Param[list[str]] = Param(Params._dummy(), "numericCols", "numeric columns (columns.numeric)",
                                          TypeConverters.toListString)
    idCols: Param[list[str]] = Param(Params._dummy(), "idCols", "id columns passed through (columns.id)",
                                     TypeConverters.toListString)
    outputDir: Param[str] = Param(Params._dummy(), "outputDir", "where fit writes its run (output_dir): storage "
                                  "every executor reaches on a cluster; default: a new local temporary folder",
                                  TypeConverters.toString)
    name: Param[str] = Param(Params._dummy(), "name", "the run's name (name)", TypeConverters.toString)
    configOverrides: Param[list[str]] = Param(Params._dummy(), "configOverrides",
                                              "other config keys as key=value (as --set)", TypeConverters.toListString)

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(categoricalCols=[], numericCols=[], idCols=[], name="embedlib", configOverrides=[])

    def config(self, output_dir: str, source_path: str) -> Config:
        """The run's configuration (the CLI's loader and rules) for a fit's source copy."""
        sets = [f"output_dir={output_dir}", f"name={self.getOrDefault(self.name)}",
                f"source.path={source_path}", "source.format=parquet",
                f"columns.categorical={json.dumps(self.getOrDefault(self.categoricalCols))}",
                f"columns.numeric={json.dumps(self.getOrDefault(self.numericCols))}",
                f"columns.id={json.dumps(self.getOrDefault(self.idCols))}"]
        for name, (key, _) in CONFIG_PARAMS.items():
            param = self.getParam(name)
            if self.isSet(param):
                sets.append(f"{key}={json.dumps(self.getOrDefault(param))}")
        return load_config([], [*sets, *self.getOrDefault(self.configOverrides)])


for _name, (_, _param) in CONFIG_PARAMS.items():  # model and train settings: class-level Params, as pyspark's
    setattr(_EmbedlibParams, _name, _param)


class EmbeddingAnomalyDetector(Estimator["EmbeddingAnomalyModel"], _EmbedlibParams, DefaultParamsReadable["EmbeddingAnomalyDetector"],
                               DefaultParamsWritable):
    """Learns the vocabulary and the embedding model of a DataFrame: ``fit(df)`` → :class:`EmbeddingAnomalyModel`."""

    def __init__(self, **params: Any) -> None:
        super().__init__()
        self._set(**params)

    def setParams(self, **params: Any) -> EmbeddingAnomalyDetector:
        return self._set(**params)

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
        output = self.getOrDefault(self.outputDir) if self.isDefined(self.outputDir) else tempfile.mkdtemp(prefix="embedlib-")
        source = RunLayout(output, self.getOrDefault(self.name)).fit_source
        cfg = self.config(output, source)  # bad settings fail here, before any work
        dataset.select(*[f"`{c}`" for c in dict.fromkeys(declared)]).write.mode("overwrite").parquet(source)
        spark = dataset.sparkSession
        run_vocab_job(spark, cfg)
        result = run_train_job(spark, cfg)
        model = EmbeddingAnomalyModel(bundlePath=result.bundle_path)
        return self._copyValues(model)


class EmbeddingAnomalyModel(Model, _EmbedlibParams, MLReadable["EmbeddingAnomalyModel"], MLWritable):
    """Scores rows with a bundle: ``transform(df)`` adds the score job's columns to ``df``'s."""

    bundlePath: Param[str] = Param(Params._dummy(), "bundlePath", "the model bundle this model scores with",
                                   TypeConverters.toString)
    rankBy: Param[str] = Param(Params._dummy(), "rankBy", "score.rank_by of transform (default: the bundle's)",
                               TypeConverters.toString)
    topReasons: Param[int] = Param(Params._dummy(), "topReasons", "score.top_reasons of transform", TypeConverters.toInt)

    def __init__(self, **params: Any) -> None:
        super().__init__()
        self._bundle: Bundle | None = None
        self._setDefault(topReasons=3)
        self._set(**params)

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

        keep = passthrough_columns("all", (), dataset.columns, output_names(), "transform")
        rank_by = self.getOrDefault(self.rankBy) if self.isDefined(self.rankBy) else None
        return score_frame(dataset.sparkSession, dataset, self.bundle, ids=keep, rank_by=rank_by,
                           top_reasons=self.getOrDefault(self.topReasons), table="the DataFrame")

    def features(self, dataset: DataFrame, flatten: bool = False) -> DataFrame:
        """The design matrix of ``dataset`` (the features job's), its columns kept beside it."""
        from embedlib.spark.extract import features_frame, features_names
        from embedlib.spark.workers import passthrough_columns

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
