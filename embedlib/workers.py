"""A bundle on the executors: broadcast once, loaded once per Python worker, applied per batch.

:func:`map_with_bundle` is how score, features (and anything else that runs a
bundle over a DataFrame) reach the executors: the driver checks the frame's
schema against the bundle (before any Spark job) and broadcasts the bundle's file
bytes once; on the executors :func:`cached_bundle` keeps one loaded, verified
:class:`~embedlib.bundle.Bundle` per Python worker, keyed by bundle id, in this
importable module (``_BUNDLES`` lives here and nowhere else) — never one per
batch. Each Arrow batch goes through the caller's ``transform(bundle, features)``.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from embedlib.bundle import Bundle, BundleError, bundle_from_files, read_bundle_files
from embedlib.faults import fail_task_attempt
from embedlib.vocab.model import SchemaError
from embedlib.vocab.schema import check_columns

if TYPE_CHECKING:
    from pyspark import Broadcast
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["BundleBatches", "Transform", "bundle_loads", "cached_bundle", "check_source", "map_with_bundle",
           "passthrough_columns"]

log = logging.getLogger(__name__)

#: ``transform(bundle, features) -> {column: array}``: what a bundle does to one batch.
Transform = Callable[[Bundle, pa.Table], dict[str, pa.Array]]

#: Hidden column names of the frame sent through ``mapInArrow``.
ID_COLUMN = "__id{}"
FEATURE_COLUMN = "__f{}"

_BUNDLES: dict[str, Bundle] = {}
_LOADS: Counter[str] = Counter()
_LOCK = threading.Lock()


def cached_bundle(bundle_id: str, files: Broadcast[dict[str, bytes]] | Mapping[str, bytes]) -> Bundle:
    """The loaded bundle for ``bundle_id``, loaded (and verified) once per Python process."""
    bundle = _BUNDLES.get(bundle_id)
    if bundle is None:
        _limit_threads()
        with _LOCK:
            bundle = _BUNDLES.get(bundle_id)
            if bundle is None:
                blobs = files if isinstance(files, Mapping) else files.value
                bundle = bundle_from_files(blobs, f"<broadcast {bundle_id}>")
                if bundle.bundle_id != bundle_id:
                    raise BundleError(f"broadcast bundle is {bundle.bundle_id}, expected {bundle_id}")
                _BUNDLES.clear()  # one model per worker is plenty; drop older runs'
                _BUNDLES[bundle_id] = bundle
                _LOADS[bundle_id] += 1
    return bundle


def bundle_loads(bundle_id: str) -> int:
    """How many times this process has loaded ``bundle_id`` (1 once it is cached)."""
    return _LOADS[bundle_id]


def _limit_threads() -> None:
    """One Spark task gets ``spark.task.cpus`` cores: let torch use that many threads.

    Several Python workers per executor each running a thread per core
    oversubscribe the cores, and torch's spinning threads then slow scoring down
    by an order of magnitude.
    """
    import torch
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is not None:
        torch.set_num_threads(max(1, int(ctx.cpus())))


@dataclass(frozen=True)
class BundleBatches:
    """A ``mapInArrow`` body: ``transform(bundle, features)`` on every Arrow batch.

    Pickled to the executors; the bundle itself comes by broadcast and is loaded
    once per worker by :func:`cached_bundle`. Input batches hold the id columns as
    ``__id<k>`` and the bundle's feature columns as ``__f<i>``; output batches are
    the id columns, the transform's columns, and ``bundle_id``.
    """

    bundle_id: str
    files: Any  # Broadcast[dict[str, bytes]]
    ids: tuple[str, ...]
    features: tuple[str, ...]
    transform: Transform

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        bundle = cached_bundle(self.bundle_id, self.files)
        for n, batch in enumerate(batches):
            if n == 1:  # after a batch has gone out, as a real failure would
                fail_task_attempt("score.fail_attempts")
            feats = pa.table({name: batch.column(FEATURE_COLUMN.format(i)) for i, name in enumerate(self.features)})
            out = self.transform(bundle, feats)
            arrays = [batch.column(ID_COLUMN.format(k)) for k in range(len(self.ids))] + list(out.values())
            arrays.append(pa.array([self.bundle_id] * batch.num_rows, pa.string()))
            yield pa.RecordBatch.from_arrays(arrays, names=[*self.ids, *out, "bundle_id"])


def check_source(df: DataFrame, bundle: Bundle, ids: tuple[str, ...], table: str) -> None:
    """Schema check before any work: missing columns by name, uncastable types named, and
    types changed since training named with the type the bundle was trained on."""
    check_columns(df.schema, table, categorical=bundle.spec.categorical, numeric=bundle.spec.numeric, ids=ids,
                  trained=bundle.source_types)


def passthrough_columns(setting: tuple[str, ...] | str | None, ids: tuple[str, ...], columns: Sequence[str],
                        reserved: Collection[str], key: str) -> tuple[str, ...]:
    """The source columns an output keeps beside its own (``score.passthrough``,
    ``features.passthrough``): ``None`` → the id columns, or every source column when no id is
    declared (so the output can be read on its own); ``"all"`` → every source column; a list → the
    id columns and those. A source column named like one the output writes itself is left out with
    a warning (``None``, ``"all"``) or refused, naming it (a list)."""
    if setting is None:
        wanted, listed = (ids or tuple(columns)), False
    elif setting == "all":
        wanted, listed = tuple(columns), False
    else:
        wanted, listed = tuple(dict.fromkeys((*ids, *setting))), True
    clash = [c for c in wanted if c in reserved]
    if clash and listed:
        raise SchemaError(f"{key} names {', '.join(clash)}: column(s) the output writes itself; "
                          "leave them out or rename them in the source")
    if clash:
        log.warning("%s: source column(s) %s are not passed through: the output writes columns of that name",
                    key, ", ".join(clash))
    return tuple(c for c in wanted if c not in reserved)


def map_with_bundle(
    spark: SparkSession,
    df: DataFrame,
    bundle: Bundle,
    *,
    ids: tuple[str, ...],
    table: str,
    transform: Transform,
    fields: list[Any],
) -> DataFrame:
    """Check ``df`` against the bundle, broadcast it once, and map every batch with ``transform``.

    ``fields`` are the Spark ``StructField``s of the transform's columns; the
    result has the id columns first and ``bundle_id`` last.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType, StructField, StructType

    check_source(df, bundle, ids, table)
    spec = bundle.spec
    cols = [F.col(f"`{c}`").alias(ID_COLUMN.format(k)) for k, c in enumerate(ids)]
    cols += [F.col(f"`{c}`").cast("string").alias(FEATURE_COLUMN.format(i)) for i, c in enumerate(spec.categorical)]
    cols += [
        F.col(f"`{c}`").cast("double").alias(FEATURE_COLUMN.format(len(spec.categorical) + j))
        for j, c in enumerate(spec.numeric)
    ]
    body = BundleBatches(
        bundle_id=bundle.bundle_id,
        files=spark.sparkContext.broadcast(read_bundle_files(bundle.path)),
        ids=ids,
        features=spec.columns,
        transform=transform,
    )
    schema = StructType([df.schema[c] for c in ids] + fields + [StructField("bundle_id", StringType())])
    return df.select(*cols).mapInArrow(body, schema)
