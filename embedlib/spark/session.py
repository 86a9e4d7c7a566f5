"""Building or reusing the SparkSession — the only place a session is made.

Library functions receive a session; only the CLI and jobs call
:func:`get_session`. The master is never hard-coded: a configured
``spark.master`` wins; under ``spark-submit`` or on Databricks the launcher's
master is kept; only a plain ``python``/``embedlib`` run with no master at all
gets ``local[*]``.

``spark.remote`` (or ``SPARK_REMOTE``) gives a Spark Connect session instead: what
Databricks serverless, standard-access clusters and Databricks Connect hand a program.
Everything embedlib runs on a session is written against the DataFrame API both kinds
share; the few things only a classic session has (its ``SparkContext``, the JVM) are
asked through :func:`is_connect` here and in :mod:`embedlib.spark.tables`.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

from embedlib.core import storage
from embedlib.core.config import ConfigError, DeltaConfig, SparkConfig, redact
from embedlib.core.connect import is_connect

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "DELTA_CONNECTOR",
    "LOCAL_DEFAULTS",
    "aws_jars",
    "connector_jars",
    "delta_connector_available",
    "get_session",
    "configure_storage",
    "default_parallelism",
    "is_connect",
    "launched_by_spark",
    "on_databricks",
    "quiet_task_failure_logs",
    "plain_strings",
    "ship_wheels",
]

log = logging.getLogger(__name__)

#: Settings applied only when embedlib starts a local session itself.
LOCAL_DEFAULTS: dict[str, str] = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "8",
    # the connector rebuilds a table's snapshot in 50 tasks by default: tiny tasks on a few local
    # cores (a connector score job of Adult's test set ran 86 s with 50, 56 s with 8)
    "spark.databricks.delta.snapshotPartitions": "8",
    "spark.sql.session.timeZone": "UTC",
    "spark.driver.memory": "4g",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}

#: Settings every session gets: Parquet files that delta-rs and Arrow read natively.
ALWAYS: dict[str, str] = {
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
}


#: The Delta connector pinned with this pyspark (``make setup`` fetches it, README "Delta").
DELTA_VERSION = "4.4.0"
#: What a session needs to use the connector (besides its jars).
DELTA_CONNECTOR: dict[str, str] = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def _spark_versions() -> tuple[str, str]:
    """(Spark ``major.minor``, Hadoop version) of the installed pyspark."""
    import glob

    import pyspark

    jars = os.path.join(os.path.dirname(pyspark.__file__), "jars")
    hadoop = sorted(glob.glob(os.path.join(jars, "hadoop-client-api-*.jar")))
    version = os.path.basename(hadoop[-1])[len("hadoop-client-api-"):-len(".jar")] if hadoop else ""
    return ".".join(pyspark.__version__.split(".")[:2]), version


def _jar_cache(folder: str | None) -> str:
    return folder or os.environ.get("EMBEDLIB_JARS") or os.path.expanduser("~/.cache/embedlib/jars")


def _jars_in(folder: str, *, fetched: bool = True) -> list[str]:
    """The jars in ``folder``; with ``fetched``, only once ``.ci/fetch_jars.sh`` completed it."""
    if not os.path.isdir(folder) or (fetched and not os.path.isfile(os.path.join(folder, ".complete"))):
        return []
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".jar"))


def connector_jars(folder: str | None = None) -> list[str]:
    """The Delta connector jars: every jar in ``folder`` (``delta.jars``), else those for the
    installed pyspark in the cache ``make setup`` fills (``.ci/fetch_jars.sh``); empty if none."""
    if folder is not None:
        return _jars_in(folder, fetched=False)
    spark_bin, _ = _spark_versions()
    return _jars_in(os.path.join(_jar_cache(None), f"delta-spark_{spark_bin}_2.13-{DELTA_VERSION}"))


def aws_jars() -> list[str]:
    """``hadoop-aws`` and the AWS SDK for the installed pyspark's Hadoop (``s3a://``) from the
    cache ``make setup`` fills, or empty."""
    _, hadoop = _spark_versions()
    return _jars_in(os.path.join(_jar_cache(None), f"hadoop-aws-{hadoop}"))


def on_databricks() -> bool:
    """True in a Databricks runtime (``DATABRICKS_RUNTIME_VERSION`` is set)."""
    return bool(os.environ.get("DATABRICKS_RUNTIME_VERSION"))


def launched_by_spark() -> bool:
    """True under ``spark-submit``/``pyspark`` (gateway given) or on Databricks."""
    return bool(os.environ.get("PYSPARK_GATEWAY_PORT")) or on_databricks()


_PARALLELISM: dict[str, int] = {}


def default_parallelism(spark: SparkSession) -> int:
    """The session's default parallelism (its cores, on a cluster), on either kind of session: a
    classic session's ``SparkContext`` says it; over Connect, ``spark.default.parallelism`` when set,
    else the partitions of a ``range`` (which Spark splits into exactly that many), asked once."""
    if not is_connect(spark):
        return int(spark.sparkContext.defaultParallelism)
    configured = spark.conf.get("spark.default.parallelism", None)
    if configured:
        return int(configured)
    key = str(spark.conf.get("spark.app.id", "")) + str(getattr(spark, "session_id", ""))
    if key not in _PARALLELISM:
        from pyspark.sql import functions as F

        last = spark.range(0, 1 << 20).select(F.spark_partition_id().alias("p")).agg(F.max("p")).first()
        _PARALLELISM[key] = int(last[0]) + 1 if last is not None and last[0] is not None else 1
    return _PARALLELISM[key]


def plain_strings(df: DataFrame) -> DataFrame:
    """``df`` with every column that holds strings cast to its own type by name (``string``,
    ``map<string,double>``, …): a no-op on a classic session. Over Spark Connect the client spells each
    string type's collation out, and the Delta connector then writes ``string collate UTF8_BINARY``
    into a table's schema, which delta-rs cannot read; a cast to a type given by name is parsed by
    the server into Spark's plain ``string``. Applied to what embedlib hands Spark a schema for
    (``mapInArrow`` outputs, the empty frame that creates a table)."""
    from pyspark.sql import functions as F

    if not any("string" in f.dataType.simpleString() for f in df.schema.fields):
        return df
    return df.select(*[F.col(f"`{f.name}`").cast(f.dataType.simpleString()).alias(f.name)
                       if "string" in f.dataType.simpleString() else F.col(f"`{f.name}`") for f in df.schema.fields])


def remote_of(cfg: SparkConfig) -> str | None:
    """The Spark Connect address of a run: ``spark.remote``, else ``SPARK_REMOTE``, else none."""
    return cfg.remote or os.environ.get("SPARK_REMOTE") or None


def get_session(cfg: SparkConfig, app_name: str = "embedlib", delta: DeltaConfig | None = None,
                s3a: bool = False) -> SparkSession:
    """Return the active session or build one from ``cfg``.

    A session embedlib starts itself loads the Delta connector's jars (unless
    ``delta.engine`` is ``delta-rs`` or ``spark.conf`` already brings Delta), and with
    ``s3a`` the ``hadoop-aws`` jars; each run chooses its engine when it opens its tables
    (:func:`embedlib.spark.tables.open_tables`). With ``spark.remote`` (or ``SPARK_REMOTE``) it is a Spark
    Connect session: ``local[N]`` starts a local server with those jars, an ``sc://`` address
    reaches a running one (whose jars are its own; only runtime settings are sent)."""
    delta = delta or DeltaConfig()
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise ImportError(
            f"pyspark cannot be imported ({exc}): install Spark with pip install 'embedlib[spark]' "
            "(Databricks runtimes and spark-submit bring their own)"
        ) from exc

    remote = remote_of(cfg)
    if remote is not None:
        return _connect_session(cfg, remote, app_name, delta, s3a)
    active = SparkSession.getActiveSession()
    if active is not None:
        for key, value in cfg.conf.items():
            _set_runtime_conf(active, key, value)
        ship_wheels(active)
        return active
    builder = SparkSession.builder.appName(app_name)
    master = cfg.master
    if master is None and not launched_by_spark():
        master = "local[*]"
    if master is not None:
        builder = builder.master(master)
    settings = _start_settings(cfg, delta, s3a, local=master is not None and master.startswith("local"),
                               jars=not launched_by_spark())  # a launcher's JVM already has its classpath
    for key, value in settings.items():
        builder = builder.config(key, value)
    log.info("starting Spark session master=%s conf=%s", master or "(from launcher)", redact(cfg.conf))
    session = builder.getOrCreate()
    ship_wheels(session)
    return session


def _connect_session(cfg: SparkConfig, remote: str, app_name: str, delta: DeltaConfig,
                     s3a: bool) -> SparkSession:
    """A Spark Connect session for ``remote`` (see :func:`get_session`)."""
    from pyspark.sql import SparkSession

    if cfg.master is not None:
        log.warning("spark.master %s is ignored: the run uses the Spark Connect server %s (spark.remote or "
                    "SPARK_REMOTE), whose master is the server's", cfg.master, remote)
    local = remote.startswith("local")
    # a server started here gets a local classic session's settings and jars; a running server keeps
    # its own static settings and gets the run's runtime ones once connected
    settings = _start_settings(cfg, delta, s3a, local=True, jars=True) if local else dict(cfg.conf)
    # pyspark's builder also switches pyspark.sql.functions to Connect's columns for this process (a
    # process holds classic or Connect sessions, not both: pyspark refuses a remote one beside a classic)
    builder = SparkSession.builder.remote(remote).appName(app_name)
    for key, value in settings.items() if local else ():
        builder = builder.config(key, value)
    log.info("starting Spark Connect session remote=%s conf=%s", remote, redact(cfg.conf))
    session = builder.getOrCreate()
    for key, value in settings.items() if not local else ():
        _set_runtime_conf(session, key, value)
    return session


def _start_settings(cfg: SparkConfig, delta: DeltaConfig, s3a: bool, *, local: bool, jars: bool) -> dict[str, str]:
    """The settings of a session embedlib starts (classic, or a local Connect server): always
    :data:`ALWAYS`; for a local master :data:`LOCAL_DEFAULTS` and this interpreter for the Python
    workers; with ``s3a`` the endpoint, region and addressing from the environment; the user's
    ``spark.conf`` over those; with ``jars`` the Delta connector's (and hadoop-aws) jars."""
    settings: dict[str, str] = dict(ALWAYS)
    if local:
        settings.update(LOCAL_DEFAULTS)
        # Python workers must run this interpreter, not whatever python3 is on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        settings["spark.pyspark.python"] = os.environ["PYSPARK_PYTHON"]
    if s3a:  # the user's keys win
        settings.update(storage.hadoop_conf(storage.from_environment()))
    settings.update(cfg.conf)
    if jars:
        settings.update(_jar_settings(cfg, delta, s3a))
    return settings


def _jar_settings(cfg: SparkConfig, delta: DeltaConfig, s3a: bool) -> dict[str, str]:
    """``spark.jars`` (the user's first) and the Delta extension for a session embedlib starts."""
    jars = [j for j in (cfg.conf.get("spark.jars") or "").split(",") if j]
    out: dict[str, str] = {}
    brings_delta = "spark.sql.extensions" in cfg.conf or "spark.jars.packages" in cfg.conf
    if delta.engine != "delta-rs" and not brings_delta:
        found = connector_jars(delta.jars)
        if found:
            jars += found
            out.update(DELTA_CONNECTOR)
        elif delta.engine == "connector":
            spark_bin, _ = _spark_versions()
            raise ConfigError(
                f"delta.engine is 'connector' but no Delta connector jars were found in "
                f"{delta.jars or _jar_cache(None)}: run `make setup` (it fetches io.delta:delta-spark_{spark_bin}_2.13:"
                f"{DELTA_VERSION} there), set delta.jars to a folder of them, or pass spark.jars.packages"
            )
    if s3a:
        found = aws_jars()
        if not found:
            log.warning("s3a:// paths but no hadoop-aws jars in %s: run `make setup`, or pass "
                        "spark.jars.packages=org.apache.hadoop:hadoop-aws:<Hadoop version>", _jar_cache(None))
        jars += found
    if jars:
        out["spark.jars"] = ",".join(jars)
    return out


def ship_wheels(spark: SparkSession) -> list[str]:
    """Put the wheels given to ``spark-submit --py-files`` on the executors' Python path.

    Spark copies every ``--py-files`` file into each executor's working directory
    but puts only ``.py``, ``.zip``, ``.egg`` and ``.jar`` files on the Python
    workers' ``sys.path``; a ``.whl`` (a zip whose root holds the package) is left
    out, and processes started from a task (torchrun under TorchDistributor,
    Horovod's ranks) never see ``sys.path`` changes anyway. Adding the wheels'
    names, relative to that working directory, to the workers' ``PYTHONPATH``
    (``SparkContext.environment``, sent with every Python function) covers both.
    Local masters need nothing: their workers inherit the driver's ``PYTHONPATH``,
    which spark-submit already set. Returns the wheel names added.
    """
    from urllib.parse import urlsplit

    if is_connect(spark):  # a Connect client ships Python with spark.addArtifacts, not --py-files
        return []
    sc = spark.sparkContext
    if str(sc.master or "").startswith("local"):
        return []
    files = (sc.getConf().get("spark.submit.pyFiles") or "").split(",")
    wheels = [os.path.basename(urlsplit(f).path) for f in files if f.strip().lower().endswith(".whl")]
    parts = [p for p in str(sc.environment.get("PYTHONPATH", "")).split(os.pathsep) if p]
    added = [w for w in wheels if w not in parts]
    if added:
        sc.environment["PYTHONPATH"] = os.pathsep.join(parts + added)
        log.info("--py-files wheel(s) %s put on the executors' PYTHONPATH", ", ".join(added))
    return added


def configure_storage(spark: SparkSession) -> None:
    """Take the session's ``spark.hadoop.fs.s3a.*`` keys for this process's pyarrow and delta-rs
    clients (:func:`embedlib.core.storage.use_session_settings`), and hand them to the Python workers of
    the session's later jobs (the environment of their Python functions, ``SparkContext.environment``:
    never logged nor shown in the UI). Over Spark Connect the keys are read one by one and the
    workers keep their own environment (the server's: there is no ``SparkContext`` to carry it)."""
    if is_connect(spark):
        keys = [f"spark.hadoop.fs.s3a.{k}" for k in (*storage.SPARK_KEYS, "path.style.access")]
        storage.use_session_settings(storage.from_spark_conf({k: v for k in keys if (v := spark.conf.get(k, None))}))
        return
    sc = spark.sparkContext
    own = storage.from_spark_conf(dict(sc.getConf().getAll()))
    storage.use_session_settings(own)
    for name, var in storage.WORKER_ENV.items():
        value = getattr(own, name)
        if value:
            sc.environment[var] = value


def _set_runtime_conf(spark: SparkSession, key: str, value: str) -> None:
    try:
        spark.conf.set(key, value)
    except Exception as exc:  # static confs cannot change on a running session
        from embedlib.core.errors import first_line

        reason = first_line(exc)
        log.warning("spark.conf %s cannot be set on the running session: %s", key,
                    reason.replace(value, "***") if value else reason)


def delta_connector_available(spark: SparkSession) -> bool:
    """Whether the session can read and write Delta through the Spark connector.

    A connector built for another Spark version than the session's is an error naming both
    (it would fail later, on some call, with a JVM linkage error)."""
    import re

    if on_databricks():
        return True
    extensions = spark.conf.get("spark.sql.extensions", "") or ""
    if "DeltaSparkSessionExtension" not in extensions:
        return False
    if is_connect(spark):  # the server's classpath cannot be asked from here: its extension says Delta
        return True
    try:
        jvm = spark.sparkContext._jvm
        assert jvm is not None
        # Spark's loader: jars from spark.jars live in a child of the system class loader
        cls = jvm.org.apache.spark.util.Utils.classForName("io.delta.tables.DeltaTable", True, False)
        source = str(cls.getProtectionDomain().getCodeSource().getLocation())
    except Exception:
        return False
    built = re.search(r"delta-spark_(\d+\.\d+)_2\.\d+-([\w.\-]+?)\.jar", source)
    running = ".".join(str(spark.version).split(".")[:2])
    if built is not None and built.group(1) != running:
        raise ConfigError(
            f"the Delta connector on this session ({source.rsplit('/', 1)[-1]}) is built for Spark "
            f"{built.group(1)}, but Spark is {spark.version}: use io.delta:delta-spark_{running}_2.13 (Delta "
            f"{DELTA_VERSION} for Spark 4.2; README \"Delta\"), or set delta.engine to delta-rs"
        )
    return True


#: Spark loggers that print a whole Java/Python stack trace for each failed task.
_TASK_FAILURE_LOGGERS = (
    "org.apache.spark.executor.Executor",
    "org.apache.spark.scheduler.TaskSetManager",
    "org.apache.spark.sql.execution.datasources.FileFormatWriter",
    "org.apache.spark.sql.execution.datasources.FileFormatDataWriter",
    "org.apache.spark.util.Utils",
    "org.apache.spark.sql.delta.files.DeltaFileFormatWriter",  # the connector's writer
    # "Assume no metadata directory" with a stack trace, before every read of a path that fails
    "org.apache.spark.sql.execution.streaming.sinks.FileStreamSink",
)


def quiet_task_failure_logs(spark: SparkSession) -> None:
    """Keep Spark's per-task stack traces off stderr; the CLI reports the failure in one line."""
    try:
        jvm = spark.sparkContext._jvm
        assert jvm is not None
        level = jvm.org.apache.logging.log4j.Level.OFF
        for name in _TASK_FAILURE_LOGGERS:
            jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(name, level)
    except Exception as exc:  # another logging backend: its traces stay, nothing else changes
        log.debug("could not quiet Spark's task failure logs: %s", exc)
