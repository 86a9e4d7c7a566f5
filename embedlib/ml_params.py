"""The Params of the Spark ML stages (:mod:`embedlib.ml`): the columns, the run, the output columns'
names, and every setting of the config's ``model`` and ``train`` sections under its config name in
camelCase, each with a setter and a getter as pyspark's stages have (those of the config settings
generated from the config classes, so they cannot drift from them)."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import TYPE_CHECKING, Any, TypeVar

from pyspark.ml.param import Param, Params, TypeConverters

from embedlib.core.config import Config, load_config
from embedlib.core.config.schema import ModelConfig, TrainConfig

__all__ = ["CONFIG_PARAMS", "OUTPUT_COLS", "EmbedlibParams", "camel"]

P = TypeVar("P", bound="EmbedlibParams")

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


class EmbedlibParams(Params):
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
    thresholdQuantile: Param[float] = Param(Params._dummy(), "thresholdQuantile",
                                            "score.threshold_quantile: the share of training rows under the "
                                            "bundle's threshold, which transform flags above", TypeConverters.toFloat)
    scoreCol: Param[str] = Param(Params._dummy(), "scoreCol", "output column of the score in nats (anomaly_score)",
                                 TypeConverters.toString)
    flagCol: Param[str] = Param(Params._dummy(), "flagCol", "output column of the flag (is_anomaly)",
                                TypeConverters.toString)
    calibratedScoreCol: Param[str] = Param(Params._dummy(), "calibratedScoreCol",
                                           "output column of the calibrated score (calibrated_score)", TypeConverters.toString)
    contributionsCol: Param[str] = Param(Params._dummy(), "contributionsCol",
                                         "output column of each column's nats (contributions)", TypeConverters.toString)
    calibratedContributionsCol: Param[str] = Param(
        Params._dummy(), "calibratedContributionsCol",
        "output column of each column's calibrated term (calibrated_contributions)", TypeConverters.toString)
    reasonsCol: Param[str] = Param(Params._dummy(), "reasonsCol", "output column of the reasons (reasons)",
                                   TypeConverters.toString)

    if TYPE_CHECKING:  # BEGIN generated accessors of the config settings, as type checkers see them (test_ml checks)
        def setMaxEmbeddingDim(self: P, value: int | None) -> P: ...  # model.max_embedding_dim
        def getMaxEmbeddingDim(self) -> int | None: ...
        def setHidden(self: P, value: list[int] | None) -> P: ...  # model.hidden
        def getHidden(self) -> list[int] | None: ...
        def setBottleneck(self: P, value: int | None) -> P: ...  # model.bottleneck
        def getBottleneck(self) -> int | None: ...
        def setCorruption(self: P, value: float) -> P: ...  # model.corruption
        def getCorruption(self) -> float: ...
        def setKind(self: P, value: str) -> P: ...  # model.kind
        def getKind(self) -> str: ...
        def setMasks(self: P, value: int | None) -> P: ...  # model.masks
        def getMasks(self) -> int | None: ...
        def setMaskRate(self: P, value: float) -> P: ...  # model.mask_rate
        def getMaskRate(self) -> float: ...
        def setSize(self: P, value: str) -> P: ...  # model.size
        def getSize(self) -> str: ...
        def setSearchRows(self: P, value: int) -> P: ...  # model.search_rows
        def getSearchRows(self) -> int: ...
        def setSearchSteps(self: P, value: int) -> P: ...  # model.search_steps
        def getSearchSteps(self) -> int: ...
        def setSearchSeconds(self: P, value: float) -> P: ...  # model.search_seconds
        def getSearchSeconds(self) -> float: ...
        def setAdaptiveAbove(self: P, value: int | None) -> P: ...  # model.adaptive_above
        def getAdaptiveAbove(self) -> int | None: ...
        def setNumericHead(self: P, value: str) -> P: ...  # model.numeric_head
        def getNumericHead(self) -> str: ...
        def setBackend(self: P, value: str) -> P: ...  # train.backend
        def getBackend(self) -> str: ...
        def setNumWorkers(self: P, value: int) -> P: ...  # train.num_workers
        def getNumWorkers(self) -> int: ...
        def setUseGpu(self: P, value: bool | str) -> P: ...  # train.use_gpu
        def getUseGpu(self) -> bool | str: ...
        def setPrecision(self: P, value: str) -> P: ...  # train.precision
        def getPrecision(self) -> str: ...
        def setLocalMode(self: P, value: bool | str) -> P: ...  # train.local_mode
        def getLocalMode(self) -> bool | str: ...
        def setEpochs(self: P, value: int | None) -> P: ...  # train.epochs
        def getEpochs(self) -> int | None: ...
        def setBatchSize(self: P, value: int) -> P: ...  # train.batch_size
        def getBatchSize(self) -> int: ...
        def setLearningRate(self: P, value: float) -> P: ...  # train.learning_rate
        def getLearningRate(self) -> float: ...
        def setSeed(self: P, value: int) -> P: ...  # train.seed
        def getSeed(self) -> int: ...
        def setValidationFraction(self: P, value: float) -> P: ...  # train.validation_fraction
        def getValidationFraction(self) -> float: ...
        def setPatience(self: P, value: int) -> P: ...  # train.patience
        def getPatience(self) -> int: ...
        def setMaxSteps(self: P, value: int | None) -> P: ...  # train.max_steps
        def getMaxSteps(self) -> int | None: ...
        def setLrSchedule(self: P, value: str) -> P: ...  # train.lr_schedule
        def getLrSchedule(self) -> str: ...
        def setMinImprovement(self: P, value: float) -> P: ...  # train.min_improvement
        def getMinImprovement(self) -> float: ...
        def setMaxRows(self: P, value: int | None) -> P: ...  # train.max_rows
        def getMaxRows(self) -> int | None: ...
        def setSampleFraction(self: P, value: float | None) -> P: ...  # train.sample_fraction
        def getSampleFraction(self) -> float | None: ...
        def setShuffleBuffer(self: P, value: int) -> P: ...  # train.shuffle_buffer
        def getShuffleBuffer(self) -> int: ...
        def setNumShards(self: P, value: int | None) -> P: ...  # train.num_shards
        def getNumShards(self) -> int | None: ...
        def setWarmStart(self: P, value: str | None) -> P: ...  # train.warm_start
        def getWarmStart(self) -> str | None: ...
        def setLazyAbove(self: P, value: int | None) -> P: ...  # train.lazy_above
        def getLazyAbove(self) -> int | None: ...
        def setMaxRestarts(self: P, value: int) -> P: ...  # train.max_restarts
        def getMaxRestarts(self) -> int: ...
    # END generated accessors

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(categoricalCols=[], numericCols=[], idCols=[], name="embedlib", configOverrides=[],
                         **{param: column for param, column in OUTPUT_COLS.items()})

    def setCategoricalCols(self: P, value: list[str]) -> P:
        """Sets ``categoricalCols`` (columns.categorical)."""
        return self._set(categoricalCols=value)

    def getCategoricalCols(self) -> list[str]:
        """``categoricalCols`` (columns.categorical)."""
        return list(self.getOrDefault("categoricalCols"))

    def setNumericCols(self: P, value: list[str]) -> P:
        """Sets ``numericCols`` (columns.numeric)."""
        return self._set(numericCols=value)

    def getNumericCols(self) -> list[str]:
        """``numericCols`` (columns.numeric)."""
        return list(self.getOrDefault("numericCols"))

    def setIdCols(self: P, value: list[str]) -> P:
        """Sets ``idCols`` (columns.id)."""
        return self._set(idCols=value)

    def getIdCols(self) -> list[str]:
        """``idCols`` (columns.id)."""
        return list(self.getOrDefault("idCols"))

    def setOutputDir(self: P, value: str) -> P:
        """Sets ``outputDir``: where fit writes its run, on storage every executor reads."""
        return self._set(outputDir=value)

    def getOutputDir(self) -> str:
        """``outputDir`` (an error if unset: a local fit then uses a temporary folder of its own)."""
        return str(self.getOrDefault(self.outputDir))

    def setName(self: P, value: str) -> P:
        """Sets ``name``, the run's name."""
        return self._set(name=value)

    def getName(self) -> str:
        """``name``, the run's name."""
        return str(self.getOrDefault(self.name))

    def setConfigOverrides(self: P, value: list[str]) -> P:
        """Sets ``configOverrides``: other config keys as ``key=value`` strings (as ``--set``)."""
        return self._set(configOverrides=value)

    def getConfigOverrides(self) -> list[str]:
        """``configOverrides``."""
        return list(self.getOrDefault("configOverrides"))

    def setThresholdQuantile(self: P, value: float) -> P:
        """Sets ``thresholdQuantile`` (score.threshold_quantile, used by fit for the bundle's threshold)."""
        return self._set(thresholdQuantile=value)

    def getThresholdQuantile(self) -> float:
        """``thresholdQuantile`` (an error if unset: the config's default, 0.99, applies)."""
        return float(self.getOrDefault(self.thresholdQuantile))

    def setScoreCol(self: P, value: str) -> P:
        """Sets ``scoreCol``."""
        return self._set(scoreCol=value)

    def getScoreCol(self) -> str:
        """``scoreCol`` (default anomaly_score)."""
        return str(self.getOrDefault(self.scoreCol))

    def setFlagCol(self: P, value: str) -> P:
        """Sets ``flagCol``."""
        return self._set(flagCol=value)

    def getFlagCol(self) -> str:
        """``flagCol`` (default is_anomaly)."""
        return str(self.getOrDefault(self.flagCol))

    def setCalibratedScoreCol(self: P, value: str) -> P:
        """Sets ``calibratedScoreCol``."""
        return self._set(calibratedScoreCol=value)

    def getCalibratedScoreCol(self) -> str:
        """``calibratedScoreCol`` (default calibrated_score)."""
        return str(self.getOrDefault(self.calibratedScoreCol))

    def setContributionsCol(self: P, value: str) -> P:
        """Sets ``contributionsCol``."""
        return self._set(contributionsCol=value)

    def getContributionsCol(self) -> str:
        """``contributionsCol`` (default contributions)."""
        return str(self.getOrDefault(self.contributionsCol))

    def setCalibratedContributionsCol(self: P, value: str) -> P:
        """Sets ``calibratedContributionsCol``."""
        return self._set(calibratedContributionsCol=value)

    def getCalibratedContributionsCol(self) -> str:
        """``calibratedContributionsCol`` (default calibrated_contributions)."""
        return str(self.getOrDefault(self.calibratedContributionsCol))

    def setReasonsCol(self: P, value: str) -> P:
        """Sets ``reasonsCol``."""
        return self._set(reasonsCol=value)

    def getReasonsCol(self) -> str:
        """``reasonsCol`` (default reasons)."""
        return str(self.getOrDefault(self.reasonsCol))

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
        if self.isSet(self.thresholdQuantile):
            sets.append(f"score.threshold_quantile={self.getOrDefault(self.thresholdQuantile)}")
        return load_config([], [*sets, *self.getOrDefault(self.configOverrides)])

    def output_names(self) -> dict[str, str]:
        """Each output column's name under this stage's Params: ``{today's name: its name here}``."""
        return {column: str(self.getOrDefault(self.getParam(param))) for param, column in OUTPUT_COLS.items()}


#: The output column Params and the score job's names they default to.
OUTPUT_COLS = {"scoreCol": "anomaly_score", "flagCol": "is_anomaly", "calibratedScoreCol": "calibrated_score",
               "contributionsCol": "contributions", "calibratedContributionsCol": "calibrated_contributions",
               "reasonsCol": "reasons"}


def _accessors(name: str, key: str) -> tuple[Any, Any]:
    """The generated ``set<Name>``/``get<Name>`` of the Param of config key ``key``."""

    def setter(self: EmbedlibParams, value: Any) -> EmbedlibParams:
        return self._set(**{name: value})

    def getter(self: EmbedlibParams) -> Any:
        return self.getOrDefault(self.getParam(name))

    setter.__doc__ = f"Sets ``{name}`` (config key {key})."
    getter.__doc__ = f"``{name}`` (config key {key}; unset: the config's default)."
    return setter, getter


for _name, (_key, _param) in CONFIG_PARAMS.items():  # model and train settings: class-level Params, as pyspark's
    setattr(EmbedlibParams, _name, _param)
    _upper = _name[0].upper() + _name[1:]
    assert not hasattr(EmbedlibParams, f"set{_upper}"), f"set{_upper} is taken"
    _set_fn, _get_fn = _accessors(_name, _key)
    setattr(EmbedlibParams, f"set{_upper}", _set_fn)
    setattr(EmbedlibParams, f"get{_upper}", _get_fn)
