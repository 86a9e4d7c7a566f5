"""In memory, without Spark: ``embedlib.fit`` on pandas or Arrow, ``bundle.score_frame`` on pandas —
the jobs' bundle format, and the score job's numbers on the same rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

import embedlib
from embedlib.core.config import ConfigError, load_config
from embedlib.core.vocab import SchemaError, VocabError

from .conftest import ADULT_CONF, ADULT_TEST, BASE_CONF, adult_pandas

#: The training tests' settings (conftest.TRAIN_SETS) as fit's settings.
SETTINGS = {"train.epochs": 6, "train.patience": 10, "train.batch_size": 512, "train.learning_rate": 0.003,
            "train.seed": 7, "model.size": "medium"}


CFG = load_config([BASE_CONF, ADULT_CONF])
CATEGORICAL, NUMERIC = list(CFG.columns.categorical), list(CFG.columns.numeric)


def test_fit_in_memory_then_score_frame_equals_the_score_job(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from embedlib.spark.score import run_score_job

    bundle = embedlib.fit(adult_pandas(), categorical=CATEGORICAL, numeric=NUMERIC, output_dir=str(tmp_path / "runs"), name="mem",
                          settings={**SETTINGS, "columns.log1p": ["fnlwgt", "capital-gain", "capital-loss"]})
    assert bundle.path == str(tmp_path / "runs" / "mem" / "bundle")
    assert bundle.spec.categorical == tuple(CATEGORICAL) and bundle.calibration is not None
    metrics = bundle.manifest["metrics"]
    assert metrics["backend"] == "local" and metrics["train_rows"] + metrics["validation_rows"] == 32561
    assert bundle.vocab.numeric["capital-gain"].log1p and bundle.vocab.meta["row_count"] == 32561

    test = adult_pandas(ADULT_TEST).head(2000).copy()
    test.insert(0, "row_id", np.arange(len(test), dtype=np.int64))
    test.index = pd.Index(np.arange(len(test)) * 10 + 5)  # a frame's own index comes back
    mem = bundle.score_frame(test)
    assert list(mem.columns) == ["anomaly_score", "is_anomaly", "contributions", "reasons", "calibrated_score",
                                 "calibrated_contributions", "bundle_id"]
    assert (mem.index == test.index).all()
    row = mem.iloc[0]
    assert sum(row["contributions"].values()) == pytest.approx(row["anomaly_score"], abs=1e-9)
    assert sum(row["calibrated_contributions"].values()) == pytest.approx(row["calibrated_score"], abs=1e-9)
    assert len(row["reasons"]) == 3 and set(row["reasons"][0]) == {"column", "value", "expected", "probability", "nats"}

    # `embedlib score` (Spark) with the bundle fit wrote, on the same rows
    test.to_parquet(tmp_path / "test.parquet", index=False)
    cfg = load_config([BASE_CONF, ADULT_CONF], [
        f"output_dir={tmp_path / 'runs'}", "name=mem", f"score.source.path={tmp_path / 'test.parquet'}",
        "score.source.format=parquet", "columns.id=[row_id]", f"score.output={tmp_path / 'job_scores'}"])
    run_score_job(spark, cfg)
    job = DeltaTable(str(tmp_path / "job_scores")).to_pandas().sort_values("row_id")
    assert job["row_id"].tolist() == list(range(2000))
    for col in ("anomaly_score", "calibrated_score"):
        np.testing.assert_allclose(mem[col].to_numpy(), job[col].to_numpy(), rtol=0, atol=1e-9)
    assert mem["is_anomaly"].tolist() == job["is_anomaly"].tolist()
    assert (job["bundle_id"] == bundle.bundle_id).all() and (mem["bundle_id"] == bundle.bundle_id).all()
    # the job's default detail (flagged): the flagged rows' reasons are score_frame's, the others' null
    flagged = job["is_anomaly"].to_numpy()
    assert 0 < flagged.sum() < len(job) and job["reasons"].isna().tolist() == (~flagged).tolist()
    mem_reasons = [[(r["column"], r["value"], r["expected"]) for r in rs] for rs in mem["reasons"][flagged]]
    job_reasons = [[(r["column"], r["value"], r["expected"]) for r in rs] for rs in job["reasons"][flagged]]
    assert mem_reasons == job_reasons

    # ranked by nats, with no reasons: the other threshold, empty lists
    by_nats = bundle.score_frame(test, rank_by="nats", top_reasons=0)
    assert by_nats["is_anomaly"].tolist() == (mem["anomaly_score"] > bundle.threshold_for("nats")).tolist()
    assert all(len(r) == 0 for r in by_nats["reasons"])


def test_fit_from_arrow_equals_fit_from_pandas_and_bad_input(tmp_path: Path) -> None:
    """The same rows as pandas or as Arrow (with a dictionary column) give the same vocabulary and,
    trained with the same seed, the same weights; bad input is named before any work."""
    frame = adult_pandas().head(6000)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.set_column(table.schema.get_field_index("workclass"), "workclass",
                             table.column("workclass").dictionary_encode())
    quick = {**SETTINGS, "train.max_steps": 60}
    a = embedlib.fit(frame, categorical=CATEGORICAL, numeric=NUMERIC, output_dir=str(tmp_path / "a"), settings=quick)
    b = embedlib.fit(table, categorical=CATEGORICAL, numeric=NUMERIC, output_dir=str(tmp_path / "b"), settings=quick)
    assert a.vocab.content_hash == b.vocab.content_hash
    assert a.manifest["files"]["weights.safetensors"] == b.manifest["files"]["weights.safetensors"]
    # model.size auto without Spark: the candidates train one after another in this process
    auto = embedlib.fit(frame, categorical=CATEGORICAL, numeric=NUMERIC, output_dir=str(tmp_path / "auto"),
                        settings={**quick, "model.size": "auto", "model.search_steps": 200})
    search = auto.manifest["metrics"]["size_search"]
    assert set(search["trials"]) == {"small", "medium", "large"} and search["size"] in search["trials"]
    assert auto.manifest["metrics"]["model_size"] == search["size"]
    shards = json.loads((tmp_path / "a" / "embedlib" / "_work" / "encoded" / "_shards.json").read_text())
    assert shards["train_rows"] + shards["valid_rows"] == 6000 and 0 < shards["valid_rows"] < 1200
    # the run's source is the copy fit trained on (as the estimator's): `embedlib evaluate` reads it
    copy = pq.read_table(tmp_path / "b" / "embedlib" / "_work" / "fit-source")
    assert copy.column_names == [*CATEGORICAL, *NUMERIC] and copy.num_rows == 6000
    assert copy.column("workclass").to_pylist() == table.column("workclass").cast(pa.string()).to_pylist()

    with pytest.raises(SchemaError, match="lacks column\\(s\\) workclass"):
        embedlib.fit(frame.drop(columns=["workclass"]), categorical=CATEGORICAL, numeric=NUMERIC, output_dir=str(tmp_path / "c"))
    with pytest.raises(ConfigError, match="columns.numeric come from fit's own arguments"):
        embedlib.fit(frame, categorical=CATEGORICAL, numeric=NUMERIC, output_dir=str(tmp_path / "c"), settings={"columns.numeric": ["age"]})
    with pytest.raises(ConfigError, match="train.backend=horovod: fit trains in this process"):
        embedlib.fit(frame, categorical=CATEGORICAL, numeric=NUMERIC, output_dir=str(tmp_path / "c"), settings={"train.backend": "horovod"})
    with pytest.raises(ConfigError, match="train.batch_size"):
        embedlib.fit(frame, categorical=CATEGORICAL, numeric=NUMERIC, output_dir=str(tmp_path / "c"), settings={"train.batch_size": 0})
    mixed = frame.copy()
    mixed["age"] = mixed["age"].astype(object)
    mixed.loc[3, "age"] = "forty"
    with pytest.raises(SchemaError, match="column 'age' mixes types"):
        embedlib.fit(mixed, categorical=CATEGORICAL, numeric=NUMERIC, output_dir=str(tmp_path / "c"))
    assert not (tmp_path / "c").exists()  # refused before any work
    with pytest.raises(VocabError, match="has no rows"):  # the vocabulary's checks come before the source copy
        embedlib.fit(table.slice(0, 0), categorical=CATEGORICAL, numeric=NUMERIC, output_dir=str(tmp_path / "d"))
    assert not list((tmp_path / "d").rglob("*fit-source*"))
    with pytest.raises(SchemaError, match="score_frame: the data lacks column\\(s\\) age"):
        a.score_frame(frame.drop(columns=["age"]))
    as_text = frame.head(5).astype({"age": str})
    with pytest.raises(SchemaError, match="numeric column 'age' of the rows to score is string now but was bigint"):
        a.score_frame(as_text)


def test_every_pass_that_runs_the_model_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation, calibration and scoring run the model on at most PASS_ROWS rows at a time (their
    logits are rows × cardinality), whatever the shard: here one shard of ~15,000 rows per split,
    which a pass taking row groups whole would run in one forward."""
    from embedlib.core.model import PASS_ROWS, EmbeddingAutoencoder

    seen: list[int] = []
    original = EmbeddingAutoencoder.reconstruct

    def recording(self, cat, num, miss):  # type: ignore[no-untyped-def]
        seen.append(int(cat.shape[0]))
        return original(self, cat, num, miss)

    monkeypatch.setattr(EmbeddingAutoencoder, "reconstruct", recording)
    rng = np.random.default_rng(0)
    n = 30_000
    frame = pd.DataFrame({"c": [f"v{i}" for i in rng.integers(0, 5_000, n)],
                          "d": rng.integers(0, 20, n).astype(str), "x": rng.normal(size=n)})
    bundle = embedlib.fit(frame, categorical=["c", "d"], numeric=["x"], output_dir=str(tmp_path), settings={
        "train.num_shards": 1, "train.validation_fraction": 0.5, "model.size": "small", "train.max_steps": 20,
        "vocab.min_count": 1})
    assert bundle.spec.cardinalities[0] > 4_000
    valid_rows = bundle.manifest["metrics"]["validation_rows"]
    assert valid_rows > PASS_ROWS and max(seen) <= PASS_ROWS
    seen.clear()
    scores = bundle.score_frame(frame)
    assert len(scores) == n and max(seen) <= PASS_ROWS and sum(seen) == n


#: Run by :func:`test_fit_and_score_frame_need_no_pyspark` in a process where pyspark cannot be imported.
NO_SPARK = r'''
import importlib.abc, json, sys

class NoSpark(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "pyspark":
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, NoSpark())
import pandas as pd
import embedlib

frame = pd.read_parquet(sys.argv[1])
bundle = embedlib.fit(frame, categorical=json.loads(sys.argv[2]), numeric=json.loads(sys.argv[3]),
                      output_dir=sys.argv[4], settings={"model.size": "small", "train.max_steps": 40})
scores = bundle.score_frame(frame.head(50))
print(json.dumps({"scores": scores["anomaly_score"].tolist(), "bundle": bundle.bundle_id,
                  "pyspark": sorted(m for m in sys.modules if m.split(".")[0] == "pyspark")}))
'''


@pytest.mark.launch
def test_fit_and_score_frame_need_no_pyspark(tmp_path: Path) -> None:
    """``pip install embedlib`` brings no pyspark (Spark is an extra; the wheel test checks its metadata):
    ``embedlib.fit`` and ``Bundle.score_frame`` run in a process where pyspark cannot be imported, and
    the bundle scores the same rows the same in this process (one that has pyspark)."""
    import subprocess
    import sys

    from embedlib.core.bundle import load_bundle

    rows = adult_pandas().head(3000)
    data = tmp_path / "rows.parquet"
    rows.to_parquet(data, index=False)
    proc = subprocess.run([sys.executable, "-c", NO_SPARK, str(data), json.dumps(CATEGORICAL), json.dumps(NUMERIC),
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["pyspark"] == []
    bundle = load_bundle(str(tmp_path / "out" / "embedlib" / "bundle"))
    assert bundle.bundle_id == got["bundle"]
    np.testing.assert_allclose(got["scores"], bundle.score_frame(rows.head(50))["anomaly_score"], rtol=1e-9)


def test_arrow_types_are_named_as_spark_reads_them() -> None:
    """The pyspark-free names of Arrow types (what ``fit`` and ``score_frame`` check and store) are
    pyspark's own ``from_arrow_type`` names."""
    from pyspark.sql.pandas.types import from_arrow_type

    from embedlib.core.vocab.schema import arrow_type_name

    types = [pa.bool_(), pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.float32(), pa.float64(), pa.string(),
             pa.large_string(), pa.binary(), pa.date32(), pa.decimal128(12, 3), pa.timestamp("us"),
             pa.timestamp("us", tz="UTC"), pa.list_(pa.int32()), pa.map_(pa.string(), pa.float64()),
             pa.struct([("a", pa.int64()), ("b", pa.string())])]
    for t in types:
        assert arrow_type_name(t) == from_arrow_type(t).simpleString(), t
    assert arrow_type_name(pa.dictionary(pa.int8(), pa.string())) == "string"


def test_score_detail_keeps_every_score_and_drops_the_detail_of_other_rows(tmp_path: Path) -> None:
    """``score.detail`` (build_output's ``detail``): ``flagged`` gives the flagged rows exactly the
    contributions and reasons ``all`` gives them and nulls to the others, ``none`` nulls to every row;
    the scores and flags are the same in each (a 150-step fit, ~2 s)."""
    rng = np.random.default_rng(3)
    kind = rng.integers(0, 5, 1500)
    frame = pd.DataFrame({"kind": [f"k{k}" for k in kind], "shop": [f"s{k}" for k in kind],
                          "price": kind * 10.0 + rng.normal(0, 1, 1500)})
    bundle = embedlib.fit(frame, categorical=["kind", "shop"], numeric=["price"], output_dir=str(tmp_path),
                          settings={"model.size": "small", "train.max_steps": 150, "train.patience": 0})
    rows = frame.head(200).copy()
    rows.loc[:9, "shop"] = "s4"  # ten broken pairs among normal rows
    rows.loc[:9, "kind"] = "k0"
    every, flagged, none = (bundle.score_frame(rows, detail=d) for d in ("all", "flagged", "none"))
    for got in (flagged, none):
        for col in ("anomaly_score", "calibrated_score", "is_anomaly"):
            assert got[col].tolist() == every[col].tolist()
    hit = every["is_anomaly"].to_numpy()
    assert 0 < hit.sum() < len(rows)
    for col in ("contributions", "calibrated_contributions", "reasons"):
        assert flagged[col].isna().tolist() == (~hit).tolist() and none[col].isna().all()
        assert [_plain(v) for v in flagged[col][hit]] == [_plain(v) for v in every[col][hit]]
    with pytest.raises(ValueError, match="score.detail='some'"):
        bundle.score_frame(rows, detail="some")


def _plain(value: object) -> object:
    """A reasons cell (an array of dicts in pandas) as a list; anything else as it is."""
    return list(value) if isinstance(value, np.ndarray) else value
