"""The Databricks Asset Bundle (databricks.yml + resources/*.yml) against the wheel and the config.

The `databricks` CLI is a Go binary that no package registry reachable here ships (PyPI's
`databricks-cli` is the legacy tool without `bundle`), so `databricks bundle validate` cannot
run on this machine. Instead the job is checked offline: against the schema of Databricks' own
`databricks-bundles` package (its `Job.from_dict` refuses unknown or mistyped fields), against
the built wheel's entry points, and through embedlib's config loader for every parameter.
"""

from __future__ import annotations

import fnmatch
import re
import zipfile
from collections.abc import Mapping
from configparser import ConfigParser
from pathlib import Path
from typing import Any

import pytest
import yaml

from embedlib.cli import COMMANDS
from embedlib.core.config import load_config
from embedlib.spark.train import backend_name, resolve_backend

from .conftest import ROOT

REF = re.compile(r"\$\{([A-Za-z0-9_.\-]+)\}")
TARGETS = ("dev", "prod")


def bundle_files() -> tuple[dict[str, Any], dict[str, Any]]:
    """``databricks.yml`` and the merged ``resources`` of every included file."""
    root = yaml.safe_load((ROOT / "databricks.yml").read_text())
    resources: dict[str, Any] = {}
    for path in resource_files(root):
        for kind, items in yaml.safe_load(path.read_text())["resources"].items():
            resources.setdefault(kind, {}).update(items)
    return root, resources


def resource_files(root: Mapping[str, Any]) -> list[Path]:
    """The files ``include`` names, in order."""
    found = []
    for pattern in root["include"]:
        files = sorted(ROOT.glob(pattern))
        assert files, f"include {pattern} matches no file"
        found += files
    return found


def wheel_paths(job: Mapping[str, Any]) -> list[str]:
    """Every local wheel a job installs: its tasks' ``libraries`` and its serverless environments'
    ``dependencies``."""
    paths = [lib["whl"] for task in job["tasks"] for lib in task.get("libraries", []) if "whl" in lib]
    paths += [dep for env in job.get("environments", []) for dep in env["spec"].get("dependencies", [])
              if dep.endswith(".whl")]
    return paths


def resolver(root: Mapping[str, Any], target: str):  # type: ignore[no-untyped-def]
    """Resolve ``${var.x}``, ``${bundle.*}`` and ``${workspace.file_path}`` as the CLI would for ``target``
    (the bundle's files are synced to workspace.file_path: here, the repository)."""
    variables = {name: spec.get("default") for name, spec in root["variables"].items()}
    variables.update(root["targets"][target].get("variables", {}))
    known = {"bundle.name": root["bundle"]["name"], "bundle.target": target, "workspace.file_path": str(ROOT)}

    def lookup(ref: str) -> Any:
        if ref.startswith("var."):
            assert ref[4:] in variables, f"${{{ref}}} names no variable"
            value = variables[ref[4:]]
            assert value is not None, f"variable {ref[4:]} has no value in target {target}"
            return resolve(value)
        assert ref in known, f"${{{ref}}} is not resolvable offline"
        return known[ref]

    def resolve(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v) for v in value]
        if isinstance(value, str):
            whole = REF.fullmatch(value)
            if whole:
                return lookup(whole.group(1))
            return REF.sub(lambda m: str(lookup(m.group(1))), value)
        return value

    return resolve


def checked_job(name: str, target: str):  # type: ignore[no-untyped-def]
    """``(databricks.yml, resources, the target's resolver, job name's dict resolved)``; the job passes
    the jobs schema and its schedule is paused."""
    from databricks.bundles.jobs import Job

    root, resources = bundle_files()
    resolve = resolver(root, target)
    job_dict = resolve(resources["jobs"][name])
    job = Job.from_dict(job_dict)  # Databricks' schema: unknown or mistyped fields raise
    assert getattr(getattr(job.schedule, "pause_status", None), "value", None) == "PAUSED"
    return root, resources, resolve, job_dict


def wheel_metadata(wheel: Path) -> tuple[str, dict[str, str], str]:
    """(package name, console scripts, METADATA text) read from the built wheel."""
    with zipfile.ZipFile(wheel) as zf:
        info = next(n.split("/")[0] for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(f"{info}/METADATA").decode()
        entry_points = ConfigParser()
        entry_points.read_string(zf.read(f"{info}/entry_points.txt").decode())
    name = re.search(r"^Name: (.+)$", metadata, re.M).group(1).strip()  # type: ignore[union-attr]
    return name, dict(entry_points["console_scripts"]), metadata


def task_config(task: Mapping[str, Any]):  # type: ignore[no-untyped-def]
    """The embedlib config a python_wheel_task runs with: its --conf files and --set overrides."""
    params = [p for p in task["python_wheel_task"]["parameters"] if p != "--stream"]  # the one flag
    assert len(params) % 2 == 0
    confs: list[str] = []
    sets: list[str] = []
    for flag, value in zip(params[::2], params[1::2]):
        assert flag in ("--conf", "--set"), f"task {task['task_key']}: unexpected parameter {flag}"
        (confs if flag == "--conf" else sets).append(value)
    return load_config(confs, sets)  # raises on any unknown key or bad value


def test_wheel_has_the_package_and_an_entry_point_per_command(wheel: Path) -> None:
    name, scripts, metadata = wheel_metadata(wheel)
    assert name == "embedlib"
    assert scripts["embedlib"] == "embedlib.cli:main"
    for command in COMMANDS:
        assert scripts[f"embedlib-{command}"] == f"embedlib.cli:{command}_main"
    with zipfile.ZipFile(wheel) as zf:
        files = set(zf.namelist())
    assert {"embedlib/cli.py", "embedlib/spark/tracking.py", "embedlib/py.typed"} <= files
    assert not any(f.startswith(("tests/", "jobs/", "conf/")) for f in files)
    # Spark is an extra, so installing the wheel on Databricks leaves the runtime's pyspark alone
    requires = re.findall(r"^Requires-Dist: (.+)$", metadata, re.M)
    spark_reqs = [r for r in requires if r.startswith(("pyspark", "delta-spark"))]
    assert spark_reqs and all('extra == "spark"' in r or 'extra == "dev"' in r for r in spark_reqs), spark_reqs
    # the spark extra brings what a Spark Connect client needs (grpcio, zstandard, …: pyspark[connect])
    assert any(r.startswith("pyspark[connect]") and 'extra == "spark"' in r for r in spark_reqs), spark_reqs
    assert any(r.startswith("mlflow-skinny") and 'extra == "mlflow"' in r for r in requires)


def test_entry_points_fail_the_task_on_bad_input(monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # python_wheel_task ignores a returned exit code: a failure must raise SystemExit
    from embedlib.cli import vocab_main

    monkeypatch.setattr("sys.argv", ["embedlib-vocab", "--set", "source.path=x.csv", "--set", "vocab.min_cnt=2"])
    with pytest.raises(SystemExit) as exc:
        vocab_main()
    assert exc.value.code == 2


@pytest.mark.parametrize("target", TARGETS)
def test_bundle_job_fits_the_schema_the_wheel_and_the_config(wheel: Path, target: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from databricks.bundles.jobs import Job

    root, resources = bundle_files()
    resolve = resolver(root, target)
    package, scripts, _ = wheel_metadata(wheel)
    artifact = root["artifacts"]["embedlib_wheel"]
    assert artifact["type"] == "whl" and artifact["build"] == "python -m build --wheel"

    assert set(resources["jobs"]) == {"embedlib", "embedlib_serverless", "embedlib_stream"}
    job_dict = resolve(resources["jobs"]["embedlib"])
    assert "${" not in yaml.safe_dump(job_dict)
    job = Job.from_dict(job_dict)  # Databricks' schema: unknown or mistyped fields raise
    assert job.schedule is not None
    assert getattr(getattr(job.schedule, "pause_status", None), "value", None) == "PAUSED"

    tasks = {t["task_key"]: t for t in job_dict["tasks"]}
    assert [d["task_key"] for d in tasks["train"]["depends_on"]] == ["vocab"]
    assert [d["task_key"] for d in tasks["score"]["depends_on"]] == ["train"]
    assert "depends_on" not in tasks["vocab"]
    clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job_dict["job_clusters"]}
    variables = {**{k: v.get("default") for k, v in root["variables"].items()}, **root["targets"][target]["variables"]}

    configs = {}
    for key, task in tasks.items():
        wheel_task = task["python_wheel_task"]
        assert wheel_task["package_name"] == package
        entry = wheel_task["entry_point"]
        assert entry in scripts, f"task {key}: entry point {entry} is not in the wheel ({sorted(scripts)})"
        assert entry == f"embedlib-{key}" and key in COMMANDS
        assert task["libraries"] == [{"whl": "../dist/*.whl"}]  # what the artifact's build writes (see below)
        assert task["job_cluster_key"] in clusters
        cfg = task_config(task)
        configs[key] = cfg
        assert cfg.output_schema == f"{variables['catalog']}.{variables['schema']}"
        assert cfg.source.table == variables["source_table"] and cfg.source.path is None
        assert cfg.output_dir == variables["output_dir"]
        # the tables are Unity Catalog tables of the target's catalog
        assert cfg.layout.vocab == f"{variables['catalog']}.embedlib.adult_demo_vocab"

    assert configs["score"].score.source == variables["score_table"]
    assert configs["train"].tracking.mlflow and configs["score"].tracking.mlflow
    # every task sees the same run: the same vocabulary, bundle and tables
    assert len({(c.name, c.output_dir, c.output_schema, c.columns) for c in configs.values()}) == 1

    train, train_cluster = configs["train"].train, clusters[tasks["train"]["job_cluster_key"]]
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "17.3")
    assert backend_name(train) == "torch_distributor"
    assert train.num_workers <= train_cluster["num_workers"]  # one process per worker
    gpu = "gpu" in train_cluster["spark_version"]
    assert train.use_gpu is gpu
    if gpu:
        assert train_cluster["spark_conf"]["spark.task.resource.gpu.amount"] == "1"
    assert (target == "prod") == gpu  # GPU training in prod, CPU in dev


@pytest.mark.parametrize("target", TARGETS)
def test_stream_job_catches_up_with_the_run_s_bundle(wheel: Path, target: str) -> None:
    root, resources, resolve, job_dict = checked_job("embedlib_stream", target)
    package, scripts, _ = wheel_metadata(wheel)
    assert job_dict["max_concurrent_runs"] == 1  # one query per checkpoint
    (task,) = job_dict["tasks"]
    assert task["python_wheel_task"]["package_name"] == package
    assert task["python_wheel_task"]["entry_point"] == "embedlib-score" and "embedlib-score" in scripts
    assert "--stream" in task["python_wheel_task"]["parameters"]
    stream = task_config(task)
    batch = task_config({t["task_key"]: t for t in resolve(resources["jobs"]["embedlib"])["tasks"]}["score"])
    variables = {**{k: v.get("default") for k, v in root["variables"].items()}, **root["targets"][target]["variables"]}
    assert stream.score.stream.trigger == "availableNow"
    assert stream.score.source == variables["stream_table"] != batch.score.source
    # the bundle and tables of the daily run: the same run
    assert (stream.name, stream.output_dir, stream.output_schema, stream.columns) == \
        (batch.name, batch.output_dir, batch.output_schema, batch.columns)
    assert stream.scores_output == batch.scores_output


def test_targets_have_their_own_catalogs_and_paths() -> None:
    root, _ = bundle_files()
    dev, prod = (root["targets"][t] for t in TARGETS)
    assert dev["mode"] == "development" and dev.get("default") is True and prod["mode"] == "production"
    for key in ("catalog", "output_dir", "source_table", "score_table", "stream_table"):
        assert dev["variables"][key] != prod["variables"][key]
    for target in (dev, prod):
        catalog = target["variables"]["catalog"]
        assert target["variables"]["output_dir"].startswith(f"/Volumes/{catalog}/")
        assert target["variables"]["source_table"].startswith(f"{catalog}.")


def test_auto_backend(spark, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    cfg = load_config([ROOT / "conf" / "base.yaml", ROOT / "conf" / "adult.yaml"])
    assert cfg.train.backend == "auto"
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    assert backend_name(cfg.train) == "local"
    local = resolve_backend(spark, cfg.train)
    assert (local.name, local.workers, local.on_driver) == ("local", 1, True)
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "17.3")
    assert backend_name(cfg.train) == "torch_distributor"
    # a single-node cluster (local master): the processes run on the driver
    distributed = resolve_backend(spark, cfg.train)
    assert (distributed.name, distributed.workers, distributed.on_driver) == ("torch_distributor", 2, True)
    explicit = load_config([], ["source.path=x.csv", "train.backend=horovod"]).train
    assert backend_name(explicit) == "horovod"  # an explicit backend is kept


def test_every_wheel_path_resolves_from_its_own_file_to_the_built_wheel(wheel: Path) -> None:
    """A path in a resource file is relative to that file (as the CLI resolves it): each job's wheel
    must name ``<repo>/dist/*.whl``, where the artifact's build (``python -m build --wheel`` in
    ``artifacts.embedlib_wheel.path``) writes, and its pattern must match the wheel just built."""
    root, _ = bundle_files()
    dist = (ROOT / root["artifacts"]["embedlib_wheel"]["path"] / "dist").resolve()
    seen = 0
    for path in resource_files(root):
        for name, job in yaml.safe_load(path.read_text())["resources"]["jobs"].items():
            found = wheel_paths(job)
            assert found, f"job {name} in {path.name} installs no wheel"
            for pattern in found:
                resolved = (path.parent / pattern).resolve()
                assert resolved.parent == dist, f"{path.name}: {pattern} resolves to {resolved.parent}, not {dist}"
                assert fnmatch.fnmatch(wheel.name, resolved.name), (pattern, wheel.name)
                seen += 1
    assert seen >= 6  # 4 tasks' libraries, the stream's, the serverless environment


@pytest.mark.parametrize("target", TARGETS)
def test_serverless_job_runs_the_same_run_on_its_environment(wheel: Path, target: str) -> None:
    """The serverless variant: no cluster, each task on the environment that installs the wheel,
    training in the task's process; the same run (names, paths, columns) as the classic job's."""
    _, resources, resolve, job_dict = checked_job("embedlib_serverless", target)
    package, scripts, _ = wheel_metadata(wheel)
    assert "job_clusters" not in job_dict
    (env,) = job_dict["environments"]
    assert env["spec"]["dependencies"] == ["../dist/*.whl"]
    classic = {t["task_key"]: task_config(t) for t in resolve(resources["jobs"]["embedlib"])["tasks"]}
    tasks = {t["task_key"]: t for t in job_dict["tasks"]}
    assert set(tasks) == set(classic)
    for key, task in tasks.items():
        assert task["environment_key"] == env["environment_key"]
        assert not {"job_cluster_key", "new_cluster", "existing_cluster_id", "libraries"} & set(task)
        assert task["python_wheel_task"]["package_name"] == package
        assert task["python_wheel_task"]["entry_point"] in scripts
        cfg = task_config(task)
        assert (cfg.name, cfg.output_dir, cfg.output_schema, cfg.columns, cfg.source) == \
            (classic[key].name, classic[key].output_dir, classic[key].output_schema, classic[key].columns,
             classic[key].source)
    train = task_config(tasks["train"]).train
    assert (train.backend, train.use_gpu) == ("local", False)  # serverless: no TorchDistributor, no GPU


def test_prod_runs_as_a_service_principal_with_permissions() -> None:
    """prod's jobs run as a service principal and carry permissions (checked against the jobs
    schema, as the CLI applies them to every job); dev runs as whoever deploys."""
    from databricks.bundles.jobs import Job

    root, resources = bundle_files()
    prod, dev = root["targets"]["prod"], root["targets"]["dev"]
    assert "run_as" not in dev and "permissions" not in dev
    resolve = resolver(root, "prod")
    run_as, permissions = resolve(prod["run_as"]), resolve(prod["permissions"])
    assert run_as["service_principal_name"]
    assert {p["level"] for p in permissions} >= {"CAN_MANAGE", "CAN_VIEW"}
    for name, job in resources["jobs"].items():
        job = Job.from_dict({**resolve(job), "run_as": run_as, "permissions": permissions})
        assert job.run_as is not None, name
