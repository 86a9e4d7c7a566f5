"""Tables: Delta through delta-rs (no connector here), Parquet, CSV, idempotent appends."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from pyspark.testing import assertDataFrameEqual

from embedlib.layout import PathError
from embedlib.spark import delta_connector_available
from embedlib.tables import (
    TableError,
    commit_metadata,
    delta_version,
    read_table,
    write_table,
)

ROWS = [
    (1, "a", 1.5, ["x", "y"], {"k": 1.0}, dt.datetime(2024, 1, 2, 3, 4, 5)),
    (2, "ü€", None, [], {}, dt.datetime(2024, 5, 6, 7, 8, 9)),
    (3, "", -2.0, None, None, None),
]
DDL = "id BIGINT, s STRING, x DOUBLE, arr ARRAY<STRING>, m MAP<STRING, DOUBLE>, ts TIMESTAMP"


def frame(spark, rows=ROWS):  # type: ignore[no-untyped-def]
    return spark.createDataFrame(rows, DDL)


def test_this_machine_has_no_connector(spark) -> None:  # type: ignore[no-untyped-def]
    assert delta_connector_available(spark) is False


def test_delta_round_trip_through_deltalake(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "t")
    result = write_table(spark, frame(spark), path, mode="append", user_metadata={"who": "test"})
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
    assert commit_metadata(spark, path) == {"who": "test"}
    assertDataFrameEqual(read_table(spark, path), frame(spark))


def test_idempotent_append(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "t")
    first = write_table(spark, frame(spark), path, txn=("run-a", 1))
    again = write_table(spark, frame(spark), path, txn=("run-a", 1))
    assert first.committed and not again.committed
    assert DeltaTable(path).count() == 3
    assert DeltaTable(path).transaction_version("run-a") == 1
    newer = write_table(spark, frame(spark), path, txn=("run-a", 2))
    other_app = write_table(spark, frame(spark), path, txn=("run-b", 1))
    assert newer.committed and other_app.committed
    assert DeltaTable(path).count() == 9
    older = write_table(spark, frame(spark), path, txn=("run-a", 1))
    assert not older.committed and DeltaTable(path).count() == 9
    # a skipped write leaves no data files behind
    data_dirs = list((tmp_path / "t" / "data").iterdir())
    assert len(data_dirs) == 3


def test_overwrite_replaces_rows(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "t")
    write_table(spark, frame(spark), path)
    write_table(spark, frame(spark, ROWS[:1]), path, mode="overwrite")
    assert DeltaTable(path).count() == 1
    assert delta_version(spark, path) == 1
    assert read_table(spark, path).count() == 1


def test_uncommitted_files_are_never_read(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "t"
    write_table(spark, frame(spark), str(path))
    # a job that died after writing its files but before its commit leaves this behind
    frame(spark).write.parquet(str(path / "data" / "orphan"))
    assert read_table(spark, str(path)).count() == 3
    assert DeltaTable(str(path)).count() == 3


def test_parquet_and_csv(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pq_path = str(tmp_path / "p")
    write_table(spark, frame(spark), pq_path, format="parquet", mode="overwrite")
    assertDataFrameEqual(read_table(spark, pq_path, format="parquet"), frame(spark))
    with pytest.raises(TableError, match="need format delta"):
        write_table(spark, frame(spark), pq_path, format="parquet", txn=("a", 1))
    csv = tmp_path / "c.csv"
    csv.write_text("a,b\n1,x\n2,y\n")
    got = read_table(spark, str(csv), format="csv", options={"header": True}, schema="a INT, b STRING")
    assert [tuple(r) for r in got.orderBy("a").collect()] == [(1, "x"), (2, "y")]


def test_missing_paths_and_non_delta(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TableError, match="does not exist"):
        read_table(spark, str(tmp_path / "nope.csv"), format="csv")
    (tmp_path / "plain").mkdir()
    with pytest.raises(TableError, match="is not a Delta table"):
        read_table(spark, str(tmp_path / "plain"))


@pytest.mark.parametrize("bad", ["{tmp}/../x", "ftp://h/x", "{tmp}/t#frag", "file://host/{tmp}/t"])
def test_bad_paths_refused_before_io(spark, tmp_path: Path, bad: str) -> None:  # type: ignore[no-untyped-def]
    target = bad.format(tmp=tmp_path)
    before = sorted(p.name for p in tmp_path.parent.iterdir())
    with pytest.raises(PathError):
        write_table(spark, frame(spark), target)
    with pytest.raises(PathError):
        read_table(spark, target)
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == before
    assert list(tmp_path.iterdir()) == []


def test_newer_protocol_is_refused(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "t"
    write_table(spark, frame(spark), str(path))
    log = path / "_delta_log" / "00000000000000000001.json"
    log.write_text(json.dumps({"protocol": {
        "minReaderVersion": 3, "minWriterVersion": 7,
        "readerFeatures": ["deletionVectors"], "writerFeatures": ["deletionVectors"]}}) + "\n")
    with pytest.raises(TableError, match="deletionVectors"):
        read_table(spark, str(path))


def test_append_adds_new_columns_and_refuses_changed_types(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from pyspark.sql import functions as F

    path = str(tmp_path / "t")
    write_table(spark, frame(spark), path)
    # a later version of a job writes one more column (e.g. score_runs.inf_rows)
    write_table(spark, frame(spark).withColumn("extra", F.lit(7)), path)
    got = read_table(spark, path)
    assert "extra" in got.columns and got.count() == 6
    assert sorted(r["extra"] for r in got.collect() if r["extra"] is not None) == [7, 7, 7]
    with pytest.raises(TableError, match=r"column type\(s\) changed: x \(double in the table, string now\)"):
        write_table(spark, frame(spark).withColumn("x", F.col("x").cast("string")), path)
    assert read_table(spark, path).count() == 6


def test_failed_write_leaves_no_staged_files(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from pyspark.sql import functions as F

    path = tmp_path / "t"
    write_table(spark, frame(spark), str(path))
    staged = set(path.glob("data/*"))
    boom = frame(spark).withColumn("x", F.raise_error(F.lit("task failed on purpose")))
    with pytest.raises(Exception, match="task failed on purpose"):
        write_table(spark, boom, str(path))
    assert set(path.glob("data/*")) == staged and DeltaTable(str(path)).version() == 0


def _engines() -> list[str]:
    """The Delta engines this test session can run (the connector needs its jars: issue 14)."""
    return ["delta-rs"]


@pytest.mark.parametrize("engine_name", _engines())
def test_table_engine_contract(spark, tmp_path: Path, engine_name: str) -> None:  # type: ignore[no-untyped-def]
    """What every TableEngine must do: create, version, metadata, idempotent appends, schema
    evolution on append, overwrite, the data files of a table, and reads through the log."""
    from pyspark.sql import functions as F

    from embedlib.tables import engine_for
    from embedlib.tables.delta_rs import DeltaRsEngine

    engine = {"delta-rs": DeltaRsEngine()}[engine_name]
    assert engine_for(spark).name == engine_name  # the session's own choice
    path = str(tmp_path / "t")

    def ids() -> list[int]:
        return sorted(r["id"] for r in engine.read(spark, path).select("id").collect())

    def write(df, **kw):  # type: ignore[no-untyped-def]
        return engine.write(spark, df, path, **{"mode": "append", "txn": None, "user_metadata": None,
                                                 "catalog": False, **kw})

    assert engine.version(spark, path) is None
    first = write(frame(spark), txn=("app", 1), user_metadata={"run": "a"})
    assert (first.committed, first.version, engine.version(spark, path)) == (True, 0, 0)
    assert engine.commit_metadata(spark, path) == {"run": "a"}
    assert ids() == [1, 2, 3]
    again = write(frame(spark), txn=("app", 1))
    assert (again.committed, engine.version(spark, path), ids()) == (False, 0, [1, 2, 3])
    wider = frame(spark, ROWS[:1]).withColumn("id", F.lit(4).cast("bigint")).withColumn("extra", F.lit("e"))
    appended = write(wider, txn=("app", 2))
    assert appended.committed and appended.version == engine.version(spark, path) and appended.version >= 1
    read = engine.read(spark, path)
    assert "extra" in read.columns and ids() == [1, 2, 3, 4]
    assert {r["id"]: r["extra"] for r in read.collect()} == {1: None, 2: None, 3: None, 4: "e"}
    files = engine.data_files(path, ("id", "s"))
    assert files is not None and len(files) >= 2 and all(Path(f.removeprefix("file://")).exists() for f in files)
    assert write(frame(spark, ROWS[:2]), mode="overwrite").committed
    assert ids() == [1, 2] and engine.version(spark, path) == appended.version + 1
