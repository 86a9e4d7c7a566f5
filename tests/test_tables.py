"""Tables: Delta through both engines (the Spark connector and delta-rs), interop between them,
Parquet, CSV, idempotent appends."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from pyspark.testing import assertDataFrameEqual

from embedlib.core.layout import PathError
from embedlib.spark.session import delta_connector_available
from embedlib.spark.tables import TableError

from .conftest import ENGINES, tables_of

ROWS = [
    (1, "a", 1.5, ["x", "y"], {"k": 1.0}, dt.datetime(2024, 1, 2, 3, 4, 5)),
    (2, "ü€", None, [], {}, dt.datetime(2024, 5, 6, 7, 8, 9)),
    (3, "", -2.0, None, None, None),
]
DDL = "id BIGINT, s STRING, x DOUBLE, arr ARRAY<STRING>, m MAP<STRING, DOUBLE>, ts TIMESTAMP"


def frame(spark, rows=ROWS):  # type: ignore[no-untyped-def]
    return spark.createDataFrame(rows, DDL)


def test_the_session_has_both_engines_and_delta_engine_picks(spark) -> None:  # type: ignore[no-untyped-def]
    assert delta_connector_available(spark) is True
    for setting, name in (("auto", "connector"), ("connector", "connector"), ("delta-rs", "delta-rs")):
        assert tables_of(spark, setting).engine.name == name


def test_delta_round_trip(spark, tmp_path: Path, delta_engine: str) -> None:  # type: ignore[no-untyped-def]
    """Written by either engine, read back by both (delta-rs's DeltaTable, and read_table)."""
    path = str(tmp_path / "t")
    result = tables_of(spark, delta_engine).write(frame(spark), path, mode="append", user_metadata={"who": "test"})
    assert result.committed and result.version == 0
    table = DeltaTable(path).to_pyarrow_table()
    table = pa.table(table).sort_by("id")
    assert table.column("id").to_pylist() == [1, 2, 3]
    assert table.column("s").to_pylist() == ["a", "ü€", ""]
    assert table.column("arr").to_pylist() == [["x", "y"], [], None]
    assert table.column("m").to_pylist()[0] == [("k", 1.0)]
    assert table.column("ts").to_pylist()[0].replace(tzinfo=None) == dt.datetime(2024, 1, 2, 3, 4, 5)
    assert table.schema.field("x").type == pa.float64()
    assert pa.types.is_timestamp(table.schema.field("ts").type)
    assert tables_of(spark, delta_engine).commit_metadata(path) == {"who": "test"}
    assertDataFrameEqual(tables_of(spark, delta_engine).read(path), frame(spark))


def test_idempotent_append(spark, tmp_path: Path, delta_engine: str) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "t")
    first = tables_of(spark, delta_engine).write(frame(spark), path, txn=("run-a", 1))
    again = tables_of(spark, delta_engine).write(frame(spark), path, txn=("run-a", 1))
    assert first.committed and not again.committed
    assert DeltaTable(path).count() == 3
    assert DeltaTable(path).transaction_version("run-a") == 1
    newer = tables_of(spark, delta_engine).write(frame(spark), path, txn=("run-a", 2))
    other_app = tables_of(spark, delta_engine).write(frame(spark), path, txn=("run-b", 1))
    assert newer.committed and other_app.committed
    assert DeltaTable(path).count() == 9
    older = tables_of(spark, delta_engine).write(frame(spark), path, txn=("run-a", 1))
    assert not older.committed and DeltaTable(path).count() == 9
    if delta_engine == "delta-rs":  # a skipped write leaves no data files behind
        data_dirs = list((tmp_path / "t" / "data").iterdir())
        assert len(data_dirs) == 3


def test_overwrite_replaces_rows(spark, tmp_path: Path, delta_engine: str) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "t")
    tables_of(spark, delta_engine).write(frame(spark), path)
    tables_of(spark, delta_engine).write(frame(spark, ROWS[:1]), path, mode="overwrite")
    assert DeltaTable(path).count() == 1
    assert tables_of(spark, delta_engine).version(path) == 1
    assert tables_of(spark, delta_engine).read(path).count() == 1


def test_uncommitted_files_are_never_read(spark, tmp_path: Path, delta_engine: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "t"
    tables_of(spark, delta_engine).write(frame(spark), str(path))
    # a job that died after writing its files but before its commit leaves this behind
    frame(spark).write.parquet(str(path / "data" / "orphan"))
    assert tables_of(spark, delta_engine).read(str(path)).count() == 3
    assert DeltaTable(str(path)).count() == 3


def test_parquet_and_csv(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pq_path = str(tmp_path / "p")
    tables_of(spark).write(frame(spark), pq_path, format="parquet", mode="overwrite")
    assertDataFrameEqual(tables_of(spark).read(pq_path, format="parquet"), frame(spark))
    with pytest.raises(TableError, match="need format delta"):
        tables_of(spark).write(frame(spark), pq_path, format="parquet", txn=("a", 1))
    csv = tmp_path / "c.csv"
    csv.write_text("a,b\n1,x\n2,y\n")
    got = tables_of(spark).read(str(csv), format="csv", options={"header": True}, schema="a INT, b STRING")
    assert [tuple(r) for r in got.orderBy("a").collect()] == [(1, "x"), (2, "y")]


def test_missing_paths_and_non_delta(spark, tmp_path: Path, delta_engine: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TableError, match="does not exist"):
        tables_of(spark, delta_engine).read(str(tmp_path / "nope.csv"), format="csv")
    (tmp_path / "plain").mkdir()
    with pytest.raises(TableError, match="is not a Delta table"):
        tables_of(spark, delta_engine).read(str(tmp_path / "plain"))


@pytest.mark.parametrize("bad", ["{tmp}/../x", "ftp://h/x", "{tmp}/t#frag", "file://host/{tmp}/t"])
def test_bad_paths_refused_before_io(spark, tmp_path: Path, bad: str) -> None:  # type: ignore[no-untyped-def]
    target = bad.format(tmp=tmp_path)
    before = sorted(p.name for p in tmp_path.parent.iterdir())
    with pytest.raises(PathError):
        tables_of(spark).write(frame(spark), target)
    with pytest.raises(PathError):
        tables_of(spark).read(target)
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == before
    assert list(tmp_path.iterdir()) == []


def test_newer_protocol_is_refused(spark, tmp_path: Path, delta_engine: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "t"
    tables_of(spark, delta_engine).write(frame(spark), str(path))
    log = path / "_delta_log" / "00000000000000000001.json"
    log.write_text(json.dumps({"protocol": {
        "minReaderVersion": 3, "minWriterVersion": 7,
        "readerFeatures": ["embedlibFutureFeature"], "writerFeatures": ["embedlibFutureFeature"]}}) + "\n")
    with pytest.raises(TableError, match="embedlibFutureFeature"):
        tables_of(spark, delta_engine).read(str(path))


def test_append_adds_new_columns_and_refuses_changed_types(spark, tmp_path: Path, delta_engine: str) -> None:  # type: ignore[no-untyped-def]
    from pyspark.sql import functions as F

    path = str(tmp_path / "t")
    tables_of(spark, delta_engine).write(frame(spark), path)
    # a later version of a job writes one more column (e.g. score_runs.inf_rows)
    tables_of(spark, delta_engine).write(frame(spark).withColumn("extra", F.lit(7)), path)
    got = tables_of(spark, delta_engine).read(path)
    assert "extra" in got.columns and got.count() == 6
    assert sorted(r["extra"] for r in got.collect() if r["extra"] is not None) == [7, 7, 7]
    with pytest.raises(TableError, match=r"column type\(s\) changed: x \(double in the table, string now\)"):
        tables_of(spark, delta_engine).write(frame(spark).withColumn("x", F.col("x").cast("string")), path)
    assert tables_of(spark, delta_engine).read(path).count() == 6


def test_failed_write_leaves_no_staged_files(spark, tmp_path: Path, delta_engine: str) -> None:  # type: ignore[no-untyped-def]
    from pyspark.sql import functions as F

    path = tmp_path / "t"
    tables_of(spark, delta_engine).write(frame(spark), str(path))
    staged = set(path.glob("data/*"))
    # (a column of raise_error alone has the void type, which the connector drops unevaluated)
    boom = frame(spark).withColumn("x", F.when(F.col("id") > 0, F.raise_error(F.lit("task failed on purpose")))
                                   .otherwise(F.col("x")))
    with pytest.raises(Exception, match="task failed on purpose"):
        tables_of(spark, delta_engine).write(boom, str(path))
    assert DeltaTable(str(path)).version() == 0 and tables_of(spark, delta_engine).read(str(path)).count() == 3
    if delta_engine == "delta-rs":  # its staging folder is cleaned up
        assert set(path.glob("data/*")) == staged


@pytest.mark.parametrize("engine_name", ENGINES)
def test_table_engine_contract(spark, tmp_path: Path, engine_name: str) -> None:  # type: ignore[no-untyped-def]
    """What every TableEngine must do: create, version, metadata, idempotent appends, schema
    evolution on append, overwrite, the data files of a table, and reads through the log."""
    from pyspark.sql import functions as F

    from embedlib.spark.tables.connector import ConnectorEngine
    from embedlib.spark.tables.delta_rs import DeltaRsEngine

    engine = {"delta-rs": DeltaRsEngine(), "connector": ConnectorEngine()}[engine_name]
    path = str(tmp_path / "t")

    def ids() -> list[int]:
        return sorted(r["id"] for r in engine.read(spark, path).select("id").collect())

    def write(df, **kw):  # type: ignore[no-untyped-def]
        return engine.write(spark, df, path, **{"mode": "append", "txn": None, "user_metadata": None,
                                                 "catalog": False, **kw})

    assert engine.version(spark, path) is None
    first = write(frame(spark), txn=("app", 1), user_metadata={"run": "a"})
    assert (first.committed, first.version, engine.version(spark, path)) == (True, 0, 0)
    assert {k: v for k, v in engine.commit_metadata(spark, path).items() if k != "embedlib_write_id"} == {"run": "a"}
    assert ids() == [1, 2, 3]
    again = write(frame(spark), txn=("app", 1))
    assert (again.committed, engine.version(spark, path), ids()) == (False, 0, [1, 2, 3])
    wider = frame(spark, ROWS[:1]).withColumn("id", F.lit(4).cast("bigint")).withColumn("extra", F.lit("e"))
    appended = write(wider, txn=("app", 2))
    assert appended.committed and appended.version == engine.version(spark, path) and appended.version >= 1
    read = engine.read(spark, path)
    assert "extra" in read.columns and ids() == [1, 2, 3, 4]
    assert {r["id"]: r["extra"] for r in read.collect()} == {1: None, 2: None, 3: None, 4: "e"}
    files = engine.data_files(spark, path, ("id", "s"))
    assert files is not None and len(files) >= 2
    assert all(Path(f.removeprefix("file:").removeprefix("//")).exists() for f in files)
    assert write(frame(spark, ROWS[:2]), mode="overwrite").committed
    assert ids() == [1, 2] and engine.version(spark, path) == appended.version + 1


@pytest.mark.parametrize(("first", "second"), [("delta-rs", "connector"), ("connector", "delta-rs")])
def test_interop_between_engines(spark, tmp_path: Path, first: str, second: str) -> None:  # type: ignore[no-untyped-def]
    """A table one engine wrote is read and appended by the other; a run id (app transaction)
    committed by one is not written again by the other; DESCRIBE HISTORY shows both commits'
    metadata; each engine reads the protocol and log versions the other wrote."""
    path = str(tmp_path / "t")
    made = tables_of(spark, first).write(frame(spark), path, txn=("run-a", 1), user_metadata={"by": first})
    assert made.committed and made.version == 0
    assertDataFrameEqual(tables_of(spark, second).read(path), frame(spark))
    assert tables_of(spark, second).version(path) == 0 and tables_of(spark, second).commit_metadata(path) == {"by": first}
    again = tables_of(spark, second).write(frame(spark), path, txn=("run-a", 1), user_metadata={"by": second})
    assert not again.committed and tables_of(spark, second).read(path).count() == 3
    more = tables_of(spark, second).write(frame(spark, ROWS[:1]), path, txn=("run-b", 1), user_metadata={"by": second})
    assert more.committed and more.version == 1
    assert tables_of(spark, first).read(path).count() == 4 and tables_of(spark, first).version(path) == 1
    assert tables_of(spark, first).commit_metadata(path) == {"by": second}
    assert not tables_of(spark, first).write(frame(spark), path, txn=("run-b", 1)).committed
    assert tables_of(spark, first).read(path).count() == 4
    history = spark.sql(f"DESCRIBE HISTORY delta.`{path}`").orderBy("version").collect()
    assert [r["version"] for r in history] == [0, 1]
    metadata = [json.loads(r["userMetadata"]) for r in history]
    for meta in metadata:  # the connector's write id (how it tells a skipped run id) aside
        meta.pop("embedlib_write_id", None)
    assert metadata == [{"by": first}, {"by": second}]
    assert DeltaTable(path).transaction_version("run-a") == 1
    assert DeltaTable(path).transaction_version("run-b") == 1
    protocol = DeltaTable(path).protocol()
    assert (protocol.min_reader_version, protocol.min_writer_version) <= (3, 7)


def test_connector_lists_files_only_when_raw_files_are_the_table(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The Arrow vocab engine may read a Delta table's files only when they hold exactly its rows:
    with deletion vectors (or a partition column among those read) the connector reads it."""
    from embedlib.spark.tables.connector import ConnectorEngine

    engine = ConnectorEngine()
    plain, dv, parts = (str(tmp_path / n) for n in ("plain", "dv", "parts"))
    frame(spark).select("id", "s").write.format("delta").save(plain)
    assert len(engine.data_files(spark, plain, ("id", "s")) or []) >= 1
    spark.sql(f"CREATE TABLE delta.`{dv}` (id BIGINT, s STRING) USING delta "
              "TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')")
    frame(spark).select("id", "s").write.format("delta").mode("append").save(dv)
    assert engine.data_files(spark, dv, ("id", "s")) is None
    frame(spark).select("id", "s").write.format("delta").partitionBy("s").save(parts)
    assert engine.data_files(spark, parts, ("id", "s")) is None
    assert len(engine.data_files(spark, parts, ("id",)) or []) >= 1


def test_a_local_session_replays_a_delta_log_in_few_tasks(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A local session embedlib starts rebuilds a table's snapshot (the connector's log replay) in
    LOCAL_DEFAULTS' partitions, not the connector's default 50 tiny tasks."""
    from embedlib.spark.session import LOCAL_DEFAULTS

    path = str(tmp_path / "t")
    tables_of(spark, "connector").write(frame(spark), path, txn=("run-a", 1))
    log = spark._jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, path)
    partitions = log.unsafeVolatileSnapshot().stateDS().rdd().getNumPartitions()
    assert partitions == int(LOCAL_DEFAULTS["spark.databricks.delta.snapshotPartitions"]) == 8
