"""The interface both Delta engines implement, and what a write reports."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from embedlib.core.errors import TableError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["WRITE_ID", "TableEngine", "TableError", "WriteMode", "WriteResult", "check_appended_types"]

WriteMode = Literal["append", "overwrite"]

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
              catalog: bool) -> WriteResult:
        """One atomic commit; with ``txn`` an append already recorded is skipped."""
        ...


def check_appended_types(target: str, changed: list[tuple[str, str, str]]) -> None:
    """Refuse an append whose columns changed type — ``(column, type in the table, type now)`` —
    naming each (both engines word it the same)."""
    if changed:
        listed = "; ".join(f"{name} ({was} in the table, {now} now)" for name, was, now in changed)
        raise TableError(f"cannot append to {target}: column type(s) changed: {listed}; "
                         "write to a new table or use mode overwrite")
