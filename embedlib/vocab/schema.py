"""Schema checks shared by vocab, train and score: declared columns against a table's schema.

Everything here runs on a schema only — no Spark job, no data read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import pyarrow as pa

from embedlib.vocab.model import SchemaError

if TYPE_CHECKING:
    from pyspark.sql.types import StructType

__all__ = ["arrow_family", "check_columns", "type_family"]

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


def check_columns(
    schema: StructType,
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
    types = {f.name: f.dataType.simpleString() for f in schema.fields}
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
