"""Reading and writing tables: catalog names, Delta, Parquet and CSV paths.

Delta goes through one of two engines, chosen once per session
(:func:`engine_for`): :class:`~embedlib.tables.connector.ConnectorEngine` when the
session has the Spark Delta connector (Databricks, ``--packages``), else
:class:`~embedlib.tables.delta_rs.DeltaRsEngine`. Both implement
:class:`~embedlib.tables.engine.TableEngine`; this module holds what does not
depend on the engine (Parquet and CSV, catalog checks, source versions).
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from embedlib import storage
from embedlib.errors import first_line
from embedlib.layout import check_path, is_catalog_table, is_table_name, local_path
from embedlib.tables.connector import ConnectorEngine
from embedlib.tables.delta_rs import DeltaRsEngine
from embedlib.tables.engine import WRITE_ID, TableEngine, TableError, WriteMode, WriteResult

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from embedlib.config import DeltaConfig, SourceConfig

__all__ = [
    "TableEngine",
    "TableError",
    "WriteResult",
    "check_writable",
    "commit_metadata",
    "delta_version",
    "engine_for",
    "is_table_name",
    "read_source",
    "read_table",
    "reader_options",
    "require_connector",
    "source_files",
    "source_version",
    "use_engine",
    "write_table",
]

log = logging.getLogger(__name__)

_CONNECTOR: dict[tuple[int, str], bool] = {}


def engine_for(spark: SparkSession) -> TableEngine:
    """The Delta engine of this session: ``delta.engine`` (carried on the session as
    ``spark.embedlib.delta.engine``); ``auto`` takes the connector when the session has it
    (checked once per session)."""
    from embedlib.spark import ENGINE_CONF, delta_connector_available

    setting = spark.conf.get(ENGINE_CONF, "auto") or "auto"
    if setting == "delta-rs":
        return DeltaRsEngine()
    key = (id(spark), str(spark.conf.get("spark.app.id", "")))
    if key not in _CONNECTOR:
        _CONNECTOR[key] = delta_connector_available(spark)
        log.debug("Spark Delta connector in this session: %s", _CONNECTOR[key])
    if _CONNECTOR[key]:
        return ConnectorEngine()
    if setting == "connector":
        raise TableError(
            "delta.engine is 'connector' but this session lacks the Spark Delta connector: run `make setup` "
            "(it fetches the jars local sessions load), or start Spark with --packages "
            "io.delta:delta-spark_<spark major.minor>_2.13:<version> and the Delta extension and catalog "
            "(README, \"Delta\"); or set delta.engine to delta-rs"
        )
    return DeltaRsEngine()


def use_engine(spark: SparkSession, delta: DeltaConfig) -> TableEngine:
    """Put a run's ``delta.engine`` on the session (every job starts with this) and return
    the engine it selects; a ``connector`` setting the session cannot honour fails here,
    before any work."""
    from embedlib.spark import ENGINE_CONF, configure_storage

    spark.conf.set(ENGINE_CONF, delta.engine)
    configure_storage(spark)  # the session's fs.s3a keys for delta-rs and pyarrow on the driver
    return engine_for(spark)


def check_writable(spark: SparkSession, *targets: str) -> None:
    """Refuse, before any work, catalog-table outputs a session cannot write.

    Paths are always writable (Delta through the connector or delta-rs); a
    catalog table ``catalog.schema.table`` needs the Spark Delta connector.
    """
    for target in targets:
        if is_catalog_table(target):
            require_connector(spark, target)


def require_connector(spark: SparkSession, target: str, what: str = "catalog table") -> None:
    """Refuse, before any work, what only the Spark Delta connector can do (``what`` of ``target``)."""
    if not isinstance(engine_for(spark), ConnectorEngine):
        raise TableError(
            f"{what} {target} needs the Spark Delta connector, which this session lacks or "
            "delta.engine turns off (it is there on Databricks; local sessions load it after `make setup`; "
            "spark-submit: --packages io.delta:delta-spark_<spark major.minor>_2.13:<version> --conf "
            "spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension "
            "--conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog); "
            "or write to paths: unset output_schema and give score.output / features.output as paths"
        )


# ----------------------------------------------------------------------------- reads


def read_source(spark: SparkSession, source: SourceConfig) -> DataFrame:
    """Read the configured source (catalog table or path in delta/parquet/csv)."""
    if source.table is not None:
        return read_table(spark, source.table, catalog=True)
    assert source.path is not None
    return read_table(spark, source.path, format=source.format, options=source.options, schema=source.schema)


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
    if catalog is None:
        catalog = is_catalog_table(target)
    if catalog:
        if not is_table_name(target):
            raise TableError(f"{target!r} is not a table name like catalog.schema.table")
        try:
            return spark.table(target)
        except Exception as exc:
            raise TableError(storage.explain(exc, target) or f"table {target} cannot be read: {first_line(exc)}") from exc
    check_path(target, what=f"{format} table")
    if format == "delta":
        return engine_for(spark).read(spark, target)
    if format not in ("parquet", "csv"):
        raise TableError(f"{target}: unknown format {format!r}; use delta, parquet or csv")
    _require_exists(target)
    reader = spark.read.format(format).options(**reader_options(format, options))
    if schema:
        reader = reader.schema(schema)
    try:
        return reader.load(target)
    except Exception as exc:
        raise TableError(storage.explain(exc, target) or f"{format} source {target} cannot be read: {first_line(exc)}") from exc


def reader_options(format: str, options: Mapping[str, Any] | None) -> dict[str, str]:
    """Spark reader options of a file source (batch or stream): ``source.options`` as strings (booleans
    as Spark spells them), over CSV's ``FAILFAST`` default — a value that does not parse as its schema
    type fails the read (embedlib.errors names it) instead of turning into a silent null."""
    opts = {**({"mode": "FAILFAST"} if format == "csv" else {}), **(options or {})}
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in opts.items()}


def _require_exists(path: str) -> None:
    local = local_path(path)
    if local is not None and not os.path.exists(local) and not glob.glob(local):
        raise TableError(f"source path {path} does not exist")


def source_files(spark: SparkSession, source: SourceConfig, columns: tuple[str, ...]) -> list[str] | None:
    """The Parquet data files holding ``columns`` of a path source, or None.

    Files are known for a Parquet path, and for a Delta path read through
    delta-rs (from its log) whose partition columns are not among ``columns``.
    Anything else (CSV, catalog tables, the connector) returns None: read it with
    Spark.
    """
    if source.path is None or source.format not in ("parquet", "delta"):
        return None
    if source.format == "delta":
        return engine_for(spark).data_files(spark, source.path, columns)
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
    if is_catalog_table(target):
        require_connector(spark, target)
    return engine_for(spark).version(spark, target)


def commit_metadata(spark: SparkSession, target: str) -> dict[str, Any]:
    """The ``userMetadata`` JSON of the latest commit of a Delta table (``{}`` if none)."""
    if is_catalog_table(target):
        require_connector(spark, target)
    meta = engine_for(spark).commit_metadata(spark, target)
    meta.pop(WRITE_ID, None)
    return meta


def source_version(spark: SparkSession, source: SourceConfig) -> str:
    """A string that changes whenever the source changes.

    A Delta table (path or catalog) is its commit version; any other source is
    a digest of the path, size and modification time of its files.
    """
    if source.table is not None:
        try:
            row = spark.sql(f"DESCRIBE HISTORY {source.table} LIMIT 1").first()
            return f"v{row['version']}" if row is not None else "v?"
        except Exception:  # not a Delta table (Parquet, CSV, Hive…): its folders' files tell
            folders = {f.rsplit("/", 1)[0] for f in spark.table(source.table).inputFiles()}  # one listing per partition
            return _files_digest(spark, sorted(folders))
    assert source.path is not None
    if source.format == "delta":
        return f"v{delta_version(spark, source.path)}"
    return _files_digest(spark, [source.path])


def _files_digest(spark: SparkSession, paths: Sequence[str]) -> str:
    """A digest of every file matched by ``paths`` (globs; a folder's direct children too)."""
    from embedlib.tables.files import list_status

    h = hashlib.sha256()
    for path in sorted(paths):
        for status in list_status(spark, path):
            h.update(f"{status.path}|{status.length}|{status.mtime_ms}".encode())
            if status.is_dir:
                for child in list_status(spark, status.path, children=True):
                    h.update(f"{child.path}|{child.length}|{child.mtime_ms}".encode())
    return h.hexdigest()[:16]


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
    if mode not in ("append", "overwrite"):
        raise TableError(f"{target}: write mode must be append or overwrite, got {mode!r}")
    table = is_catalog_table(target) if catalog is None else catalog
    if table and not is_table_name(target):
        raise TableError(f"{target!r} is not a table name like catalog.schema.table")
    if not table:
        check_path(target, what=f"{format} output")
    if format == "parquet":
        if txn is not None:
            raise TableError(f"{target}: idempotent appends (run ids) need format delta")
        writer = df.write.mode(mode).format("parquet")
        writer.saveAsTable(target) if table else writer.save(target)
        return WriteResult(target, True, None)
    if format != "delta":
        raise TableError(f"{target}: unknown output format {format!r}; use delta or parquet")
    if table:
        require_connector(spark, target)
    return engine_for(spark).write(spark, df, target, mode=mode, txn=txn, user_metadata=user_metadata,
                                   catalog=table)
