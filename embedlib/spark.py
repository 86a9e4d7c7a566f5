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
from typing import TYPE_CHECKING

from embedlib.config import SparkConfig, redact

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["LOCAL_DEFAULTS", "delta_connector_available", "get_session", "launched_by_spark", "ship_wheels"]

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


def launched_by_spark() -> bool:
    """True under ``spark-submit``/``pyspark`` (gateway given) or on Databricks."""
    return bool(os.environ.get("PYSPARK_GATEWAY_PORT") or os.environ.get("DATABRICKS_RUNTIME_VERSION"))


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
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        log.warning("spark.conf %s cannot be set on the running session: %s", key,
                    reason.replace(value, "***") if value else reason)


def delta_connector_available(spark: SparkSession) -> bool:
    """Whether the session can read and write Delta through the Spark connector."""
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
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
