"""The vocab job: real Adult data, real Spark, real Delta."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from embedlib.core.config import Config, load_config
from embedlib.core.vocab import (
    FIRST_INDEX,
    NULL_INDEX,
    OOV_INDEX,
    SchemaError,
    VocabError,
    Vocabulary,
    build_vocabulary_in_memory,
    normalize_arrow,
)
from embedlib.spark.vocab import build_vocabulary, load_vocabulary, run_vocab_job, write_vocabulary

from .conftest import adult_pandas, tables_of


def tiny_cfg(tmp_path: Path, *sets: str) -> Config:
    return load_config([], [f"output_dir={tmp_path}", "name=tiny", "source.path=unused.csv", *sets])


# --------------------------------------------------------------------- Adult, end to end


def test_adult_vocabulary_matches_independent_pandas_count(spark, adult_cfg: Config) -> None:  # type: ignore[no-untyped-def]
    built = run_vocab_job(spark, adult_cfg)
    vocab = Vocabulary.load_delta(adult_cfg.layout.vocab)  # read back without Spark
    assert vocab.to_arrow().equals(built.to_arrow())
    assert vocab.content_hash == built.content_hash
    pdf = adult_pandas()
    assert vocab.meta["row_count"] == len(pdf) == 32561
    min_count = adult_cfg.vocab.min_count
    for col in adult_cfg.columns.categorical:
        counts = pdf[col].value_counts(dropna=True)
        kept = counts[counts >= min_count]
        expected = sorted(kept.items(), key=lambda vc: (-vc[1], vc[0]))
        cv = vocab[col]
        assert list(cv.values) == [v for v, _ in expected], col
        assert list(cv.counts) == [c for _, c in expected], col
        assert cv.null_count == int(pdf[col].isna().sum()), col
        assert cv.oov_count == int(counts[counts < min_count].sum()), col
    # Adult has nulls ('?') in three columns and one singleton country in the OOV row
    assert vocab["workclass"].null_count == 1836
    assert vocab["native-country"].oov_count == 1
    assert "Holand-Netherlands" not in vocab["native-country"].values
    for col in adult_cfg.columns.numeric:
        st = vocab.numeric[col]
        x = pdf[col].astype(float)
        if col in adult_cfg.columns.log1p:
            x = np.sign(x) * np.log1p(np.abs(x))
        assert st.mean == pytest.approx(x.mean(), rel=1e-12)
        assert st.std == pytest.approx(x.std(ddof=0), rel=1e-9)
        assert (st.min, st.max) == (pytest.approx(x.min()), pytest.approx(x.max()))
        assert st.nulls == 0 and st.nans == 0


def test_adult_partitioning_does_not_change_the_table(spark, adult_cfg: Config) -> None:  # type: ignore[no-untyped-def]
    df = tables_of(spark).read_source(adult_cfg.source).cache()
    built = [
        build_vocabulary(spark, df.repartition(n), adult_cfg, source="adult")
        for n in (1, 3, 7)
    ]
    df.unpersist()
    first = built[0]
    for other in built[1:]:
        assert other.to_arrow().equals(first.to_arrow())
        assert other.content_hash == first.content_hash


# ------------------------------------------------------------------------ tiny literals


def test_cuts_and_reserved_indices(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rows = [("b",)] * 3 + [("a",)] * 3 + [("c",)] * 2 + [("d",)] + [(None,)] * 2
    df = spark.createDataFrame(rows, "k STRING")
    cfg = tiny_cfg(tmp_path, "columns.categorical=[k]", "vocab.min_count=2")
    cv = build_vocabulary(spark, df, cfg, source="t")["k"]
    # ties broken by value ascending; d (count 1) below min_count goes to OOV
    assert cv.values == ("a", "b", "c") and cv.counts == (3, 3, 2)
    assert (cv.null_count, cv.oov_count) == (2, 1)
    cfg = tiny_cfg(tmp_path, "columns.categorical=[k]", "vocab.min_count=1", "vocab.max_size=2")
    cv = build_vocabulary(spark, df, cfg, source="t")["k"]
    assert cv.values == ("a", "b") and cv.oov_count == 3 and cv.null_count == 2


def test_lookup_convention_null_oov_and_values(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    long_value = "x" * 10_000
    rows = [("ü€ß",), ("ü€ß",), ("",), ("",), (long_value,), (long_value,), (None,)]
    df = spark.createDataFrame(rows, "k STRING")
    cfg = tiny_cfg(tmp_path, "columns.categorical=[k]")
    vocab = build_vocabulary(spark, df, cfg, source="t")
    write_vocabulary(tables_of(spark), vocab, cfg.layout.vocab)
    back = load_vocabulary(tables_of(spark), cfg.layout.vocab)
    assert set(back["k"].values) == {"ü€ß", "", long_value}
    got = back.lookup("k", pa.array(["", "ü€ß", None, "never-seen", long_value, "ü€ß "]))
    order = {v: i + FIRST_INDEX for i, v in enumerate(vocab["k"].values)}
    assert got.tolist() == [order[""], order["ü€ß"], NULL_INDEX, OOV_INDEX, order[long_value], OOV_INDEX]
    assert got.dtype == np.int32
    table = back.to_arrow().to_pylist()
    reserved = [(r["index"], r["value"], r["count"]) for r in table if r["index"] < FIRST_INDEX]
    assert reserved == [(NULL_INDEX, None, 1), (OOV_INDEX, None, 0)]


def test_normalisation_options_agree_between_spark_and_arrow(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rows = [(" Foo ",), ("foo",), ("FOO",), ("\tfoo",), ("Bar",), ("bar ",)]
    df = spark.createDataFrame(rows, "k STRING")
    cfg = tiny_cfg(tmp_path, "columns.categorical=[k]", "vocab.trim=true", "vocab.lowercase=true",
                   "vocab.min_count=1")
    vocab = build_vocabulary(spark, df, cfg, source="t")
    assert dict(zip(vocab["k"].values, vocab["k"].counts)) == {"foo": 3, "bar": 2, "\tfoo": 1}
    raw = pa.array([r[0] for r in rows])
    assert normalize_arrow(raw, trim=True, lowercase=True).to_pylist() == [
        "foo", "foo", "foo", "\tfoo", "bar", "bar"]
    assert vocab.lookup("k", raw).tolist() == [2, 2, 2, 4, 3, 3]


def test_integer_categorical_and_numeric_stats(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rows = [(7, 1.0), (7, float("nan")), (8, None), (8, 3.0), (None, 5.0)]
    df = spark.createDataFrame(rows, "code INT, x DOUBLE")
    cfg = tiny_cfg(tmp_path, "columns.categorical=[code]", "columns.numeric=[x]", "vocab.min_count=1")
    vocab = build_vocabulary(spark, df, cfg, source="t")
    assert vocab["code"].values == ("7", "8")
    assert vocab.lookup("code", pa.array([8, 7, None, 9], pa.int32())).tolist() == [3, 2, 0, 1]
    st = vocab.numeric["x"]
    assert (st.rows, st.nulls, st.nans) == (5, 1, 1)
    assert st.mean == pytest.approx(3.0) and st.std == pytest.approx(np.std([1.0, 3.0, 5.0]))
    assert (st.min, st.max) == (1.0, 5.0)


def test_infinite_numerics_follow_policy(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    df = spark.createDataFrame([(1.0,), (float("inf"),), (float("-inf"),), (2.0,)], "x DOUBLE")
    cfg = tiny_cfg(tmp_path, "columns.numeric=[x]")
    with pytest.raises(VocabError, match=r"'x'.*2 infinite value\(s\) \(1 \+inf, 1 -inf\)"):
        build_vocabulary(spark, df, cfg, source="t")
    cfg = tiny_cfg(tmp_path, "columns.numeric=[x]", "vocab.inf_policy=null")
    st = build_vocabulary(spark, df, cfg, source="t").numeric["x"]
    assert (st.nulls, st.pos_inf, st.neg_inf, st.mean) == (2, 1, 1, 1.5)


def test_all_null_and_constant_columns_build_with_warning(spark, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    df = spark.createDataFrame([(None, "same", 4.0)] * 3, "n STRING, s STRING, c DOUBLE")
    cfg = tiny_cfg(tmp_path, "columns.categorical=[n, s]", "columns.numeric=[c]")
    with caplog.at_level(logging.WARNING, logger="embedlib"):
        vocab = build_vocabulary(spark, df, cfg, source="t")
    assert vocab["n"].values == () and vocab["n"].null_count == 3
    assert vocab["s"].values == ("same",)
    assert vocab.numeric["c"].std == 0.0 and vocab.numeric["c"].scale == 1.0
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "'n' has 0 value(s)" in warned and "'s' has 1 value(s)" in warned and "'c' is constant" in warned


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("ddl", "sets", "message"),
    [
        ("a STRING", ["columns.categorical=[a, zz]"], r"lacks column\(s\) zz; it has: a"),
        ("a MAP<STRING,INT>", ["columns.categorical=[a]"], "categorical column 'a' .* map<string,int>"),
        ("a STRUCT<x: INT>", ["columns.categorical=[a]"], "categorical column 'a' .* struct"),
        ("a BINARY", ["columns.categorical=[a]"], "categorical column 'a' .* binary"),
        ("a STRING", ["columns.numeric=[a]"], "numeric column 'a' .* string, which is not numeric"),
        ("a STRING", [], "no columns declared"),
    ],
)
def test_bad_input_fails_before_any_spark_job(spark, tmp_path: Path, ddl: str, sets: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    df = spark.createDataFrame([], ddl)
    cfg = tiny_cfg(tmp_path, *sets)
    sc = spark.sparkContext
    sc.setJobGroup("bad-input", "bad input must not run a job")
    try:
        with pytest.raises(SchemaError, match=message):
            run_vocab_job_on(spark, df, cfg)
        assert list(sc.statusTracker().getJobIdsForGroup("bad-input")) == []
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
    assert not Path(cfg.layout.vocab).exists()


def run_vocab_job_on(spark, df, cfg: Config) -> None:  # type: ignore[no-untyped-def]
    write_vocabulary(tables_of(spark), build_vocabulary(spark, df, cfg, source="t"), cfg.layout.vocab)


def test_empty_source_is_an_error_and_writes_nothing(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    df = spark.createDataFrame([], "a STRING, x DOUBLE")
    cfg = tiny_cfg(tmp_path, "columns.categorical=[a]", "columns.numeric=[x]")
    with pytest.raises(VocabError, match="has no rows"):
        run_vocab_job_on(spark, df, cfg)
    assert not Path(cfg.layout.vocab).exists()


def test_duplicate_declaration_is_a_config_error(tmp_path: Path) -> None:
    from embedlib.core.config import ConfigError

    with pytest.raises(ConfigError, match="declares column 'a' twice"):
        tiny_cfg(tmp_path, "columns.categorical=[a, b, a]")


# ------------------------------------------------------------------ the two engines agree


def test_arrow_and_spark_engines_give_the_same_table(spark, adult_cfg: Config, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                     delta_engine: str) -> None:
    df = tables_of(spark, delta_engine).read_source(adult_cfg.source)
    parquet = str(tmp_path / "adult_pq")
    df.repartition(5).write.parquet(parquet)
    delta = str(tmp_path / "adult_delta")
    tables_of(spark, delta_engine).write(df.repartition(3), delta)
    reference = build_vocabulary(spark, df, adult_cfg, source="adult")
    for path, fmt in ((parquet, "parquet"), (delta, "delta")):
        cfg = load_config([], [f"output_dir={tmp_path}", f"source.path={path}", f"source.format={fmt}",
                               f"columns.categorical={list(adult_cfg.columns.categorical)}",
                               f"columns.numeric={list(adult_cfg.columns.numeric)}",
                               f"columns.log1p={list(adult_cfg.columns.log1p)}"])
        files = tables_of(spark, delta_engine).source_files(cfg.source, cfg.feature_columns)
        assert files is not None and len(files) == (5 if fmt == "parquet" else 3)
        src = tables_of(spark, delta_engine).read_source(cfg.source)
        arrow = build_vocabulary(spark, src, cfg, source="adult", files=files)
        rows = build_vocabulary(spark, src, replace(cfg, vocab=replace(cfg.vocab, engine="spark")), source="adult")
        assert arrow.to_arrow().equals(reference.to_arrow()), fmt
        assert arrow.content_hash == rows.content_hash == reference.content_hash, fmt
        in_memory = build_vocabulary_in_memory(src.toArrow(), cfg, source="adult")  # embedlib.fit's, no Spark
        assert in_memory.to_arrow().equals(reference.to_arrow()) and in_memory.content_hash == reference.content_hash
        for col, st in reference.numeric.items():
            assert arrow.numeric[col].mean == pytest.approx(st.mean, rel=1e-12)
            assert arrow.numeric[col].std == pytest.approx(st.std, rel=1e-9)
            assert (arrow.numeric[col].min, arrow.numeric[col].max) == (st.min, st.max)


def test_arrow_engine_splits_a_large_file_by_row_groups(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import pyarrow.parquet as pq
    from pyspark.sql import functions as F

    from embedlib.core.vocab.arrow_engine import work_units
    from embedlib.spark.vocab.spark_engine import units_frame

    slots = spark.sparkContext.defaultParallelism * 2
    assert work_units(["a", "b"], 4) == [("a", 0, 2), ("a", 1, 2), ("b", 0, 2), ("b", 1, 2)]
    assert work_units([f"f{i}" for i in range(5)], 4) == [(f"f{i}", 0, 1) for i in range(5)]
    rng = np.random.default_rng(3)
    table = pa.table({"s": pa.array([None if v == 0 else f"v{v}" for v in rng.integers(0, 40, 7_000)]),
                      "x": rng.normal(size=7_000)})
    (tmp_path / "one").mkdir()
    pq.write_table(table, tmp_path / "one" / "part-0.parquet", row_group_size=1_000)  # 7 row groups, 1 file
    cfg = load_config([], [f"output_dir={tmp_path}", f"source.path={tmp_path / 'one'}", "source.format=parquet",
                           "columns.categorical=[s]", "columns.numeric=[x]", "vocab.min_count=1"])
    files = tables_of(spark).source_files(cfg.source, cfg.feature_columns)
    assert files is not None and len(files) == 1
    units = units_frame(spark, files)  # what the engine's tasks read: one file, a part per slot, one per task
    per_task = units.groupBy(F.spark_partition_id().alias("task")).agg(F.count("*").alias("n"), F.max("parts"))
    assert sorted(tuple(r) for r in per_task.collect()) == [(k, 1, slots) for k in range(slots)]
    two = units_frame(spark, files * 2).groupBy(F.spark_partition_id()).count().collect()  # the bug's shape: 2 files
    assert len(two) == slots and {r["count"] for r in two} == {1}
    arrow = build_vocabulary(spark, tables_of(spark).read_source(cfg.source), cfg, source="t", files=files)
    in_memory = build_vocabulary_in_memory(table, cfg, source="t")  # every row group counted once
    assert arrow.to_arrow().equals(in_memory.to_arrow())
    assert arrow["s"].null_count == in_memory["s"].null_count == sum(v is None for v in table["s"].to_pylist())
    assert arrow.numeric["x"].mean == pytest.approx(float(np.mean(table["x"])), rel=1e-12)


def test_arrow_engine_on_tiny_edge_cases(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rows = [(7, " a", 1.0), (7, "A", float("nan")), (8, None, None), (None, "a ", 3.0), (8, "", 5.0)]
    df = spark.createDataFrame(rows, "code INT, s STRING, x DOUBLE")
    path = str(tmp_path / "p")
    df.repartition(2).write.parquet(path)
    base = [f"output_dir={tmp_path}", f"source.path={path}", "source.format=parquet",
            "columns.categorical=[code, s]", "columns.numeric=[x]", "vocab.min_count=1",
            "vocab.trim=true", "vocab.lowercase=true"]

    a_cfg = load_config([], base)
    s_cfg = load_config([], [*base, "vocab.engine=spark"])
    src = tables_of(spark).read_source(a_cfg.source)
    arrow = build_vocabulary(spark, src, a_cfg, source="t", files=tables_of(spark).source_files(a_cfg.source, a_cfg.feature_columns))
    rows_v = build_vocabulary(spark, src, s_cfg, source="t")
    assert arrow.to_arrow().equals(rows_v.to_arrow())
    in_memory = build_vocabulary_in_memory(src.toArrow(), a_cfg, source="t")
    assert in_memory.to_arrow().equals(arrow.to_arrow()) and in_memory.numeric == arrow.numeric
    assert in_memory.meta["source_types"] == arrow.meta["source_types"]
    assert arrow["s"].values == ("a", "") and arrow["s"].counts == (3, 1)
    assert arrow.numeric == rows_v.numeric
    with pytest.raises(VocabError, match="vocab.engine=arrow needs a Parquet or Delta path"):
        build_vocabulary(spark, src, load_config([], [*base, "vocab.engine=arrow"]), source="t")
