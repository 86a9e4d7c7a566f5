"""Where the loop runs: one :class:`Backend` per way of launching it, resolved once per run.

``train.backend`` names it (``auto``: ``torch_distributor`` on Databricks,
``local`` elsewhere); :func:`resolve_backend` checks, before any data is
encoded, that it can run here (Horovod importable, enough task slots) and fixes
where its workers run, whether they use a GPU and how many threads each gets.
``backend.run(fn, job)`` then calls ``fn(collective, job)`` on every rank and
returns rank 0's result:

=====================  ==============================================================
backend                runs
=====================  ==============================================================
``local``              the driver process (:class:`SingleProcess`)
``torch_distributor``  ``TorchDistributor(num_processes=…)``; DDP over gloo or nccl
``horovod``            ``horovod.spark.run(…, num_proc=…)`` with ``hvd.DistributedOptimizer``
=====================  ==============================================================

Each distributed rank leaves its state in its report file
(:class:`~embedlib.core.train.checkpoint.CheckpointStore`); when a run fails, the
reports say which rank died and the error says which checkpoint a rerun resumes from.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import torch

from embedlib.core.connect import is_connect
from embedlib.core.devices import DeviceError, resolve_device
from embedlib.core.errors import first_line
from embedlib.core.train.collective import Collective, HorovodCollective, SingleProcess, TorchDistributed
from embedlib.core.train.errors import TrainError, TrainFailure
from embedlib.core.train.loop import TrainJob
from embedlib.spark.session import default_parallelism, on_databricks

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from embedlib.core.config import TrainConfig

__all__ = [
    "Backend",
    "HorovodBackend",
    "LocalBackend",
    "TorchDistributorBackend",
    "TrainFn",
    "backend_name",
    "SparkTrials",
    "resolve_backend",
]

log = logging.getLogger(__name__)

#: What a backend runs on every rank: the training loop, or a stand-in in tests.
TrainFn = Callable[[Collective, TrainJob], dict[str, Any]]


class Backend(Protocol):
    """A resolved way to run the loop: its name, world size and where the workers run."""

    @property
    def name(self) -> str: ...

    @property
    def workers(self) -> int: ...

    @property
    def on_driver(self) -> bool: ...

    def run(self, fn: TrainFn, job: TrainJob) -> dict[str, Any]: ...


def backend_name(t: TrainConfig) -> str:
    """``train.backend`` made concrete: ``auto`` is ``torch_distributor`` on Databricks
    (HorovodRunner is deprecated after Runtime 15.4 LTS ML), ``local`` elsewhere."""
    if t.backend != "auto":
        return t.backend
    return "torch_distributor" if on_databricks() else "local"


def resolve_backend(spark: SparkSession | None, t: TrainConfig) -> Backend:
    """The backend ``t`` asks for, checked against this session (fails fast, before any work)."""
    name = backend_name(t)
    if name == "local":
        return LocalBackend(use_gpu=_resolve_gpu(spark, t, on_driver=True))
    if spark is None:
        raise TrainError(f"train.backend={name} needs a Spark session")
    if name == "torch_distributor":
        on_driver = _is_local_master(spark) if t.local_mode == "auto" else bool(t.local_mode)
        _check_slots(spark, t, on_driver)
        return TorchDistributorBackend(workers=t.num_workers, on_driver=on_driver,
                                       use_gpu=_resolve_gpu(spark, t, on_driver),
                                       threads=_threads_per_worker(spark, t, on_driver), restarts=t.max_restarts)
    if name == "horovod":
        if is_connect(spark):
            raise TrainError(
                "train.backend=horovod needs a classic Spark session (horovod.spark.run uses the SparkContext), "
                "but this is a Spark Connect session (spark.remote or SPARK_REMOTE, Databricks serverless or a "
                "standard-access cluster): use train.backend=torch_distributor, or local"
            )
        try:
            import horovod.spark  # noqa: F401
            import horovod.torch  # noqa: F401
        except ImportError as exc:
            raise TrainError(
                "train.backend=horovod but Horovod is not importable here "
                f"({exc}); install it with `make horovod` (builds horovod 0.28.1 with the C++17 fix, "
                "see .ci/build_horovod.sh) or use train.backend=torch_distributor"
            ) from exc
        _check_slots(spark, t, on_driver=False)
        return HorovodBackend(workers=t.num_workers, use_gpu=_resolve_gpu(spark, t, False),
                              threads=_threads_per_worker(spark, t, False), restarts=t.max_restarts)
    raise TrainError(f"unknown train.backend {name!r}; use local, torch_distributor or horovod")


@dataclass(frozen=True)
class LocalBackend:
    """The loop in the driver process."""

    use_gpu: bool = False
    name: str = "local"
    workers: int = 1
    on_driver: bool = True

    def run(self, fn: TrainFn, job: TrainJob) -> dict[str, Any]:
        job = replace(job, use_gpu=self.use_gpu)
        # Leave a core to Spark's own driver processes: torch's spinning threads on a
        # fully used machine slow each step down ~200x (measured, benchmarks/train_bench.py).
        before = torch.get_num_threads()
        torch.set_num_threads(max(1, min(before, (os.cpu_count() or 1) - 1)))
        try:
            return {**fn(SingleProcess(_device(job.use_gpu)), job), "restarts": 0}  # in this process: none
        finally:
            torch.set_num_threads(before)


@dataclass(frozen=True)
class TorchDistributorBackend:
    """``TorchDistributor``: one torchrun process per worker, DDP between them; launched again up to
    ``restarts`` times after a worker died (``train.max_restarts``)."""

    workers: int
    on_driver: bool
    use_gpu: bool
    threads: int
    restarts: int = 0
    name: str = "torch_distributor"

    def run(self, fn: TrainFn, job: TrainJob) -> dict[str, Any]:
        from pyspark.ml.torch.distributor import TorchDistributor

        job = replace(job, use_gpu=self.use_gpu, threads=self.threads)
        distributor = TorchDistributor(num_processes=self.workers, local_mode=self.on_driver, use_gpu=self.use_gpu)
        return _launched(self, job, lambda: distributor.run(ddp_worker, fn, job), self.restarts)


@dataclass(frozen=True)
class HorovodBackend:
    """``horovod.spark.run``: one rank per Spark task; launched again up to ``restarts`` times after a
    worker died (``train.max_restarts``)."""

    workers: int
    use_gpu: bool
    threads: int
    restarts: int = 0
    name: str = "horovod"
    on_driver: bool = False

    def run(self, fn: TrainFn, job: TrainJob) -> dict[str, Any]:
        import horovod.spark

        job = replace(job, use_gpu=self.use_gpu, threads=self.threads)

        def launch() -> Any:
            results = horovod.spark.run(horovod_worker, args=(fn, job), num_proc=self.workers)
            return results[0] if results else None

        return _launched(self, job, launch, self.restarts)


def _launched(backend: Backend, job: TrainJob, launch: Callable[[], Any], restarts: int) -> dict[str, Any]:
    """Run a distributed launch, and again (every launch resumes from the last checkpoint) after a
    worker died, up to ``restarts`` times; a failure becomes a :class:`TrainFailure` built from the
    reports. The metrics count the restarts."""
    attempt = 0
    while True:
        job.store.clear_reports()
        try:
            result = launch()
        except Exception as exc:
            failure = _failure(job, backend, exc, attempt)
            if not failure.lost or attempt >= restarts:
                raise failure from exc
            attempt += 1
            log.warning("%s — launching the %d workers again (restart %d of %d)", failure, backend.workers,
                        attempt, restarts)
            continue
        if result is None:
            raise TrainFailure(f"{backend.name} returned no result from rank 0")
        return {**result, "restarts": attempt}


# ------------------------------------------------------------------ worker side


def ddp_worker(fn: TrainFn, job: TrainJob) -> dict[str, Any]:
    """Entry point run by ``TorchDistributor`` on every process (under torchrun)."""
    import torch.distributed as dist

    _worker_logging("torch_distributor", os.environ.get("RANK", "?"), job)
    device = _device(job.use_gpu, int(os.environ.get("LOCAL_RANK", "0")))
    rank = int(os.environ.get("RANK", "0"))

    def run() -> dict[str, Any]:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        try:
            return fn(TorchDistributed(device), job)
        finally:
            dist.destroy_process_group()

    return _reporting(job, rank, run)


def horovod_worker(fn: TrainFn, job: TrainJob) -> dict[str, Any]:
    """Entry point run by ``horovod.spark.run`` on every rank."""
    import horovod.torch as hvd

    hvd.init()
    _worker_logging("horovod", hvd.rank(), job)
    device = _device(job.use_gpu, hvd.local_rank())
    return _reporting(job, int(hvd.rank()), lambda: fn(HorovodCollective(hvd, device), job))


def _worker_logging(backend: str, rank: Any, job: TrainJob) -> None:
    """Log which embedlib a worker runs (the installed package, or the wheel from --py-files): the
    folder of the ``embedlib`` package (``version`` is ``embedlib/core/version.py``)."""
    from embedlib.core import version

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("%s rank %s: embedlib %s from %s, torch %s, pid %d", backend, rank, version.__version__,
             os.path.dirname(os.path.dirname(version.__file__ or "?")), torch.__version__, os.getpid())
    # Several workers on one host each running os.cpu_count() OpenMP threads
    # oversubscribe the cores and slow training down by an order of magnitude.
    if job.threads > 0:
        torch.set_num_threads(job.threads)


def _device(use_gpu: bool, local_rank: int = 0) -> torch.device:
    try:
        device = resolve_device(use_gpu, "train.use_gpu", local_rank)
    except DeviceError as exc:
        raise TrainError(f"{exc} (this worker)") from None
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def _reporting(job: TrainJob, rank: int, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run a worker, leaving ``running`` / ``failed`` / ``done`` in its report file.

    A worker that is killed leaves ``running``: the driver reads the reports of a
    failed run to say which rank died and which only lost their peers. One that crashes
    in native code (a signal: segfault, abort) writes every thread's Python stack to its
    stderr, which the launcher prints in the driver's log.
    """
    if not faulthandler.is_enabled():
        faulthandler.enable(all_threads=True)

    def report(state: str, **extra: Any) -> None:
        job.store.write_report(rank, {"rank": rank, "state": state, "host": socket.gethostname(),
                                      "pid": os.getpid(), **extra})

    report("running")
    try:
        out = run()
    except BaseException as exc:
        report("failed", error=f"{type(exc).__name__}: {first_line(exc)}")
        raise
    report("done")
    return out


def _failure(job: TrainJob, backend: Backend, exc: BaseException, restarts: int) -> TrainFailure:
    """What the worker reports say about a failed distributed run (after ``restarts`` restarts), and how
    to resume; ``lost`` when a worker died mid-run."""
    died, failed, lost = [], [], False
    for rank in range(backend.workers):
        doc = job.store.read_report(rank)
        where = f"rank {rank}" + (f" (pid {doc['pid']} on {doc['host']})" if "pid" in doc else "")
        if doc["state"] == "running":
            lost = True
            died.append(f"{where} died without reporting an error (killed, out of memory, or its "
                        "executor was lost; a crash leaves its stack in the worker's log)")
        elif doc["state"] == "missing":
            died.append(f"{where} never started")
        elif doc["state"] == "failed":
            failed.append(f"{where} failed: {doc['error']}")
    epoch = job.store.latest_epoch()
    if epoch:
        resume = (f"the last checkpoint is epoch {epoch}, in {job.store.folder}; rerun the same "
                  f"`embedlib train` to resume from epoch {epoch + 1}")
    else:
        resume = "no epoch was checkpointed yet; a rerun starts from the beginning"
    what = "; ".join(died + failed) or f"{type(exc).__name__}: {first_line(exc)}"
    after = f" after {restarts} restart{'s' if restarts > 1 else ''}" if restarts else ""
    return TrainFailure(f"training on {backend.name} with {backend.workers} workers failed{after}: {what}. {resume}",
                        lost=lost)


# ------------------------------------------------------------------ driver side


def _is_local_master(spark: SparkSession) -> bool:
    return str(spark.conf.get("spark.master", "") or "").startswith("local")


def _resolve_gpu(spark: SparkSession | None, t: TrainConfig, on_driver: bool) -> bool:
    if t.use_gpu != "auto":
        return bool(t.use_gpu)
    if on_driver or spark is None:
        return torch.cuda.is_available()
    amount = spark.conf.get("spark.executor.resource.gpu.amount", "0") or "0"
    return float(amount) > 0


def _check_slots(spark: SparkSession, t: TrainConfig, on_driver: bool) -> None:
    if on_driver:
        available = os.cpu_count() or 1
        where = "this driver's CPU cores"
    else:
        available = default_parallelism(spark)
        where = "task slots in the cluster (spark.default.parallelism)"
    if t.num_workers > available:
        raise TrainError(
            f"train.num_workers={t.num_workers} but there are only {available} {where}; "
            f"lower train.num_workers to at most {available} or add executors"
        )


def _threads_per_worker(spark: SparkSession, t: TrainConfig, on_driver: bool) -> int:
    if on_driver:
        return max(1, (os.cpu_count() or 1) // t.num_workers)
    return max(1, int(spark.conf.get("spark.task.cpus", "1") or 1))


@dataclass(frozen=True)
class SparkTrials:
    """The size trials (:func:`embedlib.core.train.sizing.choose_size`) as Spark tasks, one per trial: a
    ``range`` of trial numbers, one per partition, mapped by :class:`_Trials` (the DataFrame API, so
    that it runs over Spark Connect too), as many at a time as the session has task slots."""

    spark: SparkSession
    slots: int
    threads: int

    @classmethod
    def of(cls, spark: SparkSession) -> SparkTrials:
        return cls(spark, default_parallelism(spark), int(spark.conf.get("spark.task.cpus", "1") or 1))

    def run(self, jobs: list[tuple[str, TrainJob]]) -> list[tuple[str, dict[str, Any]]]:
        import pickle

        rows = self.spark.range(0, len(jobs), 1, len(jobs)).mapInArrow(_Trials(jobs), "id LONG, result BINARY") \
            .collect()
        done = {int(r["id"]): pickle.loads(r["result"]) for r in rows}
        return [done[i] for i in range(len(jobs))]


@dataclass(frozen=True)
class _Trials:
    """The ``mapInArrow`` body of the trials: trial ``id`` → its pickled ``(name, metrics)``."""

    jobs: list[tuple[str, TrainJob]]

    def __call__(self, batches: Any) -> Any:
        import pickle

        import pyarrow as pa

        from embedlib.core.train.sizing import run_trial

        for batch in batches:
            ids = batch.column("id").to_pylist()
            results = [pickle.dumps(run_trial(self.jobs[i])) for i in ids]
            yield pa.RecordBatch.from_arrays([pa.array(ids, pa.int64()), pa.array(results, pa.binary())],
                                             names=["id", "result"])
