"""Building or reusing the SparkSession — the only place a session is made.

Library functions receive a session; only the CLI and jobs call
:func:`get_session`. The master is never hard-coded: a configured
``spark.master`` wins; under ``spark-submit`` or on Databricks the launcher's
master is kept; only a plain ``python``/``embedlib`` run with no master at all
gets ``local[*]``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from embedlib.config import SparkConfig, redact

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "LOCAL_DEFAULTS",
    "delta_connector_available",
    "get_session",
    "hadoop_fs",
    "launched_by_spark",
    "on_databricks",
    "quiet_task_failure_logs",
    "ship_wheels",
]

log = logging.getLogger(__name__)

#: Settings applied only when embedlib starts a local session itself.
LOCAL_DEFAULTS: dict[str, str] = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "8",
    "spark.sql.session.timeZone": "UTC",
    "spark.driver.memory": "4g",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}

#: Settings every session gets: Parquet files that delta-rs and Arrow read natively.
ALWAYS: dict[str, str] = {
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
}


def on_databricks() -> bool:
    """True in a Databricks runtime (``DATABRICKS_RUNTIME_VERSION`` is set)."""
    return bool(os.environ.get("DATABRICKS_RUNTIME_VERSION"))


def launched_by_spark() -> bool:
    """True under ``spark-submit``/``pyspark`` (gateway given) or on Databricks."""
    return bool(os.environ.get("PYSPARK_GATEWAY_PORT")) or on_databricks()


def get_session(cfg: SparkConfig, app_name: str = "embedlib") -> SparkSession:
    """Return the active session or build one from ``cfg``."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise ImportError(
            f"pyspark cannot be imported ({exc}): install Spark with pip install 'embedlib[spark]' "
            "(Databricks runtimes and spark-submit bring their own)"
        ) from exc

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
    settings: dict[str, str] = dict(ALWAYS)
    if master is not None and master.startswith("local"):
        settings.update(LOCAL_DEFAULTS)
        # Python workers must run this interpreter, not whatever python3 is on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        settings["spark.pyspark.python"] = os.environ["PYSPARK_PYTHON"]
    settings.update(cfg.conf)
    for key, value in settings.items():
        builder = builder.config(key, value)
    log.info("starting Spark session master=%s conf=%s", master or "(from launcher)", redact(cfg.conf))
    session = builder.getOrCreate()
    ship_wheels(session)
    return session


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


def _set_runtime_conf(spark: SparkSession, key: str, value: str) -> None:
    try:
        spark.conf.set(key, value)
    except Exception as exc:  # static confs cannot change on a running session
        from embedlib.errors import first_line

        reason = first_line(exc)
        log.warning("spark.conf %s cannot be set on the running session: %s", key,
                    reason.replace(value, "***") if value else reason)


def delta_connector_available(spark: SparkSession) -> bool:
    """Whether the session can read and write Delta through the Spark connector."""
    if on_databricks():
        return True
    extensions = spark.conf.get("spark.sql.extensions", "") or ""
    if "DeltaSparkSessionExtension" not in extensions:
        return False
    try:
        jvm = spark.sparkContext._jvm
        assert jvm is not None
        jvm.java.lang.Class.forName("io.delta.tables.DeltaTable")
    except Exception:
        return False
    return True


def hadoop_fs(spark: SparkSession, path: str) -> tuple[Any, Any]:
    """``(Hadoop FileSystem, Path)`` for ``path`` through the session's Hadoop configuration
    (the one place embedlib reaches the JVM's filesystems: s3a, abfss, dbfs, …)."""
    sc = spark.sparkContext
    jvm = sc._jvm
    assert jvm is not None
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    return hpath.getFileSystem(sc._jsc.hadoopConfiguration()), hpath  # type: ignore[union-attr]


#: Spark loggers that print a whole Java/Python stack trace for each failed task.
_TASK_FAILURE_LOGGERS = (
    "org.apache.spark.executor.Executor",
    "org.apache.spark.scheduler.TaskSetManager",
    "org.apache.spark.sql.execution.datasources.FileFormatWriter",
    "org.apache.spark.sql.execution.datasources.FileFormatDataWriter",
    "org.apache.spark.util.Utils",
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
