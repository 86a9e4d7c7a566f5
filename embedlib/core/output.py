"""The output of scoring: raw rows in, the score columns out — the one function every front door uses.

:func:`build_output` turns an Arrow batch (columns named as in the bundle) into the scores table's
columns; :func:`score_pandas` is it on a pandas frame (``Bundle.score_frame``, the MLflow model),
and the Spark jobs run it inside ``mapInArrow`` (:mod:`embedlib.spark.workers`): the same numbers on the
same rows wherever they are scored. Core: no pyspark, and no import of :mod:`embedlib.core.bundle` (a
bundle is anything :class:`~embedlib.core.inference.ScoringBundle` describes).

``anomaly_score`` is the row's negative log-likelihood in nats and ``contributions`` (column →
nats) adds up to it. ``calibrated_contributions`` (column → −log of the share of normal rows whose
column adds at least as many nats; :mod:`embedlib.core.calibration`) add up to ``calibrated_score``.
Rows are flagged (``is_anomaly``) and their ``reasons`` ordered by the ranking (calibrated by
default). ``reasons`` lists the top columns: the observed value, the value the model expected (for
a categorical its arg-max, with its probability), and the nats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from embedlib.core import summary
from embedlib.core.drift import column_bins
from embedlib.core.indices import NULL_INDEX, OOV_INDEX
from embedlib.core.inference import ScoringBundle, score_rows
from embedlib.core.vocab.model import SchemaError
from embedlib.core.vocab.schema import check_columns

__all__ = ["DETAILS", "OUTPUT_COLUMNS", "REASON_TYPE", "RUN_COLUMNS", "as_table", "build_output", "output_names", "score_pandas"]

REASON_TYPE = pa.struct(
    [
        ("column", pa.string()),
        ("value", pa.string()),
        ("expected", pa.string()),
        ("probability", pa.float64()),
        ("nats", pa.float64()),
    ]
)


def build_output(
    bundle: ScoringBundle,
    features: pa.Table | pa.RecordBatch,
    *,
    threshold: float,
    top_reasons: int,
    emit_code: bool,
    counts: Any = None,
    rank_by: str | None = None,
    detail: str = "all",
) -> dict[str, pa.Array]:
    """Score raw feature columns (named as in the bundle) into the output arrays.

    ``detail`` (``score.detail``, :data:`DETAILS`): which rows get ``contributions``,
    ``calibrated_contributions`` and ``reasons`` — ``all`` every row, ``flagged`` the rows with
    ``is_anomaly`` (the others hold nulls: nothing is computed or written for them), ``none`` no row.
    Every row is scored in full whatever the detail: the scores, the flag and the counts are the same.

    ``is_anomaly`` and the order of ``reasons`` follow ``rank_by`` (default: the
    bundle's). ``counts`` (anything with ``add``: a task's :class:`embedlib.spark.workers.CountSum`) gets the
    batch's summary counts (:func:`embedlib.core.summary.batch_counts`: missing, out-of-vocabulary
    and ±inf cells, drift bins) — counted here, in the worker, for the score job's run summary.
    """
    result = score_rows(bundle, features, rank_by=rank_by, with_code=emit_code)
    spec = bundle.spec
    names = pa.array(spec.columns, pa.string())
    rows, width = result.contributions.shape
    n_cat = len(spec.categorical)

    if detail not in DETAILS:
        raise ValueError(f"score.detail={detail!r}: use one of {', '.join(DETAILS)}")
    out: dict[str, pa.Array] = {}
    out["anomaly_score"] = pa.array(result.score, pa.float64())
    flagged = result.ranking > threshold
    out["is_anomaly"] = pa.array(flagged, pa.bool_())
    shown = flagged if detail == "flagged" else np.full(rows, detail == "all")
    sel = np.flatnonzero(shown)  # the rows that get their detail, in order
    hidden = None if len(sel) == rows else pa.array(~shown)  # null rows (no validity buffer when none)
    offsets = pa.array(np.concatenate([[0], np.cumsum(np.where(shown, width, 0))]).astype(np.int32))
    keys = names.take(np.tile(np.arange(width), len(sel)))

    def of_shown(a: np.ndarray) -> np.ndarray:
        return a if hidden is None else a[sel]

    out["contributions"] = pa.MapArray.from_arrays(
        offsets, keys, pa.array(of_shown(result.contributions).reshape(-1), pa.float64()), mask=hidden
    )

    k = min(top_reasons, width)
    top = np.argsort(-of_shown(result.ranking_contributions), axis=1, kind="stable")[:, :k]
    row_idx = np.repeat(sel, k)
    col_idx = top.reshape(-1)
    values = np.empty(len(col_idx), dtype=object)
    expected = np.empty(len(col_idx), dtype=object)
    probability = np.full(len(col_idx), np.nan)
    for c in np.unique(col_idx):
        hit = col_idx == c
        at = row_idx[hit]
        name = spec.columns[c]
        if c < n_cat:
            cv = bundle.vocab[name]
            taken = features.column(name).take(pa.array(at))  # the rows shown only
            raw = taken.to_numpy(zero_copy_only=False)
            null = pc.is_null(taken, nan_is_null=True).to_numpy(zero_copy_only=False)  # None or NaN
            shown_values = np.where(null | (result.observed[at, c] == NULL_INDEX), "<null>", raw.astype(str))
            values[hit] = shown_values
            index, prob = result.expected_of(c, at)
            expected[hit] = cv.labels()[index]
            probability[hit] = prob
        else:
            j = c - n_cat
            raw_x = _as_float(features.column(name).take(pa.array(at)))  # the rows shown only
            # formatted from Python floats (.tolist()): 3× faster than numpy scalars (score_bench --profile)
            values[hit] = ["<null>" if not math.isfinite(x) else f"{x:.6g}" for x in raw_x.tolist()]
            expected[hit] = [f"{x:.6g}" for x in result.expected_num[at, j].tolist()]
    reasons = pa.StructArray.from_arrays(
        [
            names.take(pa.array(col_idx, pa.int64())),
            pa.array(values.tolist(), pa.string()),
            pa.array(expected.tolist(), pa.string()),
            pa.array(probability, pa.float64(), mask=np.isnan(probability)),
            pa.array(result.contributions[row_idx, col_idx] if len(col_idx) else [], pa.float64()),
        ],
        fields=list(REASON_TYPE),
    )
    reason_offsets = pa.array(np.concatenate([[0], np.cumsum(np.where(shown, k, 0))]).astype(np.int32))
    out["reasons"] = pa.ListArray.from_arrays(reason_offsets, reasons, mask=hidden)
    if result.calibrated is not None and result.calibrated_score is not None:
        out["calibrated_score"] = pa.array(result.calibrated_score, pa.float64())
        out["calibrated_contributions"] = pa.MapArray.from_arrays(
            offsets, keys, pa.array(of_shown(result.calibrated).reshape(-1), pa.float64()), mask=hidden
        )
    else:  # a bundle written before calibration
        out["calibrated_score"] = pa.nulls(rows, pa.float64())
        out["calibrated_contributions"] = pa.nulls(rows, pa.map_(pa.string(), pa.float64()))
    if emit_code:
        code = result.code.astype(np.float32)
        out["code"] = pa.ListArray.from_arrays(
            pa.array(np.arange(rows + 1, dtype=np.int32) * code.shape[1]),
            pa.array(code.reshape(-1), pa.float32()),
        )
    if counts is not None:
        marks = np.zeros((rows, width), dtype=np.int8)
        if n_cat:
            marks[:, :n_cat][result.observed == NULL_INDEX] = summary.FLAG_MISSING
            marks[:, :n_cat][result.observed == OOV_INDEX] = summary.FLAG_OOV
        if spec.numeric:
            marks[:, n_cat:][result.missing > 0] = summary.FLAG_MISSING
            for j, name in enumerate(spec.numeric):  # ±inf only gets here under inf_policy: null
                marks[np.isinf(_as_float(features.column(name))), n_cat + j] = summary.FLAG_INF
        bins = column_bins(result.observed, result.standardized, result.missing)
        counts.add(summary.batch_counts(summary.CountLayout(width, n_cat), marks, bins))
    return out


def _as_float(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


#: What ``score.detail`` takes: which rows get ``contributions``, ``calibrated_contributions`` and ``reasons``.
DETAILS = ("flagged", "all", "none")

#: The columns :func:`build_output` writes, in order (``code`` with ``emit_code`` only).
OUTPUT_COLUMNS = ("anomaly_score", "is_anomaly", "contributions", "reasons", "calibrated_score",
                  "calibrated_contributions", "code")


#: The columns the score job adds after ``bundle_id``: the run that wrote the row, and when (UTC).
RUN_COLUMNS = ("run_id", "scored_at")


def output_names() -> frozenset[str]:
    """Every column name a scores table can hold besides the passed-through ones (with ``code``,
    ``bundle_id``, ``run_id`` and ``scored_at``): a source column of one of these names is not passed through."""
    return frozenset(OUTPUT_COLUMNS) | {"bundle_id", *RUN_COLUMNS}


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


def score_pandas(bundle: ScoringBundle, frame: pd.DataFrame, *, rank_by: str | None = None, top_reasons: int = 3,
                 emit_code: bool = False, detail: str = "all") -> pd.DataFrame:
    """The score job's columns for each row of ``frame`` (``anomaly_score``, ``is_anomaly``,
    ``contributions`` as dicts, ``reasons`` as lists of dicts, ``calibrated_score``,
    ``calibrated_contributions``, ``code`` with ``emit_code``, ``bundle_id``), indexed like
    ``frame`` so that ``frame.join(scores)`` puts them side by side. ``detail``: as ``score.detail``
    (:func:`build_output`), every row's by default here (the score job's default is ``flagged``)."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"score_frame: expected a pandas DataFrame, got {type(frame).__name__}")
    spec = bundle.spec
    table = as_table(frame, spec.columns, "score_frame")
    check_columns(table.schema, "the rows to score", categorical=spec.categorical,
                  numeric=spec.numeric, trained=bundle.source_types)
    ranking = rank_by or bundle.rank_by
    threshold = bundle.threshold_for(ranking)
    # one call: score_encoded runs the model the bundle's pass_rows at a time (bounded memory)
    out = build_output(bundle, table, threshold=threshold, top_reasons=top_reasons, emit_code=emit_code,
                       rank_by=ranking, detail=detail)
    out["bundle_id"] = pa.array([bundle.bundle_id] * table.num_rows, pa.string())
    scores = pa.table(out).to_pandas(maps_as_pydicts="strict")
    scores.index = frame.index
    return scores
