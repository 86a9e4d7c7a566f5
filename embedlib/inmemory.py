"""In memory, without Spark: :func:`fit` a bundle on a pandas DataFrame or an Arrow table; score
pandas rows with it with ``Bundle.score_frame`` (:func:`embedlib.core.output.score_pandas`).

For tables that fit in memory. :func:`fit` takes its configuration from the CLI's loader (every
value checked by the same rules), counts the vocabulary with the arrow engine's counting
(:func:`~embedlib.core.vocab.build_vocabulary_in_memory`), encodes the rows into the run's shards with
the same encoder and split rules (:func:`~embedlib.core.encode.encode_in_memory`), and trains, sizes,
calibrates and saves through the training job's own :func:`~embedlib.spark.train.train_on_shards` on the
local backend. The bundle is the jobs' format: ``embedlib score`` reads it, and
``Bundle.score_frame`` builds the score job's columns with the score job's
:func:`~embedlib.core.output.build_output` — the same numbers on the same rows.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from embedlib.core.config import ConfigError, load_config
from embedlib.core.layout import RunLayout, open_atomic

if TYPE_CHECKING:
    from embedlib.core.bundle import Bundle
    from embedlib.core.config import Config

__all__ = ["fit"]

log = logging.getLogger(__name__)

#: What the configuration of an in-memory fit cannot take from ``settings``.
_FROM_ARGUMENTS = ("columns.categorical", "columns.numeric", "columns.id", "output_dir", "name", "source")
SOURCE = "the in-memory table"


def fit(data: pd.DataFrame | pa.Table | pa.RecordBatch, *, categorical: Sequence[str] = (),
        numeric: Sequence[str] = (), output_dir: str | None = None, name: str = "embedlib",
        settings: Mapping[str, Any] | None = None) -> Bundle:
    """Learn the vocabulary and the model of ``data`` in this process and return the bundle.

    ``categorical``/``numeric``: the columns to model (others are ignored). ``output_dir``: where
    the run goes (``<output_dir>/<name>/bundle``, and its ``_work`` folder, so a rerun resumes);
    default: a new temporary folder. ``settings``: any other configuration key by its dotted name,
    e.g. ``{"model.size": "small", "train.max_steps": 2000}``. Training runs on the local backend.
    """
    settings = dict(settings or {})
    taken = [k for k in settings if any(k == p or k.startswith(p + ".") for p in _FROM_ARGUMENTS)]
    if taken:
        raise ConfigError(f"embedlib.fit: settings {', '.join(taken)} come from fit's own arguments "
                          "(categorical, numeric, output_dir, name, data); pass them there")
    backend = settings.setdefault("train.backend", "local")
    if backend != "local":
        raise ConfigError(f"embedlib.fit: train.backend={backend}: fit trains in this process (train.backend=local); "
                          "use embedlib.ml.EmbeddingAnomalyDetector or `embedlib train` for distributed training")
    output = output_dir if output_dir is not None else tempfile.mkdtemp(prefix="embedlib-")
    source = RunLayout(output, name).fit_source
    cfg = load_config([], [f"output_dir={output}", f"name={name}", f"source.path={source}", "source.format=parquet",
                           f"columns.categorical={json.dumps(list(categorical))}",
                           f"columns.numeric={json.dumps(list(numeric))}",
                           *(f"{k}={json.dumps(v)}" for k, v in settings.items())])  # bad settings fail here
    from embedlib.core.output import as_table

    return _fit(as_table(data, cfg.feature_columns, "embedlib.fit"), cfg, source)


def _fit(table: pa.Table, cfg: Config, source: str) -> Bundle:
    from embedlib.core.bundle import load_bundle
    from embedlib.core.encode import encode_in_memory
    from embedlib.core.vocab import build_vocabulary_in_memory
    from embedlib.spark.tracking import check_tracking
    from embedlib.spark.train import resolve_backend, train_on_shards, warm_start_of

    backend = resolve_backend(None, cfg.train)
    check_tracking(cfg)
    vocab = build_vocabulary_in_memory(table, cfg, source=SOURCE)  # checks the columns and the cuts
    cfg, parent = warm_start_of(cfg, vocab)  # a bad warm start is refused before anything is written
    # the run's source, as the estimator's: `embedlib evaluate` and a rerun read what fit trained on
    with open_atomic(source) as handle:
        pq.write_table(table, handle)
    log.info("vocabulary of %d categorical and %d numeric column(s) over %d rows (hash %s)",
             len(vocab.columns), len(vocab.numeric), vocab.meta["row_count"], vocab.content_hash[:12])
    shards = encode_in_memory(table, vocab, cfg)
    result = train_on_shards(None, cfg, vocab, shards, backend, parent=parent)
    return load_bundle(result.bundle_path)
