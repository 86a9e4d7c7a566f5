"""Delta through the Spark connector (Databricks, ``--packages io.delta:delta-spark_2.13:…``).

A plain ``df.write.format("delta")`` with ``txnAppId``/``txnVersion`` for
idempotent appends and ``mergeSchema`` for appends that add columns;
``spark.read.format("delta")`` and ``DESCRIBE HISTORY`` for reads and versions.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from embedlib.layout import is_table_name
from embedlib.tables.engine import TableEngine, WriteMode, WriteResult

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
        return spark.read.format("delta").load(path)

    def data_files(self, path: str, columns: tuple[str, ...]) -> list[str] | None:
        return None  # Spark reads through the connector

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
              catalog: bool) -> WriteResult:
        writer = df.write.format("delta").mode(mode)
        if mode == "append":
            writer = writer.option("mergeSchema", "true")  # new columns are added, as with delta-rs
        if txn is not None:
            writer = writer.option("txnAppId", txn[0]).option("txnVersion", txn[1])
        if user_metadata:
            writer = writer.option("userMetadata", json.dumps(dict(user_metadata), sort_keys=True))
        committed = with_conflict_retries(
            lambda: writer.saveAsTable(target) if catalog else writer.save(target), target, txn
        )
        return WriteResult(target, committed, self.version(spark, target))


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
