"""In memory, without Spark: :func:`fit` a bundle on a pandas DataFrame or an Arrow table, and
:func:`score_frame` pandas rows with it (``Bundle.score_frame``).

For tables that fit in memory. :func:`fit` takes its configuration from the CLI's loader (every
value checked by the same rules), counts the vocabulary with the arrow engine's counting
(:func:`~embedlib.vocab.build_vocabulary_in_memory`), encodes the rows into the run's shards with
the same encoder and split rules (:func:`~embedlib.encode.encode_in_memory`), and trains, sizes,
calibrates and saves through the training job's own :func:`~embedlib.train.train_on_shards` on the
local backend. The bundle is the jobs' format: ``embedlib score`` reads it, and
:func:`score_frame` builds the score job's columns with the score job's
:func:`~embedlib.score.build_output` — the same numbers on the same rows.
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

from embedlib.config import ConfigError, load_config
from embedlib.layout import RunLayout, open_atomic
from embedlib.vocab.model import SchemaError

if TYPE_CHECKING:
    from embedlib.bundle import Bundle
    from embedlib.config import Config

__all__ = ["fit", "score_frame"]

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
    return _fit(as_table(data, cfg.feature_columns, "embedlib.fit"), cfg, source)


def _fit(table: pa.Table, cfg: Config, source: str) -> Bundle:
    from embedlib.bundle import load_bundle
    from embedlib.encode import encode_in_memory
    from embedlib.tracking import check_tracking
    from embedlib.train import resolve_backend, train_on_shards, warm_start_of
    from embedlib.vocab import build_vocabulary_in_memory

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


def as_table(data: pd.DataFrame | pa.Table | pa.RecordBatch, columns: Sequence[str], who: str) -> pa.Table:
    """``columns`` of ``data`` as an Arrow table (dictionary columns decoded); a missing column
    or one Arrow cannot read is named."""
    if isinstance(data, pd.DataFrame):
        names = [str(c) for c in data.columns]
    elif isinstance(data, pa.Table | pa.RecordBatch):
        names = list(data.schema.names)
    else:
        raise TypeError(f"{who}: expected a pandas DataFrame or a pyarrow Table, got {type(data).__name__}")
    missing = [c for c in columns if c not in names]
    if missing:
        raise SchemaError(f"{who}: the data lacks column(s) {', '.join(missing)}; it has {', '.join(names)}")
    if isinstance(data, pd.DataFrame):
        arrays = []
        for c in columns:
            try:
                arrays.append(pa.array(data[c], from_pandas=True))
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise SchemaError(f"{who}: column '{c}' mixes types Arrow cannot hold in one column ({exc}); "
                                  "cast it to one type (str for a categorical, float for a numeric)") from exc
        table = pa.table(arrays, names=list(columns))
    else:
        table = (data if isinstance(data, pa.Table) else pa.Table.from_batches([data])).select(list(columns))
    for i, f in enumerate(table.schema):
        if pa.types.is_dictionary(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(f.type.value_type))
    return table


def score_frame(bundle: Bundle, frame: pd.DataFrame, *, rank_by: str | None = None, top_reasons: int = 3,
                emit_code: bool = False) -> pd.DataFrame:
    """The score job's columns for each row of ``frame`` (``anomaly_score``, ``is_anomaly``,
    ``contributions`` as dicts, ``reasons`` as lists of dicts, ``calibrated_score``,
    ``calibrated_contributions``, ``code`` with ``emit_code``, ``bundle_id``), indexed like
    ``frame`` so that ``frame.join(scores)`` puts them side by side."""
    from pyspark.sql.pandas.types import from_arrow_schema  # type mapping only: no session

    from embedlib.score import build_output
    from embedlib.vocab.schema import check_columns

    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"score_frame: expected a pandas DataFrame, got {type(frame).__name__}")
    spec = bundle.spec
    table = as_table(frame, spec.columns, "score_frame")
    check_columns(from_arrow_schema(table.schema), "the rows to score", categorical=spec.categorical,
                  numeric=spec.numeric, trained=bundle.source_types)
    ranking = rank_by or bundle.rank_by
    threshold = bundle.threshold_for(ranking)
    # one call: score_encoded runs the model the bundle's pass_rows at a time (bounded memory)
    out = build_output(bundle, table, threshold=threshold, top_reasons=top_reasons, emit_code=emit_code,
                       rank_by=ranking)
    out["bundle_id"] = pa.array([bundle.bundle_id] * table.num_rows, pa.string())
    scores = pa.table(out).to_pandas(maps_as_pydicts="strict")
    scores.index = frame.index
    return scores
