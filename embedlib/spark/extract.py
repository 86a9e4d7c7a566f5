"""Getting the embeddings out: matrices keyed by category value, and design-matrix features.

* :func:`embedding_table` — one row per vocabulary entry of every categorical,
  ``column, value, index, count, vector, bundle_id``, including the null (index 0)
  and out-of-vocabulary (index 1) rows, so every matrix row maps back to its value.
* :func:`write_npz` — one ``<column>.npz`` per categorical (``matrix``, ``values``,
  ``index``, ``count``) for users outside Spark.
* :func:`features_frame` — the design matrix for any table with the declared
  columns: id columns, each categorical's embedding (``array<float>``, or
  ``<col>_e0..`` doubles when flattened), standardized numerics and missing
  flags — the same transformation for training data and for new data later
  (unseen values take the trained OOV row).
"""

from __future__ import annotations

import functools
import io
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch

from embedlib.core.bundle import Bundle

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from embedlib.core.config import Config

__all__ = ["embedding_table", "features_arrow", "features_fields", "features_frame", "features_names", "run_extract_job", "run_features_job", "write_npz"]

log = logging.getLogger(__name__)


def embedding_matrix(bundle: Bundle, column: str) -> np.ndarray:
    """The trained embedding matrix of ``column`` (row i = index i)."""
    i = bundle.spec.categorical.index(column)
    emb = bundle.model.embeddings[i]
    assert isinstance(emb, torch.nn.Embedding)
    return emb.weight.detach().cpu().numpy().astype(np.float32)


def embedding_table(bundle: Bundle) -> pa.Table:
    """``column, value, index, count, vector, bundle_id`` for every vocabulary entry."""
    cols, vals, idxs, cnts, vecs = [], [], [], [], []
    for name in bundle.spec.categorical:
        cv = bundle.vocab[name]
        matrix = embedding_matrix(bundle, name)
        counts = [cv.null_count, cv.oov_count, *cv.counts]
        for index in range(cv.size):
            cols.append(name)
            vals.append(cv.value_of(index))
            idxs.append(index)
            cnts.append(counts[index])
            vecs.append(matrix[index])
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in vecs], dtype=np.int64)]).astype(np.int32)
    vector = pa.ListArray.from_arrays(
        pa.array(offsets), pa.array(np.concatenate(vecs) if vecs else np.zeros(0, np.float32), pa.float32())
    )
    return pa.table(
        {
            "column": pa.array(cols, pa.string()),
            "value": pa.array(vals, pa.string()),
            "index": pa.array(idxs, pa.int32()),
            "count": pa.array(cnts, pa.int64()),
            "vector": vector,
            "bundle_id": pa.array([bundle.bundle_id] * len(cols), pa.string()),
        }
    )


def write_npz(bundle: Bundle, folder: str) -> list[str]:
    """One ``<column>.npz`` per categorical; returns the paths written."""
    from embedlib.core.layout import join, write_bytes_atomic

    written = []
    for name in bundle.spec.categorical:
        cv = bundle.vocab[name]
        labels = np.array([cv.label_of(i) for i in range(cv.size)], dtype=str)
        buf = io.BytesIO()
        np.savez(
            buf,
            matrix=embedding_matrix(bundle, name),
            values=labels,
            index=np.arange(cv.size, dtype=np.int32),
            count=np.array([cv.null_count, cv.oov_count, *cv.counts], dtype=np.int64),
            bundle_id=np.array(bundle.bundle_id),
        )
        path = join(folder, f"{_safe(name)}.npz")
        write_bytes_atomic(path, buf.getvalue())
        written.append(path)
    return written


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


# ------------------------------------------------------------------ design matrix


def features_arrow(bundle: Bundle, data: pa.Table | pa.RecordBatch, *, flatten: bool) -> dict[str, pa.Array]:
    """Design-matrix columns for raw rows: embeddings, standardized numerics, missing flags."""
    enc = bundle.encoder.arrays(data)
    rows = data.num_rows
    out: dict[str, pa.Array] = {}
    for i, name in enumerate(bundle.spec.categorical):
        vectors = embedding_matrix(bundle, name)[enc.cat[:, i]]
        if flatten:
            for d in range(vectors.shape[1]):
                out[f"{name}_e{d}"] = pa.array(vectors[:, d].astype(np.float64))
        else:
            width = vectors.shape[1]
            out[name] = pa.ListArray.from_arrays(
                pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32)), pa.array(vectors.reshape(-1))
            )
    for j, name in enumerate(bundle.spec.numeric):
        out[name] = pa.array(enc.num[:, j].astype(np.float64))
        out[f"{name}_missing"] = pa.array(enc.missing[:, j].astype(np.float64))
    return out


def features_names(bundle: Bundle, flatten: bool) -> frozenset[str]:
    """The column names a design matrix writes itself (``bundle_id`` included)."""
    return frozenset(f.name for f in features_fields(bundle, flatten)) | {"bundle_id"}


def features_fields(bundle: Bundle, flatten: bool) -> list[Any]:
    """Spark fields of :func:`features_arrow`'s columns."""
    from pyspark.sql.types import ArrayType, DoubleType, FloatType, StructField

    fields = []
    for name, dim in zip(bundle.spec.categorical, bundle.spec.embedding_dims):
        if flatten:
            fields += [StructField(f"{name}_e{d}", DoubleType()) for d in range(dim)]
        else:
            fields.append(StructField(name, ArrayType(FloatType())))
    for name in bundle.spec.numeric:
        fields += [StructField(name, DoubleType()), StructField(f"{name}_missing", DoubleType())]
    return fields


def features_frame(
    spark: SparkSession, df: DataFrame, bundle: Bundle, *, ids: tuple[str, ...], flatten: bool, table: str = "source"
) -> DataFrame:
    """The design matrix of ``df`` (lazy), with the bundle shipped once per worker."""
    from embedlib.spark.workers import map_with_bundle

    transform = functools.partial(features_arrow, flatten=flatten)
    return map_with_bundle(
        spark, df, bundle, ids=ids, table=table, transform=transform, fields=features_fields(bundle, flatten)
    )


# ------------------------------------------------------------------------------ jobs


def run_extract_job(spark: SparkSession, cfg: Config, npz_dir: str | None = None) -> tuple[str, list[str]]:
    """Write ``<run>/embeddings`` (Delta), and ``.npz`` files when ``npz_dir`` is given."""
    from embedlib.core.bundle import load_bundle
    from embedlib.spark.tables import open_tables

    tables = open_tables(spark, cfg.delta)
    tables.check_writable(cfg.layout.embeddings)
    bundle = load_bundle(cfg.layout.bundle)
    table = embedding_table(bundle)
    frame = spark.createDataFrame(table).coalesce(1)
    tables.write(frame, cfg.layout.embeddings, mode="overwrite", user_metadata={"bundle_id": bundle.bundle_id})
    written = write_npz(bundle, npz_dir) if npz_dir else []
    log.info("embeddings of %d column(s) (%d rows) written to %s", len(bundle.spec.categorical), table.num_rows,
             cfg.layout.embeddings)
    return cfg.layout.embeddings, written


def run_features_job(spark: SparkSession, cfg: Config) -> str:
    """Write the design matrix of ``features.source`` (default: ``source``)."""
    from embedlib.core.bundle import load_bundle
    from embedlib.spark.tables import open_tables
    from embedlib.spark.workers import passthrough_columns

    fc = cfg.features
    output = cfg.features_output
    tables = open_tables(spark, cfg.delta)
    tables.check_writable(output)
    bundle = load_bundle(cfg.layout.bundle)
    src_cfg = cfg.source.with_target(fc.source)
    name = src_cfg.name
    df = tables.read_source(src_cfg)
    ids = passthrough_columns(fc.passthrough, cfg.columns.id, df.columns, features_names(bundle, fc.flatten),
                              "features.passthrough")
    frame = features_frame(spark, df, bundle, ids=ids, flatten=fc.flatten, table=name)
    tables.write(frame, output, mode="overwrite", user_metadata={"bundle_id": bundle.bundle_id, "source": name})
    return output

