"""Reading and writing tables: catalog names, Delta, Parquet and CSV paths.

Delta goes two ways, chosen per session by :func:`embedlib.spark.delta_connector_available`:

* **connector** (Databricks, ``spark-submit --packages io.delta:delta-spark_2.13:…``):
  a plain ``df.write.format("delta")`` with ``txnAppId``/``txnVersion`` for
  idempotent appends, and ``spark.read.format("delta")``.
* **delta-rs** (every machine without the jars): Spark writes Parquet files into a
  fresh, non-hidden sub-folder ``data/<time>-<uuid>/`` of the table directory, then the driver commits exactly those files as one Delta transaction
  with ``deltalake`` (``create_table_with_add_actions`` /
  ``DeltaTable.create_write_transaction``), carrying the (app id, version) pair in
  ``CommitProperties(app_transactions=…)``. delta-rs records that pair but does not
  skip a repeated one, so the writer checks ``transaction_version`` first. Files
  written by a job that died before its commit are in no Delta log entry and are
  never read: reads list files from the log, never by globbing the directory.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from embedlib.faults import fault, kill_self
from embedlib.layout import check_path, is_catalog_table, join, local_path

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from embedlib.config import SourceConfig

__all__ = [
    "TableError",
    "WriteResult",
    "check_writable",
    "commit_metadata",
    "delta_version",
    "is_table_name",
    "read_source",
    "read_table",
    "write_table",
]

log = logging.getLogger(__name__)

WriteMode = Literal["append", "overwrite"]

#: Delta reader features this reader understands when reading through delta-rs + Spark.
SUPPORTED_READER_FEATURES = frozenset({"timestampNtz", "vacuumProtocolCheck", "v2Checkpoint"})
#: Commit attempts of one delta-rs write when other writers commit first.
COMMIT_ATTEMPTS = 10
#: Sub-folder of a table directory where the delta-rs path stages its data files.
DATA_DIR = "data"

_TABLE_NAME = re.compile(r"^`?[A-Za-z0-9_]+`?(\.`?[A-Za-z0-9_]+`?){0,2}$")


class TableError(ValueError):
    """A table cannot be read or written as asked; the message names it."""


@dataclass(frozen=True)
class WriteResult:
    """What a write did. ``committed`` is False when an idempotent append was skipped."""

    target: str
    committed: bool
    version: int | None


def is_table_name(target: str) -> bool:
    """True for a catalog name (``catalog.schema.table``), False for a path."""
    return "/" not in target and ":" not in target and bool(_TABLE_NAME.match(target))


def check_writable(spark: SparkSession, *targets: str) -> None:
    """Refuse, before any work, catalog-table outputs a session cannot write.

    Paths are always writable (Delta through the connector or delta-rs); a
    catalog table ``catalog.schema.table`` needs the Spark Delta connector.
    """
    for target in targets:
        if is_catalog_table(target):
            _require_connector(spark, target)


def _require_connector(spark: SparkSession, target: str) -> None:
    from embedlib.spark import delta_connector_available

    if not delta_connector_available(spark):
        raise TableError(
            f"catalog table {target} needs the Spark Delta connector, which this session lacks "
            "(it is there on Databricks; elsewhere: spark-submit --packages "
            "io.delta:delta-spark_2.13:<version> --conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension "
            "--conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog); "
            "or write to paths: unset output_schema and give score.output / features.output as paths"
        )


# ----------------------------------------------------------------------------- reads


def read_source(spark: SparkSession, source: SourceConfig) -> DataFrame:
    """Read the configured source (catalog table or path in delta/parquet/csv)."""
    if source.table is not None:
        return read_table(spark, source.table, catalog=True)
    assert source.path is not None
    return read_table(
        spark, source.path, format=source.format, options=source.options, schema=source.schema
    )


def read_table(
    spark: SparkSession,
    target: str,
    *,
    format: str = "delta",
    options: Mapping[str, Any] | None = None,
    schema: str | None = None,
    catalog: bool | None = None,
) -> DataFrame:
    """Read a path, or with ``catalog=True`` a catalog table name.

    ``catalog=None`` reads a three-part name ``catalog.schema.table`` from the
    catalog and anything else as a path. Delta paths read through the Delta log
    (connector, or delta-rs's file list).
    """
    from embedlib.spark import delta_connector_available

    if catalog is None:
        catalog = is_catalog_table(target)
    if catalog:
        if not is_table_name(target):
            raise TableError(f"{target!r} is not a table name like catalog.schema.table")
        try:
            return spark.table(target)
        except Exception as exc:
            raise TableError(f"table {target} cannot be read: {_first_line(exc)}") from exc
    check_path(target, what=f"{format} table")
    if format == "delta":
        if delta_connector_available(spark):
            return spark.read.format("delta").load(target)
        return _read_delta_rs(spark, target)
    if format not in ("parquet", "csv"):
        raise TableError(f"{target}: unknown format {format!r}; use delta, parquet or csv")
    _require_exists(spark, target)
    # a CSV value that does not parse as its schema type fails the read (embedlib.errors names it)
    # instead of turning into a silent null; source.options.mode overrides
    opts = {**({"mode": "FAILFAST"} if format == "csv" else {}), **(options or {})}
    reader = spark.read.format(format).options(**{k: _opt(v) for k, v in opts.items()})
    if schema:
        reader = reader.schema(schema)
    try:
        return reader.load(target)
    except Exception as exc:
        raise TableError(f"{format} source {target} cannot be read: {_first_line(exc)}") from exc


def _opt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _require_exists(spark: SparkSession, path: str) -> None:
    local = local_path(path)
    if local is not None:
        import glob
        import os

        if not os.path.exists(local) and not glob.glob(local):
            raise TableError(f"source path {path} does not exist")


def _open_delta(path: str) -> Any:
    from deltalake import DeltaTable

    check_path(path, what="delta table")
    target = local_path(path) or path
    if not DeltaTable.is_deltatable(target):
        raise TableError(f"{path} is not a Delta table (no _delta_log there); check the path")
    return DeltaTable(target)


def _check_protocol(dt: Any, path: str) -> None:
    proto = dt.protocol()
    features = set(proto.reader_features or [])
    unsupported = features - SUPPORTED_READER_FEATURES
    if proto.min_reader_version == 2 or unsupported or proto.min_reader_version > 3:
        need = ", ".join(sorted(unsupported)) or f"reader version {proto.min_reader_version}"
        raise TableError(
            f"Delta table {path} needs {need}, which embedlib cannot read without the Delta "
            "connector; run with the connector (spark-submit --packages "
            "io.delta:delta-spark_2.13:<version>) or rewrite the table without those features"
        )


def _read_delta_rs(spark: SparkSession, path: str) -> DataFrame:
    import pyarrow as pa
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    dt = _open_delta(path)
    _check_protocol(dt, path)
    arrow_schema = pa.schema(dt.schema().to_arrow())
    spark_schema = from_arrow_schema(arrow_schema)
    part_cols = list(dt.metadata().partition_columns)
    data_schema = from_arrow_schema(
        pa.schema([f for f in arrow_schema if f.name not in part_cols])
    )
    actions = pa.table(dt.get_add_actions(flatten=True)).to_pylist()
    root = dt.table_uri.rstrip("/")
    if not actions:
        return spark.createDataFrame([], spark_schema)
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


def source_files(
    spark: SparkSession, source: SourceConfig, columns: tuple[str, ...]
) -> list[str] | None:
    """The Parquet data files holding ``columns`` of a path source, or None.

    Files are known for a Parquet path, and for a Delta path read through
    delta-rs (from its log) whose partition columns are not among ``columns``.
    Anything else (CSV, catalog tables, the connector) returns None: read it with
    Spark.
    """
    from embedlib.spark import delta_connector_available

    if source.path is None or source.format not in ("parquet", "delta"):
        return None
    if source.format == "delta":
        if delta_connector_available(spark):
            return None
        dt = _open_delta(source.path)
        _check_protocol(dt, source.path)
        if set(dt.metadata().partition_columns) & set(columns):
            return None
        return list(dt.file_uris())
    import pyarrow.parquet as pq

    files = list(spark.read.parquet(source.path).inputFiles())
    if not files:
        return None
    first = local_path(files[0]) or files[0]
    try:
        present = set(pq.read_schema(first).names)
    except Exception:  # not readable here (remote store): let Spark read it
        return None
    return files if set(columns) <= present else None


def delta_version(spark: SparkSession, target: str) -> int | None:
    """Current version of a Delta table (path or catalog table), or None if there is none."""
    from embedlib.spark import delta_connector_available

    if is_catalog_table(target):
        _require_connector(spark, target)
    if delta_connector_available(spark):
        ref = f"delta.`{target}`" if not is_table_name(target) else target
        try:
            row = spark.sql(f"DESCRIBE HISTORY {ref} LIMIT 1").first()
        except Exception:
            return None
        return None if row is None else int(row["version"])
    from deltalake import DeltaTable

    local = local_path(target) or target
    if not DeltaTable.is_deltatable(local):
        return None
    return int(DeltaTable(local).version())


def commit_metadata(spark: SparkSession, target: str) -> dict[str, Any]:
    """The ``userMetadata`` JSON of the latest commit of a Delta table (``{}`` if none)."""
    from embedlib.spark import delta_connector_available

    raw: Any = None
    if is_catalog_table(target):
        _require_connector(spark, target)
    if delta_connector_available(spark):
        ref = f"delta.`{target}`" if not is_table_name(target) else target
        row = spark.sql(f"DESCRIBE HISTORY {ref} LIMIT 1").first()
        raw = None if row is None else row["userMetadata"]
    else:
        history = _open_delta(target).history(1)
        raw = history[0].get("userMetadata") if history else None
    if not raw:
        return {}
    return dict(json.loads(raw))


# ---------------------------------------------------------------------------- writes


def write_table(
    spark: SparkSession,
    df: DataFrame,
    target: str,
    *,
    format: Literal["delta", "parquet"] = "delta",
    mode: WriteMode = "append",
    txn: tuple[str, int] | None = None,
    user_metadata: Mapping[str, Any] | None = None,
    catalog: bool | None = None,
) -> WriteResult:
    """Write ``df`` to a path or catalog table as one atomic commit.

    ``txn=(app_id, version)`` makes a Delta append idempotent: if the table has
    already recorded ``version`` (or a later one) for ``app_id``, nothing is written.
    ``user_metadata`` is stored as JSON in the commit (``userMetadata``).
    ``catalog=True`` makes ``target`` a catalog table name instead of a path;
    ``None`` (the default) takes a three-part name ``catalog.schema.table`` as a
    catalog table and anything else as a path. Delta catalog tables need the
    Spark Delta connector (:func:`check_writable` says so before any work).
    """
    from embedlib.spark import delta_connector_available

    if mode not in ("append", "overwrite"):
        raise TableError(f"{target}: write mode must be append or overwrite, got {mode!r}")
    table = is_catalog_table(target) if catalog is None else catalog
    if table and not is_table_name(target):
        raise TableError(f"{target!r} is not a table name like catalog.schema.table")
    if not table:
        check_path(target, what=f"{format} output")
    meta = json.dumps(dict(user_metadata), sort_keys=True) if user_metadata else None
    if format == "parquet":
        if txn is not None:
            raise TableError(f"{target}: idempotent appends (run ids) need format delta")
        writer = df.write.mode(mode).format("parquet")
        writer.saveAsTable(target) if table else writer.save(target)
        return WriteResult(target, True, None)
    if format != "delta":
        raise TableError(f"{target}: unknown output format {format!r}; use delta or parquet")
    if delta_connector_available(spark):
        writer = df.write.format("delta").mode(mode)
        if mode == "append":
            writer = writer.option("mergeSchema", "true")  # new columns are added, as with delta-rs
        if txn is not None:
            writer = writer.option("txnAppId", txn[0]).option("txnVersion", txn[1])
        if meta is not None:
            writer = writer.option("userMetadata", meta)
        committed = _with_conflict_retries(
            lambda: writer.saveAsTable(target) if table else writer.save(target), target, txn
        )
        return WriteResult(target, committed, delta_version(spark, target))
    if table:
        _require_connector(spark, target)
    return _write_delta_rs(spark, df, target, mode, txn, meta)


def _with_conflict_retries(write: Callable[[], None], target: str, txn: tuple[str, int] | None) -> bool:
    """Run a connector write, retrying Delta's optimistic-concurrency conflicts.

    Blind appends of two runs never conflict; an overwrite racing an append does
    (``ConcurrentAppendException``…) and is written again. The same app
    transaction committed by another writer (``ConcurrentTransactionException``)
    means this run's rows are already in: nothing more is written.
    """
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            write()
            return True
        except Exception as exc:
            conflict = re.search(r"(Concurrent\w+Exception|ProtocolChangedException|MetadataChangedException)",
                                 str(exc))
            if conflict is None or attempt == COMMIT_ATTEMPTS:
                raise
            if conflict.group(1) == "ConcurrentTransactionException" and txn is not None:
                log.info("%s: app %s version %d was committed by another writer", target, *txn)
                return False
            log.warning("%s: %s; writing again (%d/%d)", target, conflict.group(1), attempt, COMMIT_ATTEMPTS)
            time.sleep(random.uniform(0.5, 2.0) * attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def _write_delta_rs(
    spark: SparkSession,
    df: DataFrame,
    target: str,
    mode: WriteMode,
    txn: tuple[str, int] | None,
    meta: str | None,
) -> WriteResult:
    import pyarrow as pa
    from deltalake import DeltaTable
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
    if txn is not None and DeltaTable.is_deltatable(location):
        done = DeltaTable(location).transaction_version(txn[0])
        if done is not None and done >= txn[1]:
            log.info("%s: app %s version %d already committed; nothing written", target, *txn)
            return WriteResult(target, False, DeltaTable(location).version())

    stage_rel = f"{DATA_DIR}/{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}"
    stage = join(target, stage_rel)
    try:
        df.write.mode("errorifexists").parquet(stage)
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
            if not DeltaTable.is_deltatable(location):
                create_table_with_add_actions(
                    location, delta_schema, adds, mode="error", commit_properties=props
                )
                return WriteResult(target, True, 0)
            dt = DeltaTable(location)
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
            return WriteResult(target, True, DeltaTable(location).version())
        except Exception as exc:
            # Another writer committed first: a concurrent append, the same app
            # transaction, or the table's creation. Look at the table again.
            if not _is_conflict(exc, location) or attempt == COMMIT_ATTEMPTS:
                _discard_stage(spark, stage)
                raise TableError(f"Delta commit to {target} failed: {_first_line(exc)}") from exc
            log.warning("%s: commit conflicted with another writer (%s); retrying (%d/%d)",
                        target, _first_line(exc), attempt, COMMIT_ATTEMPTS)
            time.sleep(random.uniform(0.05, 0.2) * attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def _add_new_columns(dt: Any, arrow_schema: Any, target: str) -> None:
    """Schema evolution of an append: columns the table lacks are added (nullable);
    a column whose type changed is refused, naming both types."""
    import pyarrow as pa
    from deltalake import Field

    table = pa.schema(dt.schema().to_arrow())
    changed = [
        f"{f.name} ({table.field(f.name).type} in the table, {f.type} now)"
        for f in arrow_schema
        if f.name in table.names and not table.field(f.name).type.equals(f.type)
    ]
    if changed:
        raise TableError(
            f"cannot append to {target}: column type(s) changed: {'; '.join(changed)}; "
            "write to a new table or use mode overwrite"
        )
    new = [f for f in arrow_schema if f.name not in table.names]
    if new:
        log.info("%s: adding column(s) %s", target, ", ".join(f.name for f in new))
        dt.alter.add_columns([Field.from_arrow(f.with_nullable(True)) for f in new])


def _is_conflict(exc: BaseException, location: str) -> bool:
    from deltalake import DeltaTable
    from deltalake.exceptions import CommitFailedError

    if isinstance(exc, CommitFailedError):
        return True
    # a failed create_table_with_add_actions because the table exists by now
    return "already exists" in str(exc).lower() and DeltaTable.is_deltatable(location)


def _list_data_files(spark: SparkSession, folder: str) -> list[tuple[str, int, int, int | None]]:
    """``(name, size, mtime_ms, rows)`` of the Parquet files Spark wrote into ``folder``."""
    sc = spark.sparkContext
    jvm = sc._jvm
    assert jvm is not None
    hpath = jvm.org.apache.hadoop.fs.Path(folder)
    fs = hpath.getFileSystem(sc._jsc.hadoopConfiguration())  # type: ignore[union-attr]
    out: list[tuple[str, int, int, int | None]] = []
    local = local_path(folder)
    for status in fs.listStatus(hpath):
        name = status.getPath().getName()
        if not name.endswith(".parquet") or name.startswith(("_", ".")):
            continue
        rows = None
        if local is not None:
            import pyarrow.parquet as pq

            rows = pq.read_metadata(f"{local}/{name}").num_rows
        out.append((name, int(status.getLen()), int(status.getModificationTime()), rows))
    return sorted(out)


def _discard_stage(spark: SparkSession, folder: str) -> None:
    sc = spark.sparkContext
    jvm = sc._jvm
    assert jvm is not None
    try:
        hpath = jvm.org.apache.hadoop.fs.Path(folder)
        hpath.getFileSystem(sc._jsc.hadoopConfiguration()).delete(hpath, True)  # type: ignore[union-attr]
    except Exception as exc:  # leftover files are harmless: no commit names them
        log.warning("could not remove uncommitted files under %s: %s", folder, exc)
