"""Bad input and bad configuration: a clear error naming what is wrong, or a documented, counted handling.

Never a stack trace without a message, never silent NaN scores. Errors raised inside Spark tasks
reach the user through `embedlib.cli.main` as one line (exit 2), with no Java/Python stack trace on
stderr unless `--log-level DEBUG`.
"""

from __future__ import annotations

import collections
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from embedlib.cli import main
from embedlib.core.bundle import load_bundle
from embedlib.core.config import ConfigError, load_config
from embedlib.core.vocab import FIRST_INDEX, OOV_INDEX, SchemaError, VocabError, Vocabulary
from embedlib.reports import format_reason
from embedlib.spark.score import run_score_job, score_frame
from embedlib.spark.vocab import build_vocabulary

from .conftest import ADULT_TEST, ROOT, adult_args, adult_pandas, copy_run, spark_sets

# ------------------------------------------------------------------------------ config


def conf(*sets: str):  # type: ignore[no-untyped-def]
    return load_config([], ["source.path=x.csv", "columns.categorical=[a]", *sets])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.batch_size=0", "train.batch_size"),
        ("train.batch_size=-512", "train.batch_size"),
        ("train.epochs=0", "train.epochs"),
        ("train.num_workers=-1", "train.num_workers"),
        ("train.shuffle_buffer=0", "train.shuffle_buffer"),
        ("train.max_rows=0", "train.max_rows"),
        ("train.num_shards=-2", "train.num_shards"),
        ("train.lazy_above=0", "train.lazy_above"),
        ("train.max_restarts=-1", "train.max_restarts"),
        ("train.sample_fraction=1.5", "train.sample_fraction"),
        ("train.validation_fraction=0", "train.validation_fraction"),
        ("train.learning_rate=-0.1", "train.learning_rate"),
        ("train.patience=-1", "train.patience"),
        ("model.bottleneck=0", "model.bottleneck"),
        ("model.hidden=[64, -1]", "model.hidden"),
        ("model.hidden=[]", "model.hidden"),
        ("model.max_embedding_dim=0", "model.max_embedding_dim"),
        ("model.embedding_dims={a: 0}", "model.embedding_dims.a"),
        ("model.corruption=1.0", "model.corruption"),
        ("score.batch_size=0", "score.batch_size"),
        ("score.top_reasons=-1", "score.top_reasons"),
        ("score.threshold_quantile=1.0", "score.threshold_quantile"),
        ("vocab.min_count=-3", "vocab.min_count"),
        ("vocab.max_size=0", "vocab.max_size"),
    ],
)
def test_negative_or_zero_sizes_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"--set: key '{key}' must be"):
        conf(override)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["train.max_rows=1000", "train.sample_fraction=0.5"],
         r"key 'train\.max_rows' and train\.sample_fraction are both set"),
        (["columns.numeric=[a]"], r"key 'columns\.numeric' declares column 'a' in both columns\.categorical"),
        (["columns.id=[a]"], r"key 'columns\.id' names 'a', which is also in columns\.categorical"),
        (["columns.id=[bundle_id]"], r"key 'columns\.id' names 'bundle_id', a column embedlib writes itself"),
        (["vocab.engine=arrow"], r"key 'vocab\.engine' is 'arrow'.* but source\.format=csv is set"),
        (["score.output=/tmp/o", "features.output=/tmp/o/"],
         r"key 'score\.output' is the same table as features\.output"),
        (["output_dir=/tmp/r", "name=n", "score.output=/tmp/r/n/vocab"],
         r"key 'score\.output' is the same table as vocab"),
    ],
)
def test_conflicting_options_name_both_keys(sets: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        conf(*sets)


# ---------------------------------------------------------------------- min_count > rows


def test_min_count_above_row_count_is_an_error(spark, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    df = spark.createDataFrame([("a", "u1"), ("a", "u2"), ("b", "u3")], "k STRING, u STRING")
    cfg = load_config([], [f"output_dir={tmp_path}", "source.path=t.csv", "columns.categorical=[k, u]",
                           "vocab.min_count=4"])
    with pytest.raises(VocabError, match=r"vocab\.min_count=4 is larger than the 3 row\(s\) of t: every "
                                         r"categorical value would go to the out-of-vocabulary row"):
        build_vocabulary(spark, df, cfg, source="t")
    # within the row count, a column whose every value is rarer than min_count is built, with a warning
    cfg = load_config([], [f"output_dir={tmp_path}", "source.path=t.csv", "columns.categorical=[k, u]",
                           "vocab.min_count=2"])
    with caplog.at_level(logging.WARNING, logger="embedlib"):
        vocab = build_vocabulary(spark, df, cfg, source="t")
    assert vocab["u"].values == () and vocab["u"].oov_count == 3
    assert ("categorical column 'u' has 0 value(s) in its vocabulary (its 3 non-null value(s) are all rarer "
            "than vocab.min_count=2)") in caplog.text


# ------------------------------------------------------------ strings in a numeric CSV column


def test_unparsable_csv_number_names_column_and_value(spark, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    """Decision: a CSV value that does not parse as its schema type is an error (CSV reads are
    FAILFAST), naming the column and an example; source.options.mode=PERMISSIVE reads such values as
    nulls, counted as missing in the vocabulary (and in score_runs.null_rate)."""
    csv = tmp_path / "people.csv"
    csv.write_text("age,city\n30,Oslo\n41,Lima\nabc,Oslo\n35,Lima\n")
    args = ["vocab", "--set", f"output_dir={tmp_path}", "--set", "name=csv", "--set", f"source.path={csv}",
            "--set", "source.options={header: true}", "--set", "source.schema=age INT, city STRING",
            "--set", "columns.categorical=[city]", "--set", "columns.numeric=[age]"]
    assert main(args) == 2
    assert "column 'age' holds 1 value(s) that are not INT as the schema (source.schema) says, e.g. 'abc'" \
        in caplog.text
    assert "Traceback" not in caplog.text and "\tat org.apache" not in caplog.text
    assert not (tmp_path / "csv" / "vocab").exists()
    assert main([*args, "--set", "source.options.mode=PERMISSIVE"]) == 0
    age = Vocabulary.load_delta(str(tmp_path / "csv" / "vocab")).numeric["age"]
    assert (age.rows, age.nulls, age.mean) == (4, 1, pytest.approx(106 / 3))
    # a record with a missing field is refused too (PERMISSIVE would fill in a null silently)
    csv.write_text("age,city\n30,Oslo\n41\n")
    caplog.clear()
    assert main(args) == 2
    assert "Malformed records are detected in record parsing: [41,null]. Fix the record" in caplog.text


# ---------------------------------------------------------- different types across files


@pytest.fixture()
def mixed_parquet(tmp_path: Path) -> Path:
    """One source directory, column x int64 in one file and string in the other."""
    src = tmp_path / "mixed"
    src.mkdir()
    pq.write_table(pa.table({"x": pa.array([1, 2, 2], pa.int64()), "y": ["a", "b", "a"]}), src / "part-0.parquet")
    pq.write_table(pa.table({"x": pa.array(["2", "z", "z"]), "y": ["a", "b", "b"]}), src / "part-1.parquet")
    return src


@pytest.mark.parametrize("engine", ["auto", "spark"])
def test_column_types_differ_between_files(spark, tmp_path: Path, mixed_parquet: Path, engine: str,  # type: ignore[no-untyped-def]
                                           caplog) -> None:
    code = main(["vocab", "--set", f"output_dir={tmp_path}", "--set", f"source.path={mixed_parquet}",
                 "--set", "source.format=parquet", "--set", "columns.categorical=[x, y]",
                 "--set", f"vocab.engine={engine}"])
    assert code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    line = errors[0]
    assert "\n" not in line and "part-" in line and str(mixed_parquet) in line
    assert "must agree on each column's type" in line
    if engine == "auto":  # arrow engine: every file's footer checked on the executors
        assert "column 'x' is string in file" in line or "column 'x' is int64 in file" in line
    else:  # Spark's reader: its error class, explained
        assert "Parquet column [x]" in line
    assert not (tmp_path / "embedlib" / "vocab").exists()


# --------------------------------------------------------------------- ±inf at scoring


def parquet_rows(frame: pd.DataFrame, path: Path) -> list[str]:
    """Write ``frame`` as a Parquet score source; the --set arguments that select it."""
    frame.to_parquet(path, index=False)
    return ["--set", f"score.source={path}", "--set", "source.format=parquet", "--set", "source.schema=null"]


def test_infinite_numeric_at_scoring_is_one_line(spark, adult_trained, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    cfg, _ = adult_trained
    rows = adult_pandas(ADULT_TEST).head(200)
    rows["age"] = rows["age"].astype(float)
    rows.loc[3, "age"] = np.inf
    out = tmp_path / "run"
    copy_run(cfg, out)
    with caplog.at_level(logging.INFO):
        code = main(["score", *adult_args(out), *parquet_rows(rows, tmp_path / "inf.parquet")])
    assert code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["score failed: numeric column 'age' has 1 infinite value(s) in one batch and the "
                      "vocabulary's inf_policy is 'error'; clean them, or rebuild the vocabulary (and retrain) "
                      "with vocab.inf_policy=null to treat them as missing"]
    assert "Traceback" not in caplog.text
    # no commit: neither table exists (Spark may have left an uncommitted staging folder, never read)
    assert not DeltaTable.is_deltatable(str(out / cfg.name / "scores"))
    assert not (out / cfg.name / "score_runs").exists()


@pytest.mark.launch
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_task_failure_leaves_no_stack_trace_on_stderr(adult_trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The same failure in a fresh process: stderr has the one line, no Java or Python trace."""
    cfg, _ = adult_trained
    rows = adult_pandas(ADULT_TEST).head(50)
    rows["age"] = rows["age"].astype(float)
    rows.loc[[1, 7], "age"] = -np.inf
    out = tmp_path / "run"
    copy_run(cfg, out)
    args = ["score", *adult_args(out), *parquet_rows(rows, tmp_path / "inf.parquet"),
            "--set", "spark.master=local[1]", *spark_sets()]
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    proc = subprocess.run([sys.executable, "-m", "embedlib.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=280)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "ERROR embedlib: score failed: numeric column 'age' has 2 infinite value(s)" in proc.stderr
    for trace in ("Traceback", "\tat org.apache", "\tat java.", "PythonException", "Py4JJavaError"):
        assert trace not in proc.stderr, proc.stderr[-3000:]
    assert proc.stdout == ""


def _divide_by_zero(batches):  # type: ignore[no-untyped-def]
    for batch in batches:
        yield batch
        raise ZeroDivisionError("division by zero")


def test_other_task_failures_are_one_line_exit_1(spark) -> None:  # type: ignore[no-untyped-def]
    """A non-embedlib error in a task (a bug, not bad input): exit 1, its last traceback line."""
    from embedlib.spark.failures import explain

    with pytest.raises(Exception) as err:
        spark.range(4).mapInArrow(_divide_by_zero, "id LONG").collect()
    assert "Traceback" in str(err.value)  # what Spark hands over ...
    failure = explain(err.value, spark)
    assert (failure.message, failure.exit_code) == ("ZeroDivisionError: division by zero", 1)  # ... what we say


# ------------------------------------------------------------ schema changed since training


def test_schema_changed_since_training_names_both_types(spark, adult_trained, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    from pyspark.sql import functions as F

    cfg, result = adult_trained
    bundle = load_bundle(result.bundle_path)
    assert bundle.manifest["source_types"]["sex"] == "string" and bundle.manifest["source_types"]["age"] == "int"
    df = spark.createDataFrame(adult_pandas(ADULT_TEST).head(40))
    became_int = df.withColumn("sex", F.when(F.col("sex") == "Male", 1).otherwise(0))
    with pytest.raises(SchemaError, match="categorical column 'sex' of source is int now but was string when "
                                          "the vocabulary was built; cast it back to string"):
        score_frame(spark, became_int, bundle, ids=())
    became_text = df.withColumn("age", F.col("age").cast("string"))
    with pytest.raises(SchemaError, match="numeric column 'age' of source is string now but was int"):
        score_frame(spark, became_text, bundle, ids=())
    with pytest.raises(SchemaError, match=r"lacks column\(s\) occupation; .* \(the model was trained with "
                                          r"occupation string\)"):
        score_frame(spark, df.drop("occupation"), bundle, ids=())
    # a numeric widened from int to double is still a number: accepted, same scores
    widened = df.withColumn("age", F.col("age").cast("double"))
    a = [r["anomaly_score"] for r in score_frame(spark, widened, bundle, ids=()).collect()]
    b = [r["anomaly_score"] for r in score_frame(spark, df, bundle, ids=()).collect()]
    assert a == b
    # the same through the CLI, on a CSV whose schema now reads age as text: exit 2, nothing written
    out = tmp_path / "run"
    copy_run(cfg, out)
    text_age = cfg.source.schema.replace("age INT", "age STRING")
    assert main(["score", *adult_args(out), "--set", f"score.source={ADULT_TEST}",
                 "--set", f"source.schema={text_age}"]) == 2
    assert f"numeric column 'age' of {ADULT_TEST} is string now but was int" in caplog.text
    assert not (out / cfg.name / "scores").exists()


def test_extra_columns_are_ignored(spark, adult_trained) -> None:  # type: ignore[no-untyped-def]
    from pyspark.sql import functions as F

    _, result = adult_trained
    bundle = load_bundle(result.bundle_path)
    rows = adult_pandas(ADULT_TEST).head(60)
    rows.insert(0, "row_id", np.arange(len(rows), dtype=np.int64))
    df = spark.createDataFrame(rows)
    extra = df.withColumn("note", F.lit("ignored")).withColumn("weight", F.rand(seed=1))
    plain = {r["row_id"]: r["anomaly_score"] for r in score_frame(spark, df, bundle, ids=("row_id",)).collect()}
    scored = score_frame(spark, extra, bundle, ids=("row_id",))
    assert "note" not in scored.columns and "weight" not in scored.columns
    assert {r["row_id"]: r["anomaly_score"] for r in scored.collect()} == plain


# --------------------------------------------- unicode, very long values, ±inf under policy null

LONG = ("ab€😀" * 25_000)[:100_000]  # a 100,000-character value (~250 kB of UTF-8)
#: value -> count in the training source; None is null; 'once 🙂' is rarer than min_count (OOV)
CITY_COUNTS: dict[str | None, int] = {
    "plain": 60, "北京市": 40, "🦄🚀": 30, "e\u0301": 20, "\u00e9": 20, "שלום עולם": 15, "مرحبا": 12,
    LONG: 10, "": 8, None: 5, "once 🙂": 1,
}


def tiny_source() -> pd.DataFrame:
    cities = [v for v, n in CITY_COUNTS.items() for _ in range(n)]
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "row_id": np.arange(len(cities), dtype=np.int64),
        "city": cities,
        "code": (np.arange(len(cities)) % 3).astype(np.int64),
        "x": rng.normal(5.0, 2.0, len(cities)),
        "c": np.full(len(cities), 4.0),  # constant: std 0, standardized with scale 1
    })


@pytest.fixture(scope="module")
def tiny_run(spark, tmp_path_factory):  # type: ignore[no-untyped-def]
    """Vocabulary + a short training run on a small Parquet table of awkward values, inf_policy null."""
    from embedlib.spark.train import run_train_job
    from embedlib.spark.vocab import run_vocab_job

    root = tmp_path_factory.mktemp("tiny")
    src = root / "source.parquet"
    tiny_source().to_parquet(src, index=False)
    sets = [f"output_dir={root}", "name=tiny", f"source.path={src}", "source.format=parquet",
            "columns.categorical=[city, code]", "columns.numeric=[x, c]", "columns.id=[row_id]",
            "vocab.inf_policy=null", "train.epochs=2", "train.batch_size=64", "train.seed=3"]
    cfg = load_config([], sets)
    vocab = run_vocab_job(spark, cfg)
    run_train_job(spark, cfg)
    return cfg, sets, vocab


def test_unicode_and_long_values_are_counted_exactly(tiny_run) -> None:  # type: ignore[no-untyped-def]
    _, _, vocab = tiny_run
    counts = collections.Counter(v for v in tiny_source()["city"] if v is not None)
    kept = sorted(((v, n) for v, n in counts.items() if n >= 2), key=lambda vn: (-vn[1], vn[0].encode()))
    cv = vocab["city"]
    assert list(zip(cv.values, cv.counts)) == kept
    assert (cv.null_count, cv.oov_count) == (5, 1)
    assert "e\u0301" in cv.values and "\u00e9" in cv.values  # no silent Unicode normalisation
    assert LONG in cv.values and len(cv.values[cv.values.index(LONG)]) == 100_000
    back = Vocabulary.load_delta(tiny_run[0].layout.vocab)
    assert back["city"].values == cv.values
    probe = pa.array([LONG, "🦄🚀", "北京", None, "e\u0301"])
    index = {v: i + FIRST_INDEX for i, v in enumerate(cv.values)}
    assert back.lookup("city", probe).tolist() == [index[LONG], index["🦄🚀"], OOV_INDEX, 0, index["e\u0301"]]
    assert vocab.numeric["c"].std == 0.0 and vocab.numeric["c"].scale == 1.0


def test_unicode_and_long_values_score_and_print(spark, tiny_run, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg, sets, _ = tiny_run
    # ten rows, so the report's top ten shows them all; one value never seen in training
    shown = [v for v in CITY_COUNTS if v not in ("plain", "once 🙂")] + ["北京"]
    rows = pd.DataFrame({"row_id": np.arange(1000, 1000 + len(shown), dtype=np.int64), "city": shown,
                         "code": np.int64(1), "x": 5.0, "c": 4.0})
    rows.to_parquet(tmp_path / "special.parquet", index=False)
    args = ["score", *(a for s in sets for a in ("--set", s)), "--set", f"score.source={tmp_path / 'special.parquet'}",
            "--set", "score.top_reasons=4", "--set", "score.run_id=special", "--set", "score.detail=all"]
    assert main(args) == 0
    report = capsys.readouterr().out
    table = [r for r in pa.table(DeltaTable(cfg.layout.scores).to_pyarrow_table()).to_pylist() if r["row_id"] >= 1000]
    assert len(table) == len(shown) and all(np.isfinite(r["anomaly_score"]) for r in table)
    by_id = {r["row_id"]: r for r in table}
    for k, value in enumerate(shown):
        reason = next(x for x in by_id[1000 + k]["reasons"] if x["column"] == "city")
        assert reason["value"] == ("<null>" if value is None else value)  # byte-exact round trip
        assert format_reason(reason) in report  # the CLI prints it as it is
    assert f"city={LONG} — expected" in report and "city=北京 — expected" in report


def test_infinite_numerics_under_policy_null_are_counted(spark, tiny_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, sets, _ = tiny_run
    rows = tiny_source().head(20).copy()
    rows.loc[[0, 1, 2], "x"] = np.inf
    rows.loc[3, "x"] = -np.inf
    rows.loc[4, "c"] = np.inf  # row 4: two columns, one row
    rows.loc[[4, 5], "x"] = [np.inf, np.nan]
    rows.loc[6, "x"] = None
    rows.to_parquet(tmp_path / "inf.parquet", index=False)
    run = run_score_job(spark, load_config([], [*sets, f"score.source={tmp_path / 'inf.parquet'}",
                                                "score.run_id=inf"]))
    assert run.rows == 20 and run.inf_rows == 5
    assert run.null_rate["x"] == pytest.approx(7 / 20) and run.null_rate["c"] == pytest.approx(1 / 20)
    scores = pa.table(DeltaTable(cfg.layout.scores).to_pyarrow_table()).to_pylist()
    assert all(np.isfinite(r["anomaly_score"]) for r in scores if r["row_id"] < 20)
    summary = [r for r in pa.table(DeltaTable(cfg.layout.score_runs).to_pyarrow_table()).to_pylist()
               if r["run_id"] == "inf"]
    assert len(summary) == 1 and summary[0]["inf_rows"] == 5
