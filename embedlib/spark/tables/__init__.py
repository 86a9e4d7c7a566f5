"""Reading and writing tables: catalog names, Delta, Parquet and CSV paths.

A run opens its tables once (:func:`open_tables`): the Delta engine is chosen there, from the run's
``delta.engine`` and the session — :class:`~embedlib.spark.tables.connector.ConnectorEngine` when the
session has the Spark Delta connector (Databricks, ``--packages``), else
:class:`~embedlib.spark.tables.delta_rs.DeltaRsEngine` — and the :class:`Tables` it returns is passed
down to every read and write of the run. Two runs on one session with different engines do not
disturb each other (nothing is put on the session). Both engines implement
:class:`~embedlib.spark.tables.engine.TableEngine`; this module holds what does not depend on the
engine (Parquet and CSV, catalog checks, source versions).
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from embedlib.core import storage
from embedlib.core.errors import first_line
from embedlib.core.layout import check_path, is_catalog_table, is_table_name, local_path
from embedlib.spark.tables.connector import ConnectorEngine
from embedlib.spark.tables.delta_rs import DeltaRsEngine
from embedlib.spark.tables.engine import WRITE_ID, TableEngine, TableError, WriteMode, WriteResult

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from embedlib.core.config import DeltaConfig, SourceConfig

__all__ = [
    "TableEngine",
    "TableError",
    "Tables",
    "WriteResult",
    "choose_engine",
    "is_table_name",
    "open_tables",
    "reader_options",
]

log = logging.getLogger(__name__)

_CONNECTOR: dict[tuple[int, str], bool] = {}


def choose_engine(spark: SparkSession, setting: str = "auto") -> TableEngine:
    """The Delta engine for ``delta.engine`` = ``setting`` on this session: ``auto`` takes the connector
    when the session has it (asked once per session), ``connector`` requires it, ``delta-rs`` never uses it."""
    from embedlib.spark.session import delta_connector_available

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


def open_tables(spark: SparkSession, delta: DeltaConfig | None = None) -> Tables:
    """A run's tables: the Delta engine its ``delta.engine`` selects on this session, chosen here once
    (every job starts with this; a ``connector`` setting the session cannot honour fails here, before any
    work), and the session's S3 keys set for delta-rs and pyarrow on the driver. Without ``delta``
    (reading a table outside a run) the engine is ``auto``'s."""
    if delta is None:
        return Tables(spark, choose_engine(spark))
    from embedlib.spark.session import configure_storage

    engine = choose_engine(spark, delta.engine)
    configure_storage(spark)
    return Tables(spark, engine)


@dataclass(frozen=True)
class Tables:
    """Every read and write of a run's tables, on one session through one Delta engine
    (:func:`open_tables`). ``engine`` alone (stateless, picklable) is what travels where the session
    cannot: a stream's ``foreachBatch`` function rebuilds its ``Tables`` on the batch's session."""

    spark: SparkSession
    engine: TableEngine

    def check_writable(self, *targets: str) -> None:
        """Refuse, before any work, catalog-table outputs this run cannot write.

        Paths are always writable (Delta through the connector or delta-rs); a
        catalog table ``catalog.schema.table`` needs the Spark Delta connector.
        """
        for target in targets:
            if is_catalog_table(target):
                self.require_connector(target)

    def require_connector(self, target: str, what: str = "catalog table") -> None:
        """Refuse, before any work, what only the Spark Delta connector can do (``what`` of ``target``)."""
        if not isinstance(self.engine, ConnectorEngine):
            raise TableError(
                f"{what} {target} needs the Spark Delta connector, which this session lacks or "
                "delta.engine turns off (it is there on Databricks; local sessions load it after `make setup`; "
                "spark-submit: --packages io.delta:delta-spark_<spark major.minor>_2.13:<version> --conf "
                "spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension "
                "--conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog); "
                "or write to paths: unset output_schema and give score.output / features.output as paths"
            )

    # ----------------------------------------------------------------------------- reads

    def read_source(self, source: SourceConfig) -> DataFrame:
        """Read the configured source (catalog table or path in delta/parquet/csv)."""
        if source.table is not None:
            return self.read(source.table, catalog=True)
        assert source.path is not None
        return self.read(source.path, format=source.format, options=source.options, schema=source.schema)

    def read(self, target: str, *, format: str = "delta", options: Mapping[str, Any] | None = None,
             schema: str | None = None, catalog: bool | None = None) -> DataFrame:
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
                return self.spark.table(target)
            except Exception as exc:
                raise TableError(storage.explain(exc, target)
                                 or f"table {target} cannot be read: {first_line(exc)}") from exc
        check_path(target, what=f"{format} table")
        if format == "delta":
            return self.engine.read(self.spark, target)
        if format not in ("parquet", "csv"):
            raise TableError(f"{target}: unknown format {format!r}; use delta, parquet or csv")
        _require_exists(target)
        reader = self.spark.read.format(format).options(**reader_options(format, options))
        if schema:
            reader = reader.schema(schema)
        try:
            return reader.load(target)
        except Exception as exc:
            raise TableError(storage.explain(exc, target)
                             or f"{format} source {target} cannot be read: {first_line(exc)}") from exc

    def source_files(self, source: SourceConfig, columns: tuple[str, ...]) -> list[str] | None:
        """The Parquet data files holding ``columns`` of a path source, or None.

        Files are known for a Parquet path, and for a Delta path read through
        delta-rs (from its log) whose partition columns are not among ``columns``.
        Anything else (CSV, catalog tables, the connector) returns None: read it with
        Spark.
        """
        if source.path is None or source.format not in ("parquet", "delta"):
            return None
        if source.format == "delta":
            return self.engine.data_files(self.spark, source.path, columns)
        import pyarrow.parquet as pq

        files = list(self.spark.read.parquet(source.path).inputFiles())
        if not files:
            return None
        first = local_path(files[0]) or files[0]
        try:
            present = set(pq.read_schema(first).names)
        except Exception:  # not readable here (remote store): let Spark read it
            return None
        return files if set(columns) <= present else None

    def version(self, target: str) -> int | None:
        """Current version of a Delta table (path or catalog table), or None if there is none."""
        if is_catalog_table(target):
            self.require_connector(target)
        return self.engine.version(self.spark, target)

    def commit_metadata(self, target: str) -> dict[str, Any]:
        """The ``userMetadata`` JSON of the latest commit of a Delta table (``{}`` if none)."""
        if is_catalog_table(target):
            self.require_connector(target)
        meta = self.engine.commit_metadata(self.spark, target)
        meta.pop(WRITE_ID, None)
        return meta

    def source_version(self, source: SourceConfig) -> str:
        """A string that changes whenever the source changes.

        A Delta table (path or catalog) is its commit version; any other source is
        a digest of the path, size and modification time of its files.
        """
        if source.table is not None:
            try:
                row = self.spark.sql(f"DESCRIBE HISTORY {source.table} LIMIT 1").first()
                return f"v{row['version']}" if row is not None else "v?"
            except Exception:  # not a Delta table (Parquet, CSV, Hive…): its folders' files tell
                # one listing per partition
                folders = {f.rsplit("/", 1)[0] for f in self.spark.table(source.table).inputFiles()}
                return self._files_digest(sorted(folders))
        assert source.path is not None
        if source.format == "delta":
            return f"v{self.version(source.path)}"
        return self._files_digest([source.path])

    def _files_digest(self, paths: Sequence[str]) -> str:
        """A digest of every file matched by ``paths`` (globs; a folder's direct children too)."""
        from embedlib.spark.tables.files import list_status

        h = hashlib.sha256()
        for path in sorted(paths):
            for status in list_status(self.spark, path):
                h.update(f"{status.path}|{status.length}|{status.mtime_ms}".encode())
                if status.is_dir:
                    for child in list_status(self.spark, status.path, children=True):
                        h.update(f"{child.path}|{child.length}|{child.mtime_ms}".encode())
        return h.hexdigest()[:16]

    # ---------------------------------------------------------------------------- writes

    def write(self, df: DataFrame, target: str, *, format: Literal["delta", "parquet"] = "delta",
              mode: WriteMode = "append", txn: tuple[str, int] | None = None,
              user_metadata: Mapping[str, Any] | None = None, catalog: bool | None = None,
              keys: Sequence[str] = ()) -> WriteResult:
        """Write ``df`` to a path or catalog table as one atomic commit.

        ``txn=(app_id, version)`` makes a Delta write idempotent: if the table has
        already recorded ``version`` (or a later one) for ``app_id``, nothing is written.
        ``mode="merge"`` upserts on ``keys`` (Delta only: ``MERGE`` through the connector, ``merge``
        in delta-rs): a row whose keys equal a table row's replaces it, the others are inserted (a
        null key matches nothing), new columns are added; a missing table is created.
        ``user_metadata`` is stored as JSON in the commit (``userMetadata``).
        ``catalog=True`` makes ``target`` a catalog table name instead of a path;
        ``None`` (the default) takes a three-part name ``catalog.schema.table`` as a
        catalog table and anything else as a path. Delta catalog tables need the
        Spark Delta connector (:meth:`check_writable` says so before any work).
        """
        if mode not in ("append", "overwrite", "merge"):
            raise TableError(f"{target}: write mode must be append, overwrite or merge, got {mode!r}")
        if mode == "merge" and (format != "delta" or not keys):
            raise TableError(f"{target}: mode merge upserts on key columns into a Delta table; "
                             f"got format {format} and keys {list(keys)}")
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
            self.require_connector(target)
        return self.engine.write(self.spark, df, target, mode=mode, txn=txn, user_metadata=user_metadata,
                                 catalog=table, keys=keys)


def reader_options(format: str, options: Mapping[str, Any] | None) -> dict[str, str]:
    """Spark reader options of a file source (batch or stream): ``source.options`` as strings (booleans
    as Spark spells them), over CSV's ``FAILFAST`` default — a value that does not parse as its schema
    type fails the read (embedlib.core.errors names it) instead of turning into a silent null."""
    opts = {**({"mode": "FAILFAST"} if format == "csv" else {}), **(options or {})}
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in opts.items()}


def _require_exists(path: str) -> None:
    local = local_path(path)
    if local is not None and not os.path.exists(local) and not glob.glob(local):
        raise TableError(f"source path {path} does not exist")


