"""Delta through delta-rs (``deltalake``), for sessions without the connector's jars.

Spark writes Parquet files into a fresh, non-hidden sub-folder
``data/<time>-<uuid>/`` of the table directory
(:func:`~embedlib.core.layout.staging_folder`), then the driver commits exactly
those files as one Delta transaction with ``deltalake``
(``create_table_with_add_actions`` / ``DeltaTable.create_write_transaction``),
carrying the (app id, version) pair in ``CommitProperties(app_transactions=…)``.
delta-rs records that pair but does not skip a repeated one, so the writer
checks ``transaction_version`` first, and again before each commit attempt.
Files written by a job that died before its commit are in no Delta log entry and
are never read: reads list files from the log, never by globbing the directory.
Catalog tables need the connector and are refused here. On S3 every call carries
:func:`embedlib.core.storage.delta_rs_options` (credentials, endpoint, conditional put).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from embedlib.core import storage
from embedlib.core.delta import delta_table, is_delta_table, open_delta
from embedlib.core.errors import first_line
from embedlib.core.faults import fault, kill_self
from embedlib.core.layout import filesystem, join, local_path, staging_folder
from embedlib.spark.session import plain_strings
from embedlib.spark.tables.engine import (
    TableEngine,
    TableError,
    WriteMode,
    WriteResult,
    check_appended_types,
    merge_condition,
)
from embedlib.spark.tables.files import delete_folder, list_status

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["COMMIT_ATTEMPTS", "DeltaRsEngine"]

log = logging.getLogger(__name__)

#: Commit attempts of one write when other writers commit first.
COMMIT_ATTEMPTS = 10


class DeltaRsEngine(TableEngine):
    """delta-rs commits of files Spark wrote; reads through the log's file list."""

    name = "delta-rs"

    def read(self, spark: SparkSession, path: str) -> DataFrame:
        import pyarrow as pa
        from pyspark.sql import functions as F
        from pyspark.sql.pandas.types import from_arrow_schema

        dt = open_delta(path)
        arrow_schema = pa.schema(dt.schema().to_arrow())
        spark_schema = from_arrow_schema(arrow_schema)
        part_cols = list(dt.metadata().partition_columns)
        data_schema = from_arrow_schema(
            pa.schema([f for f in arrow_schema if f.name not in part_cols])
        )
        actions = pa.table(dt.get_add_actions(flatten=True)).to_pylist()
        root = dt.table_uri.rstrip("/")
        if not actions:
            return plain_strings(spark.createDataFrame([], spark_schema))
        groups: dict[tuple[Any, ...], list[str]] = {}
        for action in actions:
            key = tuple(action.get(f"partition.{c}") for c in part_cols)
            file_path = action["path"]
            full = file_path if "://" in file_path else f"{root}/{file_path}"
            groups.setdefault(key, []).append(full)
        frames = []
        for key, files in sorted(groups.items(), key=lambda kv: [str(v) for v in kv[0]]):
            frame = spark.read.schema(data_schema).parquet(*files)
            for col, value in zip(part_cols, key):
                dtype = spark_schema[col].dataType
                frame = frame.withColumn(col, F.lit(value).cast(dtype))
            frames.append(frame.select(*[F.col(f"`{n}`") for n in spark_schema.names]))
        out = frames[0]
        for frame in frames[1:]:
            out = out.unionByName(frame)
        return out

    def data_files(self, spark: SparkSession, path: str, columns: tuple[str, ...]) -> list[str] | None:
        dt = open_delta(path)
        if set(dt.metadata().partition_columns) & set(columns):
            return None
        return list(dt.file_uris())

    def version(self, spark: SparkSession, target: str) -> int | None:
        local = local_path(target) or target
        if not is_delta_table(local):
            return None
        return int(delta_table(local).version())

    def commit_metadata(self, spark: SparkSession, target: str) -> dict[str, Any]:
        history = open_delta(target).history(1)
        raw = history[0].get("userMetadata") if history else None
        return dict(json.loads(raw)) if raw else {}

    def write(self, spark: SparkSession, df: DataFrame, target: str, *, mode: WriteMode,
              txn: tuple[str, int] | None, user_metadata: Mapping[str, Any] | None,
              catalog: bool, keys: Sequence[str] = ()) -> WriteResult:
        if catalog:
            raise TableError(f"catalog table {target} needs the Spark Delta connector, which this session lacks")
        meta = json.dumps(dict(user_metadata), sort_keys=True) if user_metadata else None
        if mode == "merge":
            if is_delta_table(local_path(target) or target):
                return _merge(spark, df, target, keys, txn, meta)
            mode = "append"  # the first run creates the table
        return _write(spark, df, target, mode, txn, meta)


def _write(
    spark: SparkSession,
    df: DataFrame,
    target: str,
    mode: WriteMode,
    txn: tuple[str, int] | None,
    meta: str | None,
) -> WriteResult:
    import pyarrow as pa
    from deltalake import Schema as DeltaSchema
    from deltalake.transaction import (
        AddAction,
        CommitProperties,
        RemoveAction,
        Transaction,
        create_table_with_add_actions,
    )
    from pyspark.sql.pandas.types import to_arrow_schema

    location = local_path(target) or target
    if txn is not None and is_delta_table(location):
        existing = delta_table(location)
        done = existing.transaction_version(txn[0])
        if done is not None and done >= txn[1]:
            log.info("%s: app %s version %d already committed; nothing written", target, *txn)
            return WriteResult(target, False, existing.version())

    stage_rel, stage = staging_folder(target)
    try:
        df.write.mode("error").parquet(stage)  # "error": the one spelling Spark Connect accepts too
    except BaseException:
        _discard_stage(spark, stage)  # nothing names these files; do not leave them behind
        raise
    arrow_schema = to_arrow_schema(df.schema, timezone="UTC")
    arrow_schema = pa.schema([f.with_nullable(True) for f in arrow_schema])
    delta_schema = DeltaSchema.from_arrow(arrow_schema)
    adds = [
        AddAction(
            path=f"{stage_rel}/{name}",
            size=size,
            partition_values={},
            modification_time=mtime,
            data_change=True,
            stats=json.dumps({"numRecords": rows}) if rows is not None else "{}",
        )
        for name, size, mtime, rows in _list_data_files(spark, stage)
    ]
    if fault("commit.kill"):
        kill_self("commit.kill")
    custom: dict[str, Any] = {}
    if meta is not None:
        custom["userMetadata"] = meta
    props = CommitProperties(
        custom_metadata=custom or None,
        app_transactions=[Transaction(txn[0], txn[1])] if txn is not None else None,
        max_commit_retries=20,
    )
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            if not is_delta_table(location):
                create_table_with_add_actions(
                    location, delta_schema, adds, mode="error", commit_properties=props,
                    storage_options=storage.delta_rs_options(location),
                )
                return WriteResult(target, True, 0)
            dt = delta_table(location)
            if txn is not None:
                done = dt.transaction_version(txn[0])
                if done is not None and done >= txn[1]:
                    log.info("%s: app %s version %d committed meanwhile", target, *txn)
                    _discard_stage(spark, stage)
                    return WriteResult(target, False, dt.version())
            if mode == "append":
                _add_new_columns(dt, arrow_schema, target)
            actions: list[AddAction | RemoveAction] = list(adds)
            dt.create_write_transaction(actions, mode, delta_schema, commit_properties=props)
            return WriteResult(target, True, delta_table(location).version())
        except Exception as exc:
            # Another writer committed first: a concurrent append, the same app
            # transaction, or the table's creation. Look at the table again.
            if not _is_conflict(exc, location) or attempt == COMMIT_ATTEMPTS:
                _discard_stage(spark, stage)
                reason = storage.explain(exc, location) or first_line(exc)
                raise TableError(f"Delta commit to {target} failed: {reason}") from exc
            log.warning("%s: commit conflicted with another writer (%s); retrying (%d/%d)",
                        target, first_line(exc), attempt, COMMIT_ATTEMPTS)
            time.sleep(random.uniform(0.05, 0.2) * attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def _merge(spark: SparkSession, df: DataFrame, target: str, keys: Sequence[str], txn: tuple[str, int] | None,
           meta: str | None) -> WriteResult:
    """delta-rs's ``merge`` on ``keys`` as one commit carrying ``txn``: ``df`` is written once to a
    staging folder by Spark (its observed metrics come from that run), streamed from there into the
    merge with the table's types, and the folder is removed."""
    import pyarrow as pa
    import pyarrow.dataset as ds
    from deltalake.transaction import CommitProperties, Transaction
    from pyspark.sql.pandas.types import to_arrow_schema

    location = local_path(target) or target
    existing = delta_table(location)
    if txn is not None:
        done = existing.transaction_version(txn[0])
        if done is not None and done >= txn[1]:
            log.info("%s: app %s version %d already committed; nothing written", target, *txn)
            return WriteResult(target, False, existing.version())
    schema = pa.schema([f.with_nullable(True) for f in to_arrow_schema(df.schema, timezone="UTC")])
    table = pa.schema(existing.schema().to_arrow())
    check_appended_types(target, [(f.name, str(table.field(f.name).type), str(f.type)) for f in schema
                                  if f.name in table.names and not table.field(f.name).type.equals(f.type)])
    _, stage = staging_folder(target)
    try:
        df.write.mode("error").parquet(stage)
        fs, inner = filesystem(stage)
        scanner = ds.dataset(inner, format="parquet", filesystem=fs).scanner()
        source = pa.RecordBatchReader.from_batches(schema, (b.select(schema.names).cast(schema)
                                                            for b in scanner.to_batches()))
        props = CommitProperties(custom_metadata={"userMetadata": meta} if meta is not None else None,
                                 app_transactions=[Transaction(txn[0], txn[1])] if txn is not None else None,
                                 max_commit_retries=20)
        try:
            existing.merge(source, merge_condition(keys), source_alias="s", target_alias="t", merge_schema=True,
                           commit_properties=props).when_matched_update_all().when_not_matched_insert_all().execute()
        except Exception as exc:
            if "multiple" in str(exc).lower() and "source" in str(exc).lower():
                raise TableError(f"cannot merge into {target}: several rows of this run share the key "
                                 f"({', '.join(keys)}) of one row of the table; make the id columns unique "
                                 "in the source, or use mode append") from exc
            reason = storage.explain(exc, location) or first_line(exc)
            raise TableError(f"Delta merge into {target} failed: {reason}") from exc
    finally:
        _discard_stage(spark, stage)
    return WriteResult(target, True, delta_table(location).version())


def _add_new_columns(dt: Any, arrow_schema: Any, target: str) -> None:
    """Schema evolution of an append: columns the table lacks are added (nullable);
    a column whose type changed is refused, naming both types."""
    import pyarrow as pa
    from deltalake import Field

    table = pa.schema(dt.schema().to_arrow())
    check_appended_types(target, [(f.name, str(table.field(f.name).type), str(f.type)) for f in arrow_schema
                                  if f.name in table.names and not table.field(f.name).type.equals(f.type)])
    new = [f for f in arrow_schema if f.name not in table.names]
    if new:
        log.info("%s: adding column(s) %s", target, ", ".join(f.name for f in new))
        dt.alter.add_columns([Field.from_arrow(f.with_nullable(True)) for f in new])


def _is_conflict(exc: BaseException, location: str) -> bool:
    from deltalake.exceptions import CommitFailedError

    if isinstance(exc, CommitFailedError):
        return True
    # a failed create_table_with_add_actions because the table exists by now
    return "already exists" in str(exc).lower() and is_delta_table(location)


def _list_data_files(spark: SparkSession, folder: str) -> list[tuple[str, int, int, int | None]]:
    """``(name, size, mtime_ms, rows)`` of the Parquet files Spark wrote into ``folder``."""
    import pyarrow.parquet as pq

    out: list[tuple[str, int, int, int | None]] = []
    footers = local_path(folder) is not None or storage.is_s3(folder)  # row counts for the log's stats
    for status in list_status(spark, folder, children=True):
        name = status.name
        if not name.endswith(".parquet") or name.startswith(("_", ".")):
            continue
        rows = None
        if footers:
            pafs, inner = filesystem(join(folder, name))
            rows = pq.read_metadata(inner, filesystem=pafs).num_rows
        out.append((name, status.length, status.mtime_ms, rows))
    return sorted(out)


def _discard_stage(spark: SparkSession, folder: str) -> None:
    try:
        delete_folder(spark, folder)
    except Exception as exc:  # leftover files are harmless: no commit names them
        log.warning("could not remove uncommitted files under %s: %s", folder, exc)
