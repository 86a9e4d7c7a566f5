"""Fault injection, for the reliability tests and for drills on a real cluster.

Off unless the environment variable ``EMBEDLIB_FAULTS`` names a fault site:
``EMBEDLIB_FAULTS="site=value,site=value"``. On executors, pass it with
``--set spark.conf.spark.executorEnv.EMBEDLIB_FAULTS=...``; training workers on
the driver inherit the driver's environment.

=========================  =====================================================
site                       what happens
=========================  =====================================================
``train.after_epoch=N``    training raises after checkpointing epoch N (1-based)
``train.kill_rank=R:E``    the training worker of rank R kills itself (SIGKILL)
                           halfway through epoch E (1-based) of a run that
                           started fresh (not one resumed from a checkpoint,
                           such as a restart: ``train.max_restarts``)
``score.fail_attempts=N``  the first N attempts of the scoring task of
                           partition 0 raise (Spark retries up to
                           ``spark.task.maxFailures``)
``commit.kill=1``          a Delta write kills its process (SIGKILL) after
                           data files are written and before they are
                           committed: delta-rs between its staged files and
                           its commit; the connector (local paths) as soon
                           as its first data file appears
=========================  =====================================================
"""

from __future__ import annotations

import logging
import os

__all__ = ["ENV", "InjectedFault", "fault", "kill_self", "kill_when_files_appear"]

ENV = "EMBEDLIB_FAULTS"

log = logging.getLogger(__name__)


class InjectedFault(RuntimeError):
    """Raised at a fault site; never a ValueError, so it is never mistaken for bad input."""


def fault(site: str) -> str | None:
    """The value configured for ``site`` in ``EMBEDLIB_FAULTS``, or None (the normal case)."""
    raw = os.environ.get(ENV)
    if not raw:
        return None
    for item in raw.split(","):
        name, _, value = item.strip().partition("=")
        if name == site:
            return value or "1"
    return None


def kill_self(site: str) -> None:
    """Die at once, as ``kill -9`` would: no cleanup, no finally blocks, no flush."""
    import signal

    log.error("injected fault %s: killing process %d", site, os.getpid())
    logging.shutdown()
    os.kill(os.getpid(), signal.SIGKILL)


def kill_when_files_appear(site: str, folder: str, suffix: str = ".parquet") -> None:
    """Watch ``folder`` (a local path) from a thread and :func:`kill_self` once a new ``suffix``
    file appears in it: a writer dying while its files are written, before it commits them."""
    import threading
    import time

    def listing() -> set[str]:
        return set(os.listdir(folder)) if os.path.isdir(folder) else set()

    before = listing()

    def watch() -> None:
        while True:
            if any(name.endswith(suffix) for name in listing() - before):
                kill_self(site)
            time.sleep(0.002)

    threading.Thread(target=watch, name=f"fault-{site}", daemon=True).start()
