"""Object storage for real: the whole pipeline on ``s3a://`` against an S3-compatible server.

The server is moto's (``moto[server]`` from PyPI) on 127.0.0.1, started by the fixture below and
stopped after the module, with authentication on: requests are signed with an access key the
server issued (IAM user + policy), so wrong credentials are refused as S3 refuses them. Source, run
directory (vocabulary, encoded shards, checkpoints, bundle) and every output live in the bucket.
Both Delta engines run the pipeline — the connector through ``hadoop-aws``, delta-rs with its S3
settings (conditional put) — one with credentials from the environment, the other from Spark conf.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from tests.conftest import (
    ADULT_CONF,
    ADULT_DATA,
    ADULT_TEST,
    BASE_CONF,
    ROOT,
    TRAIN_SETS,
    adult_pandas,
    logged_address,
    spark_sets,
)

BUCKET = "embedlib-test"
pytestmark = pytest.mark.timeout(900)


#: The runs here test storage, not the model: one short epoch on a sample of the training rows (scoring
#: reads and writes every held-out row).
QUICK = ("train.epochs=1", "train.max_rows=3000")


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    key_id: str
    secret: str

    @property
    def env(self) -> dict[str, str]:
        """The environment of a process that reaches the bucket through AWS's variables."""
        return {"AWS_ACCESS_KEY_ID": self.key_id, "AWS_SECRET_ACCESS_KEY": self.secret,
                "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.endpoint}

    def client(self, secret: str | None = None):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.key_id, aws_secret_access_key=secret or self.secret)

    def objects(self, prefix: str) -> dict[str, bytes]:
        s3 = self.client()
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
                for o in page.get("Contents", [])]
        return {k: s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    import boto3

    path = tmp_path_factory.mktemp("moto") / "server.log"
    log = path.open("wb")
    # the first 3 requests (the IAM set-up below) are unsigned; every later one must be signed
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")
    # port 0: the server binds one of the kernel's choosing and logs it (no port picked first, bound later)
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        port = int(logged_address(path, r"Running on http://127\.0\.0\.1:(\d+)", proc, timeout=60))
        endpoint = f"http://127.0.0.1:{port}"
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="embedlib")
        iam.put_user_policy(UserName="embedlib", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="embedlib")["AccessKey"]
        server = S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
        s3 = server.client()
        s3.create_bucket(Bucket=BUCKET)
        s3.upload_file(str(ADULT_DATA), BUCKET, "src/adult.data.gz")
        s3.upload_file(str(ADULT_TEST), BUCKET, "src/adult.test.gz")
        yield server
    finally:
        proc.kill()
        proc.wait()
        log.close()


def _embedlib(command: str, server: S3Server, *sets: str, creds: str = "env",
              secret: str | None = None) -> subprocess.CompletedProcess[str]:
    """``embedlib <command>`` in a fresh process on the Adult demo; credentials from the
    environment (``creds="env"``) or from Spark conf keys (``"spark-conf"``, none in the env)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    argv = [sys.executable, "-m", "embedlib.cli", command, "--conf", str(BASE_CONF), "--conf", str(ADULT_CONF),
            "--set", f"source.path=s3a://{BUCKET}/src/adult.data.gz",
            "--set", f"score.source=s3a://{BUCKET}/src/adult.test.gz",
            "--set", "spark.master=local[2]", "--set", "spark.conf.spark.sql.shuffle.partitions=4", *spark_sets(),
            *[a for s in [*TRAIN_SETS, *QUICK, *sets] for a in ("--set", s)]]
    if creds == "env":
        env.update(server.env)
        if secret is not None:
            env["AWS_SECRET_ACCESS_KEY"] = secret
    else:
        prefix = "spark.conf.spark.hadoop.fs.s3a"
        argv += ["--set", f"{prefix}.access.key={server.key_id}",
                 "--set", f"{prefix}.secret.key={secret or server.secret}",
                 "--set", f"{prefix}.endpoint={server.endpoint}", "--set", f"{prefix}.path.style.access=true",
                 "--set", f"{prefix}.endpoint.region=us-east-1"]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=800)


@dataclass(frozen=True)
class S3Run:
    engine: str
    output: str
    procs: tuple[subprocess.CompletedProcess[str], ...]


@pytest.fixture(scope="module")
def s3_runs(s3_server: S3Server) -> dict[str, S3Run]:
    """``embedlib run`` then ``embedlib score`` again (same run id) per Delta engine, all on S3; the two
    engines' runs write to their own folders and go at once (each run waits on its JVM's start-up, its
    storage calls and its tasks' Python workers for much of its time: 90 -> 69 s on this 2-core machine)."""

    def chain(engine: str, creds: str) -> S3Run:
        output = f"s3a://{BUCKET}/runs/{engine}"
        sets = (f"output_dir={output}", f"delta.engine={engine}")
        first = _embedlib("run", s3_server, *sets, creds=creds)
        assert first.returncode == 0, first.stderr[-4000:]
        again = _embedlib("score", s3_server, *sets, creds=creds)
        assert again.returncode == 0, again.stderr[-4000:]
        return S3Run(engine, output, (first, again))

    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = {engine: pool.submit(chain, engine, creds)
                for engine, creds in (("connector", "env"), ("delta-rs", "spark-conf"))}
        return {engine: run.result() for engine, run in runs.items()}


def _delta(server: S3Server, path: str):  # type: ignore[no-untyped-def]
    """A table of the bucket read with delta-rs, independently of embedlib's storage settings."""
    from deltalake import DeltaTable

    return DeltaTable(path, storage_options={
        "AWS_ACCESS_KEY_ID": server.key_id, "AWS_SECRET_ACCESS_KEY": server.secret, "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": server.endpoint, "AWS_ALLOW_HTTP": "true"})


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["connector", "delta-rs"])
def test_pipeline_on_s3(s3_runs: dict[str, S3Run], s3_server: S3Server, engine: str) -> None:
    from embedlib.core.bundle import MANIFEST

    run = s3_runs[engine]
    root = f"{run.output}/adult-demo"
    objects = s3_server.objects(f"runs/{engine}/")
    names = set(objects)
    prefix = f"runs/{engine}/adult-demo"
    assert f"{prefix}/bundle/{MANIFEST}" in names
    assert any(n.startswith(f"{prefix}/_work/encoded/") for n in names)  # shards and checkpoints in the bucket
    assert any(n.startswith(f"{prefix}/vocab/_delta_log/") for n in names)
    scores = _delta(s3_server, f"{root}/scores")
    expected = len(adult_pandas(ADULT_TEST))
    assert scores.to_pyarrow_table().num_rows == expected
    # the second `embedlib score` (same bundle, same source version, so the same run id) added nothing
    assert "nothing written" in run.procs[1].stderr or "already" in run.procs[1].stderr, run.procs[1].stderr[-2000:]
    assert scores.version() == 0
    history = _delta(s3_server, f"{root}/score_runs").to_pyarrow_table()
    assert history.num_rows == 1
    manifest = json.loads(objects[f"{prefix}/bundle/{MANIFEST}"])
    assert set(manifest["files"]) <= {n.rsplit("/", 1)[1] for n in names if n.startswith(f"{prefix}/bundle/")}
    # the secret is in no log line, no output and no object written (Delta logs, bundle, shards)
    for proc in run.procs:
        assert s3_server.secret not in proc.stdout + proc.stderr
    for key, data in objects.items():
        assert s3_server.secret.encode() not in data, key


def test_both_engines_score_the_same_on_s3(s3_runs: dict[str, S3Run], s3_server: S3Server) -> None:
    """Same seed, same data: the connector's run and delta-rs's run give the same scores."""
    import numpy as np

    got = {e: np.sort(_delta(s3_server, f"{r.output}/adult-demo/scores").to_pyarrow_table()
                      .column("anomaly_score").to_numpy()) for e, r in s3_runs.items()}
    np.testing.assert_allclose(got["connector"], got["delta-rs"], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_wrong_credentials_and_missing_bucket_are_named(s3_server: S3Server) -> None:
    wrong = "WRONG" + s3_server.secret[5:]
    with ThreadPoolExecutor(max_workers=3) as pool:  # three processes that fail early: at once
        refused = {creds: pool.submit(_embedlib, "vocab", s3_server, f"output_dir=s3a://{BUCKET}/runs/wrong-{creds}",
                                      creds=creds, secret=wrong) for creds in ("env", "spark-conf")}
        missing = pool.submit(_embedlib, "vocab", s3_server, "output_dir=s3a://no-such-bucket-here/run")
        for creds, future in refused.items():
            proc = future.result()
            assert proc.returncode == 2, (creds, proc.stderr[-3000:])
            error = [line for line in proc.stderr.splitlines() if "ERROR embedlib" in line]
            assert error and "S3 refused the credentials for bucket 'embedlib-test'" in error[-1], proc.stderr[-3000:]
            assert s3_server.secret not in proc.stderr + proc.stdout and wrong not in proc.stderr + proc.stdout
        proc = missing.result()
    assert proc.returncode == 2
    assert "the S3 bucket 'no-such-bucket-here' does not exist" in proc.stderr, proc.stderr[-3000:]


def test_delta_rs_errors_on_s3_name_the_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    from embedlib.core.delta import open_delta
    from embedlib.spark.tables import TableError

    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(TableError, match="the S3 bucket 'no-such-bucket' does not exist"):
        open_delta("s3a://no-such-bucket/table")
    with pytest.raises(TableError, match="is not a Delta table"):
        open_delta(f"s3a://{BUCKET}/nothing-here")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(TableError, match="S3 refused the credentials for bucket 'embedlib-test'") as err:
        open_delta(f"s3a://{BUCKET}/table")
    assert "not-the-secret" not in str(err.value)


def test_concurrent_delta_rs_commits_on_s3_lose_nothing(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writers racing for the same log version: conditional put lets one win, the other retries;
    every commit lands once (with a plain overwrite of the log entry one would be lost)."""
    import pyarrow as pa
    from deltalake import write_deltalake

    from embedlib.core.storage import delta_rs_options

    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    path = f"s3a://{BUCKET}/concurrent"
    options = delta_rs_options(path)
    assert options is not None and options["conditional_put"] == "etag"
    write_deltalake(path, pa.table({"writer": [-1], "i": [-1]}), storage_options=options)
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for i in range(5):
                write_deltalake(path, pa.table({"writer": [w], "i": [i]}), mode="append", storage_options=options)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    table = _delta(s3_server, path)
    assert table.version() == 15
    rows = sorted(zip(*table.to_pyarrow_table().select(["writer", "i"]).to_pydict().values()))
    assert rows == [(-1, -1)] + [(w, i) for w in range(3) for i in range(5)]


def test_settings_for_each_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """One set of settings, three spellings; the session's keys win over the environment, and
    credentials never appear in the settings' repr or in the Spark (Hadoop) settings."""
    from embedlib.core import storage

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    env = storage.from_environment()
    assert "env-secret" not in repr(env) and "AKIAENV" not in repr(env)
    hadoop = storage.hadoop_conf(env)
    assert hadoop["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:9000"
    assert hadoop["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert hadoop["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert hadoop["spark.hadoop.fs.s3.impl"].endswith("S3AFileSystem")
    assert "env-secret" not in json.dumps(hadoop)
    session = storage.from_spark_conf({"spark.hadoop.fs.s3a.secret.key": "conf-secret",
                                       "spark.hadoop.fs.s3a.endpoint.region": "eu-west-1"})
    merged = session.merged_over(env)
    assert (merged.secret_key, merged.access_key, merged.region) == ("conf-secret", "AKIAENV", "eu-west-1")
    monkeypatch.setattr(storage, "_DRIVER", session)
    options = storage.delta_rs_options("s3://bucket/table")
    assert options == {"conditional_put": "etag", "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
                       "AWS_REGION": "eu-west-1", "AWS_ACCESS_KEY_ID": "AKIAENV",
                       "AWS_SECRET_ACCESS_KEY": "conf-secret", "AWS_ALLOW_HTTP": "true",
                       "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false"}
    assert storage.delta_rs_options("/tmp/table") is None


def test_bundle_round_trip_on_s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch,
                                 adult_trained) -> None:  # type: ignore[no-untyped-def]
    """A bundle saved to S3 (no folder rename there: objects first, manifest last) loads back
    verified, also after being replaced in place; with one object changed it is refused."""
    import torch

    from embedlib.core.bundle import MANIFEST, WEIGHTS, BundleError, load_bundle, save_bundle

    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    cfg, _ = adult_trained
    local = load_bundle(cfg.layout.bundle)
    target = f"s3a://{BUCKET}/bundles/adult"
    ids = [save_bundle(target, model=local.model, vocab=local.vocab, threshold=local.threshold,
                       threshold_quantile=local.manifest["threshold_quantile"], metrics={"copy": i},
                       model_config=local.manifest["model_config"]) for i in range(2)]
    remote = load_bundle(target)
    assert remote.bundle_id == ids[1] != ids[0]
    for name, tensor in local.model.state_dict().items():
        assert torch.equal(tensor, remote.model.state_dict()[name]), name
    keys = s3_server.objects("bundles/adult/")
    assert f"bundles/adult/{MANIFEST}" in keys and not any(".tmp-" in k or ".old-" in k for k in keys)
    victim = f"bundles/adult/{WEIGHTS}"
    s3_server.client().put_object(Bucket=BUCKET, Key=victim, Body=keys[victim] + b"x")
    with pytest.raises(BundleError, match=f"{WEIGHTS} does not match"):
        load_bundle(target)
