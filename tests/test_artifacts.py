"""Hostile or broken artifacts, secrets, and repeatability.

A bundle that was tampered with is refused before anything in it is used; hostile paths are refused
before any I/O; secrets given in the configuration appear in no output; the same input, config and
seed give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from embedlib.cli import main
from embedlib.core.bundle import MANIFEST, VOCAB, WEIGHTS, BundleError, _bundle_id, load_bundle, vocab_bytes
from embedlib.core.config import load_config
from embedlib.core.inference import score_rows
from embedlib.spark.score import run_score_job
from embedlib.spark.vocab import build_vocabulary, run_vocab_job

from .conftest import (
    ADULT_CONF,
    ADULT_DATA,
    ADULT_TEST,
    BASE_CONF,
    ROOT,
    adult_args,
    adult_pandas,
    copy_run,
    spark_sets,
    tables_of,
)


def reseal(bundle: Path) -> None:
    """What a careful attacker does: record the changed files' hashes and the new bundle id."""
    manifest = json.loads((bundle / MANIFEST).read_text())
    for name in (WEIGHTS, VOCAB):
        manifest["files"][name] = hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    manifest["bundle_id"] = _bundle_id(manifest)
    (bundle / MANIFEST).write_text(json.dumps(manifest))


# ------------------------------------------------------------------------ hostile bundles


class Payload:
    """Unpickling this creates a file (the stand-in for running any code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_pickled_weights_refused_by_the_score_command(spark, adult_trained, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    cfg, _ = adult_trained
    bundle = copy_run(cfg, tmp_path / "run") / "bundle"
    marker = tmp_path / "pwned"
    payload = pickle.dumps(Payload(marker))
    pickle.loads(payload)  # the payload works when unpickled ...
    assert marker.exists()
    marker.unlink()
    (bundle / WEIGHTS).write_bytes(payload)
    args = ["score", *adult_args(tmp_path / "run"), "--set", f"score.source={ADULT_TEST}"]
    assert main(args) == 2
    assert f"{WEIGHTS} does not match {MANIFEST}" in caplog.text
    reseal(bundle)  # hashes updated: still refused, because safetensors never unpickles
    caplog.clear()
    assert main(args) == 2
    assert f"{WEIGHTS} does not fit the model" in caplog.text
    assert not marker.exists()  # ... and nothing ever ran it
    assert not (tmp_path / "run" / cfg.name / "scores").exists()


def test_vocabulary_from_another_run_is_refused(spark, adult_trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, result = adult_trained

    mine = load_bundle(result.bundle_path).vocab
    other_cfg = load_config([BASE_CONF, ADULT_CONF], [f"output_dir={tmp_path}", f"source.path={ADULT_DATA}",
                                                      "vocab.min_count=50"])
    other = build_vocabulary(spark, tables_of(spark).read_source(other_cfg.source), other_cfg, source="adult")
    assert other.content_hash != mine.content_hash
    bundle = copy_run(cfg, tmp_path / "run") / "bundle"
    recorded = json.loads((bundle / MANIFEST).read_text())["files"][VOCAB]
    (bundle / VOCAB).write_bytes(vocab_bytes(other))
    swapped = hashlib.sha256((bundle / VOCAB).read_bytes()).hexdigest()
    with pytest.raises(BundleError, match=f"{VOCAB} does not match {MANIFEST} \\(sha256 {swapped}, "
                                          f"expected {recorded}\\)"):
        load_bundle(str(bundle))
    reseal(bundle)
    with pytest.raises(BundleError, match=f"{VOCAB} has content hash {other.content_hash}, {MANIFEST} "
                                          f"expects {mine.content_hash}"):
        load_bundle(str(bundle))


def test_missing_bundle_file_is_named(adult_trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, _ = adult_trained
    bundle = copy_run(cfg, tmp_path / "run") / "bundle"
    (bundle / WEIGHTS).unlink()
    with pytest.raises(BundleError, match=f"file {WEIGHTS} is missing or unreadable"):
        load_bundle(str(bundle))
    for name in list(bundle.iterdir()):
        name.unlink()
    with pytest.raises(BundleError, match=f"file {MANIFEST} is missing or unreadable"):
        load_bundle(str(bundle))  # the folder is there, its files are not
    bundle.rmdir()
    with pytest.raises(BundleError, match=f"there is no model bundle at {bundle}; run `embedlib train`"):
        load_bundle(str(bundle))


# -------------------------------------------------------------------------- hostile paths

BAD_PATHS = [
    "{tmp}/a/../../escape",
    "{tmp}/a/%2e%2e/%2E%2E/escape",
    "file://evil.example.com/etc/passwd",
    "FILE://evil.example.com/x",
    "{tmp}/x#fragment",
    "{tmp}/x?versionId=3",
    "gopher://host/x",
    "javascript:alert(1)",
    "s3a://AKIAEXAMPLE:SUPERSECRET123@bucket/x",
]
PATH_KEYS = ["output_dir", "source.path", "score.source", "score.output", "features.source", "features.output"]


@pytest.mark.parametrize("key", PATH_KEYS)
@pytest.mark.parametrize("bad", BAD_PATHS)
def test_hostile_paths_refused_before_any_io(tmp_path: Path, caplog, key: str, bad: str) -> None:  # type: ignore[no-untyped-def]
    work = tmp_path / "work"
    work.mkdir()
    value = bad.format(tmp=work)
    code = main(["score", *adult_args(work / "out"), "--set", f"{key}={json.dumps(value)}"])
    assert code == 2
    assert f"key '{key}'" in caplog.text and "configuration error" in caplog.text
    assert "SUPERSECRET123" not in caplog.text
    assert list(work.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["work"]


@pytest.mark.parametrize("bad", BAD_PATHS[:3])
def test_hostile_conf_file_and_npz_paths_refused(tmp_path: Path, caplog, bad: str) -> None:  # type: ignore[no-untyped-def]
    value = bad.format(tmp=tmp_path)
    assert main(["extract", "--conf", value]) == 2
    assert "config file" in caplog.text
    caplog.clear()
    assert main(["extract", *adult_args(tmp_path / "out"), "--npz", value]) == 2
    assert "--npz" in caplog.text
    assert list(tmp_path.iterdir()) == []


# -------------------------------------------------------------------------------- secrets

SECRETS = {
    "spark.conf.spark.hadoop.fs.s3a.secret.key": "SUPERSECRET123",
    "spark.conf.spark.hadoop.fs.s3a.access.key": "AKIASECRETKEYID42",
    "spark.conf.spark.hadoop.fs.s3a.session.token": "SESSIONTOKEN777",
    "spark.conf.spark.hadoop.fs.azure.account.key.acct.dfs.core.windows.net": "AZSECRET456xyz==",
    "source.options.password": "DBSECRET789",
}


def test_config_errors_never_show_secrets(caplog) -> None:  # type: ignore[no-untyped-def]
    secret_sets = [f"{k}={v}" for k, v in SECRETS.items()]
    attempts = [
        [*secret_sets, "vocab.min_count=-1"],  # a bad value next to the secrets
        ["spark.conf.fs.azure.account.key.acct=[AZSECRET456xyz==]"],  # a secret of the wrong type
        ["spark.conf.fs.s3a.secret.key={SUPERSECRET123: [unclosed"],  # a secret that is not valid YAML
        [*secret_sets, "source.path=s3a://AKIA:SUPERSECRET123@bucket/data"],  # credentials in a path
        [*secret_sets, "vocab.nope=1"],
    ]
    for sets in attempts:
        caplog.clear()
        argv = ["vocab", "--conf", str(BASE_CONF), "--conf", str(ADULT_CONF)]
        for item in sets:
            argv += ["--set", item]
        assert main(argv) == 2
        assert "configuration error" in caplog.text, sets
        for secret in SECRETS.values():
            assert secret not in caplog.text, (sets, caplog.text)


@pytest.mark.launch
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_secrets_appear_in_no_output(tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`embedlib run` end to end, at DEBUG, with storage keys in spark.conf and a reader option."""
    out = tmp_path / "out"
    # every step of the run, the size search's trials (Spark tasks) included, on a sample: what is checked
    # is where the settings travel, not the model
    argv = [sys.executable, "-m", "embedlib.cli", "run", *adult_args(out), "--set", "train.epochs=1",
            "--set", "train.max_rows=3000", "--set", "model.search_rows=1000",
            "--set", "spark.master=local[2]", "--set", "spark.conf.spark.sql.shuffle.partitions=4", *spark_sets(),
            "--log-level", "DEBUG"]
    for key, value in SECRETS.items():
        argv += ["--set", f"{key}={value}"]
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=560)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "starting Spark session" in proc.stderr and "'***'" in proc.stderr  # logged, redacted
    texts = {"stdout": proc.stdout, "stderr": proc.stderr}
    run = out / "adult-demo"
    files = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.name == MANIFEST for p in files) and any("_delta_log" in str(p) for p in files)
    for path in files:  # every byte written: Delta logs (commit metadata), bundle, checkpoints, data files
        texts[str(path)] = path.read_bytes().decode("utf-8", errors="replace")
    for table in ("vocab", "embeddings", "scores", "score_runs"):  # decoded too (Parquet pages are compressed)
        dt = DeltaTable(str(run / table))
        texts[table] = str(dt.to_pyarrow_table().to_pylist()) + str(dt.history())
    assert DeltaTable(str(run / "score_runs")).to_pyarrow_table().num_rows == 1
    for where, text in texts.items():
        for secret in SECRETS.values():
            assert secret not in text, f"{secret} found in {where}"


# -------------------------------------------------------------------------- repeatability


def test_vocabulary_table_is_byte_identical(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Two builds of the same source and config write the same Parquet bytes.

    The Delta log entries differ (commit timestamps, `built_at` in the commit metadata), so the
    comparison is of the data files the log points to, plus the content hash."""
    builds = []
    for name in ("a", "b"):
        cfg = load_config([BASE_CONF, ADULT_CONF], [f"output_dir={tmp_path / name}", f"source.path={ADULT_DATA}"])
        vocab = run_vocab_job(spark, cfg)
        uris = DeltaTable(cfg.layout.vocab).file_uris()
        assert len(uris) == 1
        builds.append((vocab, Path(uris[0].removeprefix("file://")).read_bytes()))
    (va, a), (vb, b) = builds
    assert a == b and len(a) > 1000
    assert va.content_hash == vb.content_hash and va.to_arrow().equals(vb.to_arrow())


def test_rescoring_gives_identical_scores(spark, adult_trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, result = adult_trained
    bundle = load_bundle(result.bundle_path)
    rows = adult_pandas(ADULT_TEST).head(3000)
    rows.insert(0, "row_id", np.arange(len(rows), dtype=np.int64))
    table = pa.Table.from_pandas(rows, preserve_index=False)
    first, second = score_rows(bundle, table), score_rows(bundle, table)  # plain Python, twice
    assert np.array_equal(first.score, second.score) and np.array_equal(first.contributions, second.contributions)
    # the Spark path, twice, through the score job (two run ids, two outputs): the same rows, bit for bit
    copy_run(cfg, tmp_path / "run")
    source = tmp_path / "rows.parquet"
    pq.write_table(table, source)
    scored = []
    for run_id in ("r1", "r2"):
        run_cfg = load_config([BASE_CONF, ADULT_CONF], [
            f"output_dir={tmp_path / 'run'}", f"source.path={ADULT_DATA}", f"score.source={source}",
            "source.format=parquet", "source.schema=null", "columns.id=[row_id]", f"score.run_id={run_id}",
            f"score.output={tmp_path / run_id}"])
        assert run_score_job(spark, run_cfg).rows == 3000
        scored.append(pa.table(DeltaTable(str(tmp_path / run_id)).to_pyarrow_table()).sort_by("row_id"))
    assert scored[0].column_names == ["row_id", "anomaly_score", "is_anomaly", "contributions", "reasons",
                                      "calibrated_score", "calibrated_contributions", "bundle_id", "run_id", "scored_at"]
    assert scored[0].column("run_id").to_pylist() == ["r1"] * 3000
    same = [c for c in scored[0].column_names if c not in ("run_id", "scored_at")]
    assert scored[0].select(same).equals(scored[1].select(same))  # scores, contributions and reasons identical
    assert scored[0].column("row_id").to_pylist() == list(range(3000))


def test_bundle_json_stores_no_session_settings(adult_trained) -> None:  # type: ignore[no-untyped-def]
    """bundle.json records the model config and the source's column types, not the Spark settings."""
    _, result = adult_trained
    manifest = json.loads((Path(result.bundle_path) / MANIFEST).read_text())
    assert "spark" not in manifest and set(manifest["model_config"]) == {
        "max_embedding_dim", "embedding_dims", "hidden", "bottleneck", "corruption", "kind", "masks", "mask_rate",
        "size", "search_rows", "search_steps", "search_seconds", "adaptive_above", "numeric_head"}
    # the shape actually trained, resolved from model.size (the training tests pin medium)
    assert manifest["model_config"]["size"] == "medium" and manifest["model_config"]["hidden"] == [128, 64]
    assert manifest["model_config"]["numeric_head"] == "unit" == manifest["model"]["numeric_head"]
    assert manifest["source_types"]["native-country"] == "string"
