"""Schema checks shared by vocab, train and score: declared columns against a table's schema.

Everything here runs on a schema only — no Spark job, no data read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import pyarrow as pa

from embedlib.core.vocab.model import SchemaError


class _SparkField(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def dataType(self) -> Any: ...  # noqa: N802 (pyspark's name)


class SparkSchema(Protocol):
    """A Spark ``StructType`` as this module reads it (no pyspark import)."""

    @property
    def fields(self) -> Sequence[_SparkField]: ...

__all__ = ["SparkSchema", "arrow_family", "arrow_type_name", "check_columns", "column_types", "type_family"]

_CATEGORICAL_TYPES = ("string", "varchar", "char", "int", "bigint", "smallint", "tinyint", "boolean")
_NUMERIC_TYPES = ("int", "bigint", "smallint", "tinyint", "float", "double", "decimal")


def type_family(simple_type: str) -> str:
    """``string``, ``integer``, ``float``, ``boolean``, … of a Spark type's simple string."""
    kind = simple_type.split("(")[0]
    if kind in ("string", "varchar", "char"):
        return "string"
    if kind in ("int", "bigint", "smallint", "tinyint"):
        return "integer"
    if kind in ("float", "double", "decimal"):
        return "float"
    return kind


def column_types(schema: SparkSchema | pa.Schema) -> dict[str, str]:
    """Column → Spark type name (``simpleString``) of a Spark schema, or of an Arrow schema as Spark
    reads it (:func:`arrow_type_name`; no pyspark needed)."""
    if isinstance(schema, pa.Schema):
        return {f.name: arrow_type_name(f.type) for f in schema}
    return {f.name: f.dataType.simpleString() for f in schema.fields}


def arrow_type_name(t: pa.DataType) -> str:
    """The Spark type name (``simpleString``) of an Arrow type, as pyspark's ``from_arrow_type`` maps it
    (``tests/test_inmemory.py`` checks them against pyspark); dictionaries by their values, unsigned
    integers as the signed type that holds them. A type Spark has no name for keeps Arrow's."""
    t = t.value_type if pa.types.is_dictionary(t) else t
    simple = {pa.bool_(): "boolean", pa.int8(): "tinyint", pa.int16(): "smallint", pa.int32(): "int",
              pa.int64(): "bigint", pa.uint8(): "smallint", pa.uint16(): "int", pa.uint32(): "bigint",
              pa.uint64(): "decimal(20,0)", pa.float16(): "float", pa.float32(): "float",
              pa.float64(): "double", pa.string(): "string", pa.large_string(): "string",
              pa.binary(): "binary", pa.large_binary(): "binary", pa.date32(): "date", pa.null(): "void"}
    if t in simple:
        return simple[t]
    if pa.types.is_string_view(t):
        return "string"
    if pa.types.is_decimal(t):
        return f"decimal({t.precision},{t.scale})"
    if pa.types.is_timestamp(t):
        return "timestamp" if t.tz is not None else "timestamp_ntz"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"array<{arrow_type_name(t.value_type)}>"
    if pa.types.is_map(t):
        return f"map<{arrow_type_name(t.key_type)},{arrow_type_name(t.item_type)}>"
    if pa.types.is_struct(t):
        return "struct<" + ",".join(f"{f.name}:{arrow_type_name(f.type)}" for f in t) + ">"
    return str(t)


def check_columns(
    schema: SparkSchema | pa.Schema,
    table: str,
    *,
    categorical: Sequence[str],
    numeric: Sequence[str],
    ids: Sequence[str] = (),
    trained: Mapping[str, str] | None = None,
) -> None:
    """Raise :class:`SchemaError` if the declared columns do not fit ``schema``.

    ``trained`` maps columns to their Spark types when the vocabulary was built
    (a bundle's ``source_types``): a categorical whose type family changed since
    (string ↔ integer ↔ boolean: its values would no longer match the vocabulary)
    or a numeric that is no longer numeric is refused, naming both types.
    Runs on the schema only — no Spark job.
    """
    types = column_types(schema)
    declared = list(categorical) + list(numeric) + list(ids)
    trained = trained or {}
    if not categorical and not numeric:
        raise SchemaError("no columns declared: set columns.categorical and/or columns.numeric")
    missing = [c for c in dict.fromkeys(declared) if c not in types]
    if missing:
        at_training = [f"{c} {trained[c]}" for c in missing if c in trained]
        raise SchemaError(
            f"{table} lacks column(s) {', '.join(missing)}; it has: {', '.join(types)}"
            + (f" (the model was trained with {', '.join(at_training)})" if at_training else "")
        )
    for name in list(categorical) + list(numeric):
        before = trained.get(name)
        if before is None or type_family(before) == type_family(types[name]):
            continue
        if name in categorical or type_family(types[name]) not in ("integer", "float"):
            raise SchemaError(
                f"{'categorical' if name in categorical else 'numeric'} column '{name}' of {table} is "
                f"{types[name]} now but was {before} when the vocabulary was built; cast it back to {before} "
                "(e.g. with source.schema), or rebuild the vocabulary and retrain"
            )
    for name in categorical:
        kind = types[name].split("(")[0]
        if kind not in _CATEGORICAL_TYPES:
            raise SchemaError(
                f"categorical column '{name}' of {table} has type {types[name]}; categoricals must "
                "be string, integer or boolean (cast it, or declare it numeric)"
            )
    for name in numeric:
        kind = types[name].split("(")[0]
        if kind not in _NUMERIC_TYPES:
            raise SchemaError(
                f"numeric column '{name}' of {table} has type {types[name]}, which is not numeric; "
                "cast it to double, or declare it categorical"
            )


def arrow_family(t: pa.DataType) -> str:
    """The :func:`type_family` of an Arrow type (dictionaries by their values)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "float"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_boolean(t):
        return "boolean"
    return str(t)
