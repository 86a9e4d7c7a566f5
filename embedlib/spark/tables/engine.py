"""The interface both Delta engines implement, and what a write reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from embedlib.core.errors import TableError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["TXN_KEY", "WRITE_ID", "TableEngine", "TableError", "WriteMode", "WriteResult", "check_appended_types",
           "merge_condition"]

WriteMode = Literal["append", "overwrite", "merge"]

#: The ``userMetadata`` key of a merge's app transaction (``<app id>:<version>``): a MERGE cannot carry
#: Delta's own ``txnAppId``/``txnVersion`` through the connector, so a rerun finds it in the history.
TXN_KEY = "embedlib_txn"

#: The ``userMetadata`` key of a connector write's id (how a skipped app transaction is told
#: apart); :func:`embedlib.spark.tables.commit_metadata` leaves it out.
WRITE_ID = "embedlib_write_id"


@dataclass(frozen=True)
class WriteResult:
    """What a write did. ``committed`` is False when an idempotent append was skipped."""

    target: str
    committed: bool
    version: int | None


class TableEngine(Protocol):
    """Delta reads, versions, commit metadata and atomic, idempotent writes."""

    name: str

    def read(self, spark: SparkSession, path: str) -> DataFrame:
        """A Delta path as a DataFrame, through the table's log."""
        ...

    def data_files(self, spark: SparkSession, path: str, columns: tuple[str, ...]) -> list[str] | None:
        """The Parquet data files holding ``columns`` of a Delta path, or None (read it with Spark)."""
        ...

    def version(self, spark: SparkSession, target: str) -> int | None:
        """The current version of a Delta path or catalog table, None if there is no table."""
        ...

    def commit_metadata(self, spark: SparkSession, target: str) -> dict[str, Any]:
        """The ``userMetadata`` JSON of the latest commit (``{}`` if none)."""
        ...

    def write(self, spark: SparkSession, df: DataFrame, target: str, *, mode: WriteMode,
              txn: tuple[str, int] | None, user_metadata: Mapping[str, Any] | None,
              catalog: bool, keys: Sequence[str] = ()) -> WriteResult:
        """One atomic commit; with ``txn`` a write already recorded is skipped. ``merge`` upserts on
        ``keys`` (a row whose keys match a table row replaces it, others are inserted; a missing table
        is created); ``append`` and ``overwrite`` ignore ``keys``."""
        ...


def merge_condition(keys: Sequence[str], target: str = "t", source: str = "s") -> str:
    """The ON clause of an upsert on ``keys`` (a null key matches nothing: the row is inserted), in
    the SQL both the connector and delta-rs read."""
    return " AND ".join(f"{target}.`{k}` = {source}.`{k}`" for k in keys)


def check_appended_types(target: str, changed: list[tuple[str, str, str]]) -> None:
    """Refuse an append whose columns changed type — ``(column, type in the table, type now)`` —
    naming each (both engines word it the same)."""
    if changed:
        listed = "; ".join(f"{name} ({was} in the table, {now} now)" for name, was, now in changed)
        raise TableError(f"cannot append to {target}: column type(s) changed: {listed}; "
                         "write to a new table or use mode overwrite")
