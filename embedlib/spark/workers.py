"""A bundle on the executors: carried with the function, loaded once per Python worker, applied per batch.

:func:`map_with_bundle` is how score, features (and anything else that runs a
bundle over a DataFrame) reach the executors: the driver checks the frame's
schema against the bundle (before any Spark job); the bundle travels without a
``SparkContext`` (so the same code runs over Spark Connect): a bundle of up to
:data:`INLINE_BUNDLE_BYTES` is carried in the ``mapInArrow`` function itself (Spark
ships a stage's function to each executor once), a larger one is read from its path
by each Python worker. Either way :func:`cached_bundle` keeps one loaded, verified
:class:`~embedlib.core.bundle.Bundle` per Python worker, keyed by bundle id (the bundle's
content hash, checked on load), in this importable module (``_BUNDLES`` lives here
and nowhere else) — never one per batch. Each Arrow batch goes through the caller's
``transform(bundle, features)``.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from embedlib.core.bundle import BUNDLE_FILES, Bundle, BundleError, bundle_from_files, read_bundle_files
from embedlib.core.faults import InjectedFault, fault
from embedlib.core.vocab.model import SchemaError
from embedlib.core.vocab.schema import check_columns
from embedlib.spark.session import plain_strings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["COUNTS_COLUMN", "INLINE_BUNDLE_BYTES", "BundleBatches", "CountSum", "Transform", "bundle_files_or_path",
           "bundle_loads", "cached_bundle", "fail_task_attempt", "check_source", "map_with_bundle", "passthrough_columns", "summed_counts"]

log = logging.getLogger(__name__)

#: ``transform(bundle, features) -> {column: array}``: what a bundle does to one batch (a counting
#: map also passes ``counts=``, see :class:`BundleBatches`).
Transform = Callable[..., dict[str, pa.Array]]

#: Hidden column names of the frame sent through ``mapInArrow``.
ID_COLUMN = "__id{}"
FEATURE_COLUMN = "__f{}"

#: The largest bundle carried inside the ``mapInArrow`` function (its files' bytes); a larger one is
#: read from its path by each Python worker. Spark Connect sends the function in the plan, and its
#: server takes messages of up to 128 MiB by default (``spark.connect.grpc.maxInboundMessageSize``).
INLINE_BUNDLE_BYTES = 64 << 20

_BUNDLES: dict[tuple[str, str], Bundle] = {}
_LOADS: Counter[str] = Counter()
_LOCK = threading.Lock()


def bundle_files_or_path(bundle: Bundle, limit: int | None = None) -> Mapping[str, bytes] | str:
    """What carries ``bundle`` to the workers: its files' bytes when they add up to at most ``limit``
    (default :data:`INLINE_BUNDLE_BYTES`), else its path (each worker reads it; the bundle id checks it
    is the same bundle)."""
    from embedlib.core.layout import filesystem

    limit = INLINE_BUNDLE_BYTES if limit is None else limit
    fs, root = filesystem(bundle.path)
    size = sum(int(i.size or 0) for i in fs.get_file_info([f"{root}/{n}" for n in BUNDLE_FILES]))
    return read_bundle_files(bundle.path) if size <= limit else bundle.path


def cached_bundle(bundle_id: str, files: Mapping[str, bytes] | str, device: str = "cpu") -> Bundle:
    """The loaded bundle for ``bundle_id``, loaded (and verified) once per Python process, from its
    files' bytes or (a str) its path, its model on ``device`` (``score.device``: ``auto``, ``cpu``,
    ``cuda``; :meth:`~embedlib.core.bundle.Bundle.to`)."""
    key = (bundle_id, device)
    bundle = _BUNDLES.get(key)
    if bundle is None:
        _limit_threads()
        with _LOCK:
            bundle = _BUNDLES.get(key)
            if bundle is None:
                where = files if isinstance(files, str) else f"<bundle {bundle_id}>"
                bundle = bundle_from_files(read_bundle_files(files) if isinstance(files, str) else files, where)
                if bundle.bundle_id != bundle_id:
                    raise BundleError(f"the bundle at {where} is {bundle.bundle_id}, but this job scores with "
                                      f"{bundle_id}: it was replaced while the job ran; run the job again")
                bundle.to(device)
                _BUNDLES.clear()  # one model per worker is plenty; drop older runs'
                _BUNDLES[key] = bundle
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

    Pickled to the executors with the bundle's files (or its path, for a large bundle:
    :func:`bundle_files_or_path`); the bundle is loaded once per worker by :func:`cached_bundle`. Input batches hold the id columns as
    ``__id<k>`` and the bundle's feature columns as ``__f<i>``; output batches are
    the id columns, the transform's columns, and ``bundle_id``.
    """

    bundle_id: str
    files: Mapping[str, bytes] | str
    ids: tuple[str, ...]
    features: tuple[str, ...]
    transform: Transform
    #: With ``counts``, the transform also gets ``counts=`` (a :class:`CountSum`) and the task's sum goes
    #: out in :data:`COUNTS_COLUMN` of its last row (null on every other row).
    counts: bool = False
    #: Where the model runs on the worker (``score.device``).
    device: str = "cpu"

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        bundle = cached_bundle(self.bundle_id, self.files, self.device)
        sink = CountSum() if self.counts else None
        pending: pa.RecordBatch | None = None
        for n, batch in enumerate(batches):
            if n == 1 and sink is None:  # after a batch has gone out, as a real failure would
                fail_task_attempt("score.fail_attempts")
            feats = pa.table({name: batch.column(FEATURE_COLUMN.format(i)) for i, name in enumerate(self.features)})
            out = self.transform(bundle, feats, counts=sink) if sink is not None else self.transform(bundle, feats)
            arrays = [batch.column(ID_COLUMN.format(k)) for k in range(len(self.ids))] + list(out.values())
            arrays.append(pa.array([self.bundle_id] * batch.num_rows, pa.string()))
            done = pa.RecordBatch.from_arrays(arrays, names=[*self.ids, *out, "bundle_id"])
            if sink is None:
                yield done
                continue
            if pending is not None:  # one batch is held back: the task's last carries its counts
                yield _with_counts(pending, None)
                if n == 1:
                    fail_task_attempt("score.fail_attempts")
            pending = done
        if pending is not None and sink is not None:
            yield _with_counts(pending, sink.total)


#: The hidden column of a counting map's output: the task's summary counts, on its last row only.
COUNTS_COLUMN = "__embedlib_counts"


class CountSum:
    """The sum of the ``add``-ed count vectors of one task (what an accumulator was, without one)."""

    def __init__(self) -> None:
        self.total: np.ndarray | None = None

    def add(self, counts: np.ndarray) -> None:
        self.total = counts.astype(np.int64) if self.total is None else self.total + counts


_COUNTS_TYPE = pa.list_(pa.int64())


def _with_counts(batch: pa.RecordBatch, total: np.ndarray | None) -> pa.RecordBatch:
    """``batch`` with :data:`COUNTS_COLUMN`: null on every row but the last, which holds ``total``
    (built from offsets and a validity mask: no Python object per row)."""
    rows = batch.num_rows
    if total is None or rows == 0:
        return batch.append_column(COUNTS_COLUMN, pa.nulls(rows, _COUNTS_TYPE))
    offsets = np.zeros(rows + 1, np.int32)
    offsets[-1] = len(total)
    valid = np.zeros(rows, bool)
    valid[-1] = True
    column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(total, pa.int64()), mask=pa.array(~valid))
    return batch.append_column(COUNTS_COLUMN, column)


def summed_counts(collected: Sequence[Sequence[int]] | None, size: int) -> np.ndarray:
    """The element-wise sum of the tasks' :data:`COUNTS_COLUMN` values (a ``collect_list`` of them)."""
    total = np.zeros(size, np.int64)
    for counts in collected or []:
        total += np.asarray(counts, np.int64)
    return total


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
    counts: bool = False,
    device: str = "cpu",
) -> DataFrame:
    """Check ``df`` against the bundle and map every batch with ``transform`` (the bundle travels
    with the function, :func:`bundle_files_or_path`; its model runs on ``device`` in each worker).

    ``fields`` are the Spark ``StructField``s of the transform's columns; the
    result has the id columns first and ``bundle_id`` last (then, with ``counts``,
    :data:`COUNTS_COLUMN`: see :class:`BundleBatches`).
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, LongType, StringType, StructField, StructType

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
        files=bundle_files_or_path(bundle),
        ids=ids,
        features=spec.columns,
        transform=transform,
        counts=counts,
        device=device,
    )
    tail = [StructField("bundle_id", StringType())]
    if counts:
        tail.append(StructField(COUNTS_COLUMN, ArrayType(LongType())))
    schema = StructType([df.schema[c] for c in ids] + fields + tail)
    return plain_strings(df.select(*cols).mapInArrow(body, schema))


def fail_task_attempt(site: str) -> None:
    """Inside a Spark task: raise if ``site`` says this attempt of partition 0 must fail."""
    value = fault(site)
    if value is None:
        return
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is not None and ctx.partitionId() == 0 and ctx.attemptNumber() < int(value):
        message = f"injected fault {site}: attempt {ctx.attemptNumber()} of partition 0 fails"
        log.warning("%s", message)  # on the executor's stderr, whatever Spark logs
        raise InjectedFault(message)
