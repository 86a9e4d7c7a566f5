"""Delta through the Spark connector (Databricks, ``--packages io.delta:delta-spark_4.2_2.13:4.4.0``,
or the jars ``make setup`` fetches).

A plain ``df.write.format("delta")`` with ``txnAppId``/``txnVersion`` for
idempotent appends and ``mergeSchema`` for appends that add columns;
``spark.read.format("delta")`` and ``DESCRIBE HISTORY`` for reads and versions.
Where it differs from delta-rs: a repeated app transaction is skipped silently
(a write id in the commit's ``userMetadata`` tells whether this write committed), a changed column type is checked here
first (the same message as delta-rs), and a catalog table is created empty
(version 0) before its first rows are appended, so observed metrics survive.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from embedlib.core import storage
from embedlib.core.faults import fault, kill_when_files_appear
from embedlib.core.layout import is_table_name, local_path
from embedlib.spark.session import plain_strings
from embedlib.spark.tables.engine import (
    TXN_KEY,
    WRITE_ID,
    TableEngine,
    TableError,
    WriteMode,
    WriteResult,
    check_appended_types,
    merge_condition,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["COMMIT_ATTEMPTS", "ConnectorEngine", "with_conflict_retries"]

log = logging.getLogger(__name__)

#: Attempts of one write when other writers commit first.
COMMIT_ATTEMPTS = 10


def _ref(target: str) -> str:
    return target if is_table_name(target) else f"delta.`{target}`"


class ConnectorEngine(TableEngine):
    """The Spark Delta connector."""

    name = "connector"

    def read(self, spark: SparkSession, path: str) -> DataFrame:
        from embedlib.core.errors import first_line
        from embedlib.spark.tables.engine import TableError

        try:
            return spark.read.format("delta").load(path)
        except Exception as exc:
            if "DELTA_TABLE_NOT_FOUND" in str(exc) or "DELTA_MISSING_DELTA_TABLE" in str(exc):
                raise TableError(f"{path} is not a Delta table (no _delta_log there); check the path") from exc
            raise TableError(storage.explain(exc, path) or f"Delta table {path} cannot be read: {first_line(exc)}") from exc

    def data_files(self, spark: SparkSession, path: str, columns: tuple[str, ...]) -> list[str] | None:
        """The current snapshot's files, when reading them raw gives the table: not when a
        partition column is among ``columns``, nor with deletion vectors or column mapping
        (then Spark reads through the connector)."""
        detail = spark.sql(f"DESCRIBE DETAIL {_ref(path)}").first()
        if detail is None:
            return None
        features = set(detail["tableFeatures"] or []) if "tableFeatures" in detail else set()
        properties = dict(detail["properties"] or {})
        if (set(detail["partitionColumns"] or []) & set(columns) or "deletionVectors" in features
                or properties.get("delta.columnMapping.mode", "none") != "none"):
            return None
        return list(self.read(spark, path).inputFiles())

    def _last_commit(self, spark: SparkSession, target: str) -> Any:
        try:
            return spark.sql(f"DESCRIBE HISTORY {_ref(target)} LIMIT 1").first()
        except Exception:
            return None

    def version(self, spark: SparkSession, target: str) -> int | None:
        row = self._last_commit(spark, target)
        return None if row is None else int(row["version"])

    def commit_metadata(self, spark: SparkSession, target: str) -> dict[str, Any]:
        row = self._last_commit(spark, target)
        raw = None if row is None else row["userMetadata"]
        return dict(json.loads(raw)) if raw else {}

    def write(self, spark: SparkSession, df: DataFrame, target: str, *, mode: WriteMode,
              txn: tuple[str, int] | None, user_metadata: Mapping[str, Any] | None,
              catalog: bool, keys: Sequence[str] = ()) -> WriteResult:
        if mode == "merge":
            exists = spark.catalog.tableExists(target) if catalog else self.version(spark, target) is not None
            if exists:
                return self._merge(spark, df, target, keys, txn, user_metadata)
            mode = "append"  # the first run creates the table
        if mode == "append":
            _check_types(spark, df, target)
        if catalog and not spark.catalog.tableExists(target):
            # Spark loses a DataFrame's observed metrics (the score summary) when saveAsTable creates
            # the table (CREATE TABLE AS SELECT): create it empty first, so the rows are an append
            # (from the schema alone: an action on ``df`` itself would spend its one-shot observation)
            plain_strings(spark.createDataFrame([], df.schema)).write.format("delta").mode("ignore").saveAsTable(target)
        meta = dict(user_metadata or {})
        before = None
        if txn is not None:
            # the connector skips an app transaction it has seen without a word; a write id in the
            # commit's metadata tells whether this write is the one that committed
            meta[WRITE_ID] = uuid.uuid4().hex
            before = self.version(spark, target)
        writer = df.write.format("delta").mode(mode)
        if mode == "append":
            writer = writer.option("mergeSchema", "true")  # new columns are added, as with delta-rs
        if txn is not None:
            writer = writer.option("txnAppId", txn[0]).option("txnVersion", txn[1])
        if meta:
            writer = writer.option("userMetadata", json.dumps(meta, sort_keys=True))
        if fault("commit.kill") and not catalog and local_path(target) is not None:
            kill_when_files_appear("commit.kill", str(local_path(target)))
        committed = with_conflict_retries(
            lambda: writer.saveAsTable(target) if catalog else writer.save(target), target, txn
        )
        if not committed or txn is None:
            return WriteResult(target, committed, self.version(spark, target))
        mine, latest = _commits_since(spark, target, before, meta[WRITE_ID])
        if not mine:
            log.info("%s: app %s version %d already committed; nothing written", target, *txn)
        return WriteResult(target, mine, latest)


    def _merge(self, spark: SparkSession, df: DataFrame, target: str, keys: Sequence[str],
               txn: tuple[str, int] | None, user_metadata: Mapping[str, Any] | None) -> WriteResult:
        """``MERGE INTO`` ``target`` from ``df`` on ``keys`` as one commit. ``df`` is cached and counted
        first, so it runs once (its observed metrics — the score summary — come from that run) whatever
        plan the MERGE takes; the run's app transaction is found in the history on a rerun."""
        meta = dict(user_metadata or {})
        if txn is not None:
            meta[TXN_KEY] = f"{txn[0]}:{txn[1]}"
            history = spark.sql(f"DESCRIBE HISTORY {_ref(target)}").select("userMetadata").collect()
            if any(_metadata(r["userMetadata"]).get(TXN_KEY) == meta[TXN_KEY] for r in history):
                log.info("%s: app %s version %d already merged; nothing written", target, *txn)
                return WriteResult(target, False, self.version(spark, target))
        _check_types(spark, df, target)
        meta[WRITE_ID] = uuid.uuid4().hex
        before = self.version(spark, target)
        cached = df.persist()
        view = f"embedlib_merge_{meta[WRITE_ID]}"
        settings = {"spark.databricks.delta.commitInfo.userMetadata": json.dumps(meta, sort_keys=True),
                    "spark.databricks.delta.schema.autoMerge.enabled": "true"}  # new columns are added
        saved = {k: spark.conf.get(k, None) for k in settings}
        try:
            cached.count()
            cached.createOrReplaceTempView(view)
            for k, v in settings.items():
                spark.conf.set(k, v)
            spark.sql(f"MERGE INTO {_ref(target)} AS t USING {view} AS s ON {merge_condition(keys)} "
                      "WHEN MATCHED THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *")
        except Exception as exc:
            if "MULTIPLE_SOURCE_ROW" in str(exc).upper():
                raise TableError(f"cannot merge into {target}: several rows of this run share the key "
                                 f"({', '.join(keys)}) of one row of the table; make the id columns unique "
                                 "in the source, or use mode append") from exc
            raise
        finally:
            for k, was in saved.items():
                if was is None:
                    spark.conf.unset(k)
                else:
                    spark.conf.set(k, was)
            spark.catalog.dropTempView(view)
            cached.unpersist()
        mine, latest = _commits_since(spark, target, before, meta[WRITE_ID])
        return WriteResult(target, mine, latest)


def _metadata(raw: str | None) -> dict[str, Any]:
    """A commit's ``userMetadata`` as embedlib writes it (``{}`` for none, or another writer's text)."""
    try:
        found = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _commits_since(spark: SparkSession, target: str, after: int | None, write_id: str) -> tuple[bool, int | None]:
    """One read of the history: whether a commit after version ``after`` carries ``write_id``, and
    the table's latest version."""
    newer = spark.sql(f"DESCRIBE HISTORY {_ref(target)}")
    if after is not None:
        newer = newer.where(f"version > {int(after)}")
    rows = newer.select("version", "userMetadata").collect()
    latest = max((int(r["version"]) for r in rows), default=after)
    return any(write_id in (r["userMetadata"] or "") for r in rows), latest


def _check_types(spark: SparkSession, df: DataFrame, target: str) -> None:
    """An append may add columns (``mergeSchema``) but not change a column's type: refused
    before any work, naming both types (as delta-rs's engine does)."""
    try:
        table = spark.table(target).schema if is_table_name(target) else spark.read.format("delta").load(target).schema
    except Exception:  # no table yet: the write creates it
        return
    have = {f.name: f.dataType for f in table.fields}
    check_appended_types(target, [(f.name, have[f.name].simpleString(), f.dataType.simpleString())
                                  for f in df.schema.fields if f.name in have and have[f.name] != f.dataType])


def with_conflict_retries(write: Callable[[], None], target: str, txn: tuple[str, int] | None) -> bool:
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
