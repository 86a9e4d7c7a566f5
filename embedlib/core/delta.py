"""Delta tables read with delta-rs (``deltalake``), without Spark: is there one, open it (its protocol
checked against what embedlib reads). Core: no pyspark. The Spark layer's Delta engines are
:mod:`embedlib.spark.tables`; ``Vocabulary.load_delta`` and the delta-rs engine both open tables here.
"""

from __future__ import annotations

from typing import Any

from embedlib.core import storage
from embedlib.core.errors import TableError, first_line
from embedlib.core.layout import check_path, local_path

__all__ = ["SUPPORTED_READER_FEATURES", "delta_table", "is_delta_table", "open_delta"]

#: Delta reader features this reader understands when reading through delta-rs + Spark.
SUPPORTED_READER_FEATURES = frozenset({"timestampNtz", "vacuumProtocolCheck", "v2Checkpoint"})


def delta_table(location: str) -> Any:
    """``DeltaTable(location)`` with the storage settings of its scheme."""
    from deltalake import DeltaTable

    return DeltaTable(location, storage_options=storage.delta_rs_options(location))


def is_delta_table(location: str) -> bool:
    """Whether ``location`` holds a Delta log; a missing bucket or refused credentials say so."""
    from deltalake import DeltaTable

    try:
        return bool(DeltaTable.is_deltatable(location, storage_options=storage.delta_rs_options(location)))
    except OSError as exc:
        raise TableError(storage.explain(exc, location) or f"{location}: {first_line(exc)}") from None


def open_delta(path: str) -> Any:
    """The ``DeltaTable`` at ``path``, its protocol checked; a clear error if there is none."""
    check_path(path, what="delta table")
    target = local_path(path) or path
    if not is_delta_table(target):
        raise TableError(f"{path} is not a Delta table (no _delta_log there); check the path")
    try:
        dt = delta_table(target)
    except Exception as exc:  # e.g. "Feature 'x' is not supported": a protocol newer than delta-rs
        raise TableError(f"Delta table {path} cannot be read with delta-rs: {first_line(exc)}; run with the "
                         "Spark Delta connector (delta.engine: connector) or rewrite the table") from exc
    _check_protocol(dt, path)
    return dt


def _check_protocol(dt: Any, path: str) -> None:
    proto = dt.protocol()
    features = set(proto.reader_features or [])
    unsupported = features - SUPPORTED_READER_FEATURES
    if proto.min_reader_version == 2 or unsupported or proto.min_reader_version > 3:
        need = ", ".join(sorted(unsupported)) or f"reader version {proto.min_reader_version}"
        raise TableError(
            f"Delta table {path} needs {need}, which embedlib cannot read without the Delta "
            "connector; run with the connector (delta.engine: connector; spark-submit --packages "
            "io.delta:delta-spark_<spark major.minor>_2.13:<version>) or rewrite the table without those features"
        )
