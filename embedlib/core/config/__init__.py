"""Job configuration: frozen dataclasses loaded from YAML in one place.

A configuration is assembled from, in order of precedence (later wins):

1. the defaults embedded in the dataclasses below,
2. each ``--conf FILE`` in the order given,
3. each ``--set key.path=value`` (the value is parsed as YAML, so
   ``--set train.epochs=5`` is an int and ``--set columns.id=[row_id]`` a list).

Unknown keys and values of the wrong type are errors that name the key and the
file (or ``--set``) that supplied it. Mappings (``spark.conf``,
``source.options``) merge key by key across files; every other value is replaced.

The keys are a contract other tools drive: extend them, never rename or drop them.
"""

from __future__ import annotations

from embedlib.core.config.load import load_config
from embedlib.core.config.schema import (
    OUTPUT_COLUMNS,
    ColumnsConfig,
    Config,
    ConfigError,
    DeltaConfig,
    DriftConfig,
    FeaturesConfig,
    ModelConfig,
    ScoreConfig,
    SourceConfig,
    SparkConfig,
    StreamConfig,
    TrackingConfig,
    TrainConfig,
    VocabConfig,
    redact,
)

__all__ = [
    "ColumnsConfig",
    "Config",
    "ConfigError",
    "DeltaConfig",
    "DriftConfig",
    "FeaturesConfig",
    "ModelConfig",
    "OUTPUT_COLUMNS",
    "ScoreConfig",
    "SourceConfig",
    "SparkConfig",
    "StreamConfig",
    "TrackingConfig",
    "TrainConfig",
    "VocabConfig",
    "load_config",
    "redact",
]
