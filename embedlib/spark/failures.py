"""Failures inside Spark jobs, explained in one line (the Spark layer; :mod:`embedlib.core.errors` is core).

An embedlib error raised in a Spark task (a ±inf numeric at scoring, a Parquet
file whose column has another type, …) reaches the driver wrapped in Spark's
``PythonException`` or py4j's ``Py4JJavaError``, whose text is pages of Java and
Python stack trace. :func:`explain` finds what matters in that text:

* an embedlib error class and its message (``embedlib.core.encode.EncodeError: …``) —
  exit code 2 when it is a :class:`ValueError` (bad input), else 1;
* Spark's own error class for bad input it detects while reading — a Parquet
  column whose type differs between files, a CSV value that does not parse as
  the type the schema gives it (then the failing file is read once more, every
  column as text, to name the column and an example value) — exit code 2;
* otherwise the first meaningful line of the failure — exit code 1.

The CLI logs the result as one line and the full trace at DEBUG only.
"""


from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from embedlib.core import storage
from embedlib.core.errors import first_line

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from embedlib.core.config import SourceConfig

__all__ = ["Failure", "explain", "unparsable_csv_values"]

log = logging.getLogger(__name__)

_EMBEDLIB_ERROR = re.compile(r"^(?P<module>embedlib(?:\.\w+)*)\.(?P<cls>\w+): (?P<msg>.+)$", re.M)
_PYTHON_ERROR = re.compile(r"^(?P<cls>[A-Za-z_][\w.]*(?:Error|Exception|Interrupt)): (?P<msg>.+)$", re.M)
_SPARK_CLASS = re.compile(r"\[(?P<cls>[A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)*)\] (?P<msg>.+?)(?:\s+SQLSTATE: \w+)?\s*$", re.M)
_JAVA_ERROR = re.compile(r"^(?::\s*|Caused by:\s*)?(?P<cls>(?:[a-z]\w*\.)+[A-Z][\w$]*): (?P<msg>.+)$", re.M)
_MALFORMED = re.compile(r"\[MALFORMED_RECORD_IN_PARSING[\w.]*\] (?P<msg>.+?)(?:\s+SQLSTATE: \w+)?\s*$", re.M)
_WRAPPERS = ("PythonException", "Py4JJavaError", "SparkException")
_READ_FILE = re.compile(r"while reading file (?P<file>\S+?)\.?\s")
_BAD_TOKEN = re.compile(r'For input string: "(?P<value>[^"]*)"')


@dataclass(frozen=True)
class Failure:
    """A failure explained: one line for the user and the process exit code."""

    message: str
    exit_code: int


def explain(
    exc: BaseException,
    spark: SparkSession | None = None,
    sources: Sequence[SourceConfig] = (),
) -> Failure:
    """Explain a failed command's exception (see the module docstring).

    ``sources`` are the source configurations the command reads (for the CSV
    diagnosis, which needs the schema and reader options).
    """
    text = str(exc)
    found = _embedlib_error(text)
    if found is not None:
        return found
    s3 = storage.explain(exc)  # a missing bucket or refused credentials: the user's to fix
    if s3 is not None:
        return Failure(s3, 2)
    tb = text.rfind("Traceback (most recent call last)")
    python = [m for m in _PYTHON_ERROR.finditer(text, max(tb, 0)) if not m.group("cls").endswith(_WRAPPERS)]
    if tb >= 0 and python:  # a Python error in a task: the exception line ending its (last) traceback
        return Failure(f"{python[0].group('cls')}: {python[0].group('msg').strip()}", 1)
    spark_class = _SPARK_CLASS.search(text)
    if spark_class is not None:
        cls, msg = spark_class.group("cls"), spark_class.group("msg").strip()
        if "PARQUET_COLUMN_DATA_TYPE_MISMATCH" in cls:
            return Failure(
                f"{msg} The files of one source must agree on each column's type: rewrite that file "
                "with the type of the others.",
                2,
            )
        if "MALFORMED_RECORD" in text:
            detail = _csv_message(spark, text, sources) if spark is not None else None
            record = _MALFORMED.search(text)
            if detail is None and record is not None:
                detail = (f"{msg} {record.group('msg').strip()} Fix the record, or set "
                          "source.options.mode=PERMISSIVE to read what does not parse as nulls")
            return Failure(detail or msg, 2)
        return Failure(f"[{cls}] {msg}", 1)
    java = _JAVA_ERROR.search(text)
    if java is not None and type(exc).__name__ == "Py4JJavaError":
        return Failure(f"{java.group('cls').rsplit('.', 1)[-1]}: {java.group('msg').strip()}", 1)
    first = first_line(exc)
    return Failure(f"{type(exc).__name__}: {first}" if first != type(exc).__name__ else first, 1)


def _embedlib_error(text: str) -> Failure | None:
    match = _EMBEDLIB_ERROR.search(text)
    if match is None:
        return None
    msg = match.group("msg").strip()
    try:
        cls = getattr(importlib.import_module(match.group("module")), match.group("cls"))
        bad_input = isinstance(cls, type) and issubclass(cls, ValueError)
    except (ImportError, AttributeError):
        bad_input = False
    return Failure(msg, 2 if bad_input else 1)


def _csv_message(spark: SparkSession, text: str, sources: Sequence[SourceConfig]) -> str | None:
    """Name the column and an example value behind Spark's "malformed record" failure."""
    file = _READ_FILE.search(text)
    csv_sources = [s for s in sources if s.format == "csv" and s.schema]
    if file is None or not csv_sources:
        return None
    token = _BAD_TOKEN.search(text)
    for source in csv_sources:
        try:
            found = unparsable_csv_values(spark, source, file.group("file"))
        except Exception as exc:  # the diagnosis is best effort; the plain message stays
            log.debug("could not re-read %s to name the column: %s", file.group("file"), exc)
            continue
        if found:
            column, sql_type, example, count = found[0]
            return (
                f"CSV file {file.group('file')}: column '{column}' holds {count:,} value(s) that are not "
                f"{sql_type} as the schema (source.schema) says, e.g. {example!r}; fix the values, or set "
                "source.options.mode=PERMISSIVE to read them as nulls (counted as missing)"
            )
    if token is not None:
        return (
            f"CSV file {file.group('file')}: the value {token.group('value')!r} does not parse as the type "
            "source.schema gives its column; fix it, or set source.options.mode=PERMISSIVE to read such "
            "values as nulls"
        )
    return None


def unparsable_csv_values(
    spark: SparkSession, source: SourceConfig, file: str
) -> list[tuple[str, str, str, int]]:
    """``(column, type, example, count)`` for each typed column of ``source.schema``
    whose text in ``file`` does not cast to that type. One extra read of the file,
    every column as a string; used only after a read has failed."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType, StructField, StructType

    assert source.schema is not None
    schema = StructType.fromDDL(source.schema)
    assert isinstance(schema, StructType)
    as_text = StructType([StructField(f.name, StringType()) for f in schema.fields])
    options = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in source.options.items()}
    options["mode"] = "PERMISSIVE"
    raw = spark.read.options(**options).schema(as_text).csv(file)
    typed = [f for f in schema.fields if not isinstance(f.dataType, StringType)]
    if not typed:
        return []
    aggs = []
    for i, f in enumerate(typed):
        col = F.col(f"`{f.name}`")
        bad = col.isNotNull() & col.try_cast(f.dataType).isNull()
        aggs += [F.count(F.when(bad, 1)).alias(f"n{i}"), F.min(F.when(bad, col)).alias(f"e{i}")]
    row = raw.agg(*aggs).first()
    assert row is not None
    return [
        (f.name, f.dataType.simpleString().upper(), str(row[f"e{i}"]), int(row[f"n{i}"]))
        for i, f in enumerate(typed)
        if row[f"n{i}"]
    ]
