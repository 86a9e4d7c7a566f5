"""Scoring throughput: the score job vs the same bundle in plain Python vs a row-at-a-time UDF.

    .venv/bin/python benchmarks/score_bench.py [--rows 1000000 4000000] [--master local[2]] [--size large]
                                               [--delta-engines connector delta-rs]
                                               [--batch-size 10000] [--udf-rows 20000]
                                               [--ceiling-rows 1000000] [--profile 25] [--summary]
                                               [--details flagged all none]

Reference model: 10 categoricals of ~100 values each (skewed, 1 % nulls) and 20
numerics (1 % nulls), plus an ``id`` column. For each size in ``--rows`` the table is
generated in Spark, deterministically (``spark.range`` + ``xxhash64`` of the id), and
written once to Parquet in a temporary directory (at most 500,000 rows per file, at
least one file per core). On a small table from the same generator (the warm-up
table, the first 20,000 ids), embedlib builds the vocabulary (``build_vocabulary``,
spark engine; every value is seen there); an *untrained* ``EmbeddingAutoencoder`` of the
default kind and ``--size``'s shape (large by default: the costliest ``model.size: auto`` can
pick; torch seeded) goes into a bundle with
``save_bundle``, which is loaded back with ``load_bundle``; its threshold is the 0.99 quantile of
the warm-up rows' ranking (as training sets ``score.threshold_quantile``), so ~1 % of rows are
flagged, the rows ``score.detail: flagged`` writes the detail of. Training quality does not
change the work done per row, so throughput does not depend on it. The timed job uses the first of
``--details`` (default: flagged, the job's default); each other detail is one more job, printed
with its rows/s and the bytes per scored row in the table's data files.

Then, in one process, for each size (all figures wall-clock, ``time.perf_counter``):

1. **score job**: ``spark.read.parquet`` → ``score_frame(spark, df, bundle, ids=("id",))``
   → ``tables(spark).write(frame, <tmp>, mode="overwrite")`` (Spark writes the Parquet
   files, the driver commits them as one Delta transaction through delta-rs, or the
   Delta connector where the session has it) — what the score job does, minus its
   ``Observation`` summary metrics. Timed end to end. Before each size an untimed
   warm-up scores a small table the same way, so the Python workers exist and hold
   the bundle (``cached_bundle``); the first, cold warm-up is printed separately, it
   is the one-time cost a real job pays on top. rows/s per core divides by the
   concurrent tasks (``defaultParallelism``; each task gets one core and, through
   ``cached_bundle``, one torch thread). The CPU seconds (user + system, from ``/proc``)
   of Spark's JVM and of the pyspark workers during this job are printed beside the
   core-seconds it had: what the JVM's read, Arrow conversions and write take from the
   cores the workers would score on. With ``--summary`` the job is also timed as
   ``embedlib score`` runs it (``score_into``: the run summary — an Observation of rows,
   anomalies and quantiles, the workers' per-column counts — and the ``score_runs`` row).
2. **ceiling**: the first ``--ceiling-rows`` rows of the same Parquet file read with
   pyarrow into ``--batch-size`` Arrow tables *before* timing, then
   ``build_output(bundle, table, threshold=…, top_reasons=3, emit_code=False)`` per
   table — exactly what each executor does per batch — in this plain Python process
   with ``torch.set_num_threads(1)``: the per-core figure. The line below it times
   ``score_rows(bundle, table)`` alone on the same tables (encode + forward pass + softmax),
   so the rest of ``build_output`` (contributions map, top reasons, flags) is the
   difference.
3. **row UDF**: a plain ``pyspark.sql.functions.udf`` returning a double, called once
   per row with the 30 raw values; it builds a one-row Arrow table and calls
   ``score_rows`` on it, with the bundle held by ``embedlib.spark.workers.cached_bundle``
   (a module-level cache: loaded once per Python worker, never per row). It runs on
   ``--udf-rows`` rows spread over the whole id range (``id % step == 0``), written to
   their own Parquet (one file per core, untimed), and its output (``id`` and the
   score only — less than the job writes) goes to Delta with ``write_table``. Its
   scores are checked against the job's for the same ids.

Printed: rows/s and rows/s per core of each method, then per size the ratios
*job per core ÷ ceiling per core* (goal ≥ 0.8, issue 16; 0.5 before) and *job ÷ row UDF* (goal ≥ 20×), the
growth of the job time from the smallest to the largest size against the growth of
the row count (goal: linear, i.e. time ratio ÷ row ratio ≈ 1; fixed costs make small
sizes look sub-linear), and peak memory: ``ru_maxrss`` of this (driver) process
(RUSAGE_SELF; it holds the ceiling's pre-loaded batches too) and of its reaped
children (RUSAGE_CHILDREN — Spark's JVM and the Python workers are still running
when the table is printed, so on Linux they are not in it), and the peak RSS
(``VmHWM`` in ``/proc``, sampled after each Spark phase) of the JVM and of the
largest Python worker. The load average is printed at the start
and the end: on a busy machine the figures mean little. Progress goes to stderr, the
table to stdout. No figure is asserted.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import re
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

N_CAT = 10
CARDINALITY = 100
N_NUM = 20
ROWS_PER_FILE = 500_000
WARMUP_ROWS = 20_000
GOAL_CEILING = 0.8
GOAL_UDF = 20.0
GOAL_COST = 2.0  # the default model may cost at most this many times the first version's per row

CATS = [f"c{i}" for i in range(N_CAT)]
NUMS = [f"x{j}" for j in range(N_NUM)]


@dataclass
class Result:
    """One timed method on one size."""

    method: str
    rows: int
    seconds: float
    cores: int

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("nan")

    @property
    def per_core(self) -> float:
        return self.rate / self.cores


@dataclass
class Memory:
    """Peak RSS (KiB) of the processes under this one, sampled after each Spark phase."""

    jvm: int = 0
    worker: int = 0
    workers_seen: set[int] = field(default_factory=set)

    def sample(self) -> None:
        for pid in _descendants(os.getpid()):
            cmd = _cmdline(pid)
            hwm = _vm_hwm_kib(pid)
            if "java" in os.path.basename(cmd.split(" ", 1)[0]) or "org.apache.spark" in cmd:
                self.jvm = max(self.jvm, hwm)
            elif "pyspark" in cmd:  # pyspark.daemon and the workers it forks (same command line)
                self.worker = max(self.worker, hwm)
                self.workers_seen.add(pid)


def _log(msg: str) -> None:
    sys.stderr.write(f"[score_bench {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


# ---------------------------------------------------------------------------- /proc


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _vm_hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds (user + system) used so far by Spark's JVM and by the pyspark processes under this one."""
    tick = os.sysconf("SC_CLK_TCK")
    jvm = python = 0.0
    for pid in _descendants(os.getpid()):
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds = (int(fields[11]) + int(fields[12])) / tick
        cmd = _cmdline(pid)
        if "java" in os.path.basename(cmd.split(" ", 1)[0]) or "org.apache.spark" in cmd:
            jvm += seconds
        elif "pyspark" in cmd:
            python += seconds
    return jvm, python


@dataclass(frozen=True)
class CpuSplit:
    """Where a timed Spark job's CPU went: the JVM (read, Arrow conversion, write) and the Python workers."""

    jvm: float
    python: float
    wall: float
    cores: int


def timed_cpu(fn: Callable[[], Any], cores: int) -> CpuSplit:
    jvm0, py0 = _cpu_seconds()
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    jvm1, py1 = _cpu_seconds()
    return CpuSplit(jvm1 - jvm0, py1 - py0, wall, cores)


def _maxrss_kib(who: int) -> int:
    rss = resource.getrusage(who).ru_maxrss
    return rss // 1024 if sys.platform == "darwin" else rss  # bytes on macOS, KiB on Linux


def _mib(kib: int) -> str:
    return f"{kib / 1024:,.0f} MiB" if kib else "n/a"


# ---------------------------------------------------------------------------- data


def generate(spark: Any, rows: int, path: str, cores: int) -> None:
    """``rows`` rows: ``id``, 10 skewed categoricals of ~100 values, 20 numerics."""
    from pyspark.sql import functions as F

    def unit(seed: int) -> Any:
        return (F.abs(F.xxhash64(F.col("id"), F.lit(seed))) % 1_000_003) / 1_000_003.0

    cols = [F.col("id")]
    for i, name in enumerate(CATS):
        u = unit(i)
        value = F.floor(F.lit(CARDINALITY) * u * u).cast("long")  # skewed: low values frequent
        cols.append(F.when(u < 0.01, None).otherwise(F.concat(F.lit(f"v{i}_"), value.cast("string"))).alias(name))
    for j, name in enumerate(NUMS):
        x = F.lit(float(j)) + F.lit(10.0 * (j + 1)) * unit(100 + j)
        cols.append(F.when(unit(200 + j) < 0.01, None).otherwise(x).alias(name))
    files = max(cores, -(-rows // ROWS_PER_FILE))
    spark.range(0, rows, 1, files).select(*cols).write.parquet(path)


#: The first version's model: a plain autoencoder, hidden 64-32, bottleneck 8, ranked by nats.
FIRST_VERSION = ["model.kind=autoencoder", "model.hidden=[64,32]", "model.bottleneck=8", "score.rank_by=nats"]


def make_bundle(spark: Any, data: str, folder: str, name: str, extra: list[str] | None = None) -> Any:
    """Vocabulary on ``data``, an untrained model of the configuration's default shape (or ``extra``'s),
    calibrated on the same rows when the configuration ranks by the calibrated score, saved and
    loaded back as a bundle."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from embedlib.core.bundle import load_bundle, save_bundle
    from embedlib.core.calibration import Calibration
    from embedlib.core.config import load_config
    from embedlib.core.model import EmbeddingAutoencoder
    from embedlib.spark.train import spec_for
    from embedlib.spark.train.job import contributions_of
    from embedlib.spark.vocab import build_vocabulary

    cfg = load_config([], [f"source.path={data}", "source.format=parquet", f"columns.categorical={CATS}",
                           f"columns.numeric={NUMS}", "columns.id=[id]", *(extra or [])])
    vocab = build_vocabulary(spark, spark.read.parquet(data), cfg, source=data)
    spec = spec_for(vocab, cfg)
    torch.manual_seed(0)
    model = EmbeddingAutoencoder(spec)
    calibration = None
    if cfg.score.rank_by == "calibrated":
        from embedlib.core.encode import Encoder

        encoder = Encoder.for_vocab(vocab)
        shard = f"{folder}/encoded-{name}.parquet"
        pq.write_table(pa.Table.from_batches([encoder.encode(pq.read_table(data.replace("file://", "")))]), shard)
        calibration = Calibration.fit(contributions_of(model, [shard], encoder, max_rows=20_000))
    path = f"{folder}/bundle-{name}"
    save_bundle(path, model=model, vocab=vocab, threshold=100.0, threshold_quantile=0.99, metrics={},
                model_config={}, calibration=calibration, rank_by=cfg.score.rank_by,
                thresholds={cfg.score.rank_by: 100.0})
    # the threshold as training sets it (score.threshold_quantile of the rows' ranking): ~1 % flagged,
    # the share score.detail: flagged writes the detail of
    import numpy as np

    from embedlib.core.inference import score_rows

    ranking = score_rows(load_bundle(path), pq.read_table(data.replace("file://", ""))).ranking
    threshold = float(np.quantile(ranking, 0.99))
    save_bundle(f"{path}-q", model=model, vocab=vocab, threshold=threshold, threshold_quantile=0.99, metrics={},
                model_config={}, calibration=calibration, rank_by=cfg.score.rank_by,
                thresholds={cfg.score.rank_by: threshold})
    return load_bundle(f"{path}-q")


# ------------------------------------------------------------------------- methods


def score_job(spark: Any, bundle: Any, data: str, out: str, keep_all: bool = False, detail: str = "flagged") -> None:
    """What the score job does: read, ``score_frame``, one Delta commit. The id column is passed
    through (``score.passthrough`` with an id declared), or with ``keep_all`` every source column
    (its default when no id is declared); ``detail`` is ``score.detail`` (the job's default, flagged)."""
    from embedlib.spark.score import score_frame

    df = spark.read.parquet(data)
    frame = score_frame(spark, df, bundle, ids=tuple(df.columns) if keep_all else ("id",), detail=detail)
    tables(spark).write(frame, out, mode="overwrite")


def score_job_with_summary(spark: Any, bundle: Any, data: str, out: str) -> None:
    """The score job as ``embedlib score`` runs it: ``score_into``, with its run summary (the
    Observation's row count, anomalies and quantiles, the workers' per-column counts) and the
    summary row in ``score_runs``."""
    from embedlib.core.config import load_config
    from embedlib.spark.score import Scoring, score_into

    cfg = load_config([], [f"source.path={data}", "source.format=parquet", f"columns.categorical={CATS}",
                           f"columns.numeric={NUMS}", "columns.id=[id]", f"output_dir={out}", "name=bench"])
    scoring = Scoring(bundle, cfg.source, bundle.rank_by, bundle.threshold, tables(spark).engine)
    score_into(spark, cfg, scoring, spark.read.parquet(data), ("id",), "bench", ("score-bench", 1),
               time.perf_counter())


#: The Delta engine the jobs write through (``--delta-engines``; ``delta.engine``), set as the run goes.
ENGINE = ["auto"]


def tables(spark: Any) -> Any:
    """The session's tables through :data:`ENGINE` (what a job with that ``delta.engine`` opens)."""
    from embedlib.core.config import DeltaConfig
    from embedlib.spark.tables import open_tables

    return open_tables(spark, DeltaConfig(engine=ENGINE[0]))  # type: ignore[arg-type]


def data_bytes(folder: str) -> int:
    """Bytes of a Delta table's data files (its log aside)."""
    root = Path(folder.replace("file://", ""))
    return sum(p.stat().st_size for p in root.rglob("*.parquet") if "_delta_log" not in p.parts)


def load_batches(bundle: Any, data: str, rows: int, batch_size: int) -> list[Any]:
    """The first ``rows`` rows as ``batch_size``-row Arrow tables (untimed)."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    table = ds.dataset(data, format="parquet").head(rows, columns=list(bundle.spec.columns)).combine_chunks()
    return [pa.Table.from_batches([b]) for b in table.to_batches(max_chunksize=batch_size)]


def time_batches(fn: Callable[[Any], Any], batches: list[Any]) -> float:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fn(batches[0])  # warm-up, untimed
        start = time.perf_counter()
        for batch in batches:
            fn(batch)
        return time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)


def _ceiling_process(bundle_path: str, data: str, rows: int, batch_size: int, barrier: Any, results: Any) -> None:
    """One of ``ceiling_all_cores``' processes: load, wait for the others, time ``build_output``."""
    from embedlib.core.bundle import load_bundle
    from embedlib.core.output import build_output

    bundle = load_bundle(bundle_path)
    batches = load_batches(bundle, data, rows, batch_size)
    fn = functools.partial(build_output, bundle, threshold=bundle.threshold, top_reasons=3, emit_code=False)
    fn(batches[0])  # warm-up, before the common start
    barrier.wait()
    results.put(time_batches(fn, batches))


def ceiling_all_cores(bundle: Any, data: str, rows: int, batch_size: int, cores: int) -> list[float]:
    """The ceiling run in ``cores`` processes at once, each one thread on its own copy of the
    batches (the timed passes start together): seconds per process. What one core gives when
    every core is busy — the score job's situation — against the ceiling's idle machine."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(cores), ctx.Queue()
    procs = [ctx.Process(target=_ceiling_process, args=(str(bundle.path), data, rows, batch_size, barrier, results))
             for _ in range(cores)]
    for proc in procs:
        proc.start()
    seconds = [results.get(timeout=3600) for _ in procs]
    for proc in procs:
        proc.join()
    return seconds


def profile_batches(fn: Callable[[Any], Any], batches: list[Any], top: int) -> str:
    """``fn`` over ``batches`` in one thread under cProfile: its ``top`` functions by own time."""
    import cProfile
    import io
    import pstats

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    profiler = cProfile.Profile()
    try:
        profiler.enable()
        for batch in batches:
            fn(batch)
        profiler.disable()
    finally:
        torch.set_num_threads(threads)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()


def row_udf(bundle: Any) -> Callable[..., float]:
    """The per-row scorer: one-row Arrow table → ``score_rows``; bundle cached per worker."""

    from embedlib.spark.workers import bundle_files_or_path

    files = bundle_files_or_path(bundle)  # as the job carries it (no broadcast variable)
    bundle_id = bundle.bundle_id
    columns = list(bundle.spec.columns)
    n_cat = len(bundle.spec.categorical)

    def score_row(*values: Any) -> float:
        import pyarrow as pa

        from embedlib.core.inference import score_rows
        from embedlib.spark.workers import cached_bundle

        scorer = cached_bundle(bundle_id, files)
        table = pa.table({
            name: pa.array([value], pa.string() if k < n_cat else pa.float64())
            for k, (name, value) in enumerate(zip(columns, values))
        })
        return float(score_rows(scorer, table).score[0])

    return score_row


def udf_job(spark: Any, bundle: Any, scorer: Callable[..., float], data: str, out: str,
            where: str | None = None) -> None:
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType


    fn = F.udf(scorer, DoubleType(), useArrow=False)
    spec = bundle.spec
    args = [F.col(c).cast("string") for c in spec.categorical] + [F.col(c).cast("double") for c in spec.numeric]
    source = spark.read.parquet(data)
    if where is not None:
        source = source.where(where)
    frame = source.select("id", fn(*args).alias("anomaly_score"))
    tables(spark).write(frame, out, mode="overwrite")


def _max_score_diff(spark: Any, job_out: str, udf_out: str) -> tuple[int, float]:
    from pyspark.sql import functions as F


    udf = tables(spark).read(udf_out).withColumnRenamed("anomaly_score", "u")
    job = tables(spark).read(job_out).select("id", "anomaly_score")
    row = udf.join(job, "id").agg(F.count(F.lit(1)).alias("n"),
                                  F.max(F.abs(F.col("u") - F.col("anomaly_score"))).alias("d")).first()
    return int(row["n"]), float(row["d"] if row["d"] is not None else float("nan"))


def _cores(spark: Any, master: str) -> int:
    parallelism = int(spark.sparkContext.defaultParallelism)
    if parallelism > 0:
        return parallelism
    match = re.fullmatch(r"local\[(\d+|\*)(?:,\d+)?\]", master)
    if match is None:
        return 1
    if match.group(1) == "*":
        return os.cpu_count() or 1
    return int(match.group(1))


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--delta-engines", nargs="+", default=["connector", "delta-rs"],
                        choices=["connector", "delta-rs"],
                        help="the score job is timed writing through each (the first is the one in the main table)")
    parser.add_argument("--size", default="large", choices=["small", "medium", "large"],
                        help="model.size of the default bundle (large: the costliest model.size auto can pick)")
    parser.add_argument("--passthrough-all", action="store_true",
                        help="also time the score job passing every source column through (the default "
                             "of score.passthrough when no id is declared) beside the id only")
    parser.add_argument("--summary", action="store_true",
                        help="also time the score job with its run summary (score_into, as `embedlib score` runs)")
    parser.add_argument("--details", nargs="+", default=["flagged", "all", "none"], choices=["flagged", "all", "none"],
                        help="score.detail of the timed job (the first) and of one more job each (rows/s, bytes per row)")
    parser.add_argument("--batch-size", type=int, default=10_000, help="rows per Arrow batch (job and ceiling)")
    parser.add_argument("--udf-rows", type=int, default=20_000, help="rows scored by the row-at-a-time UDF")
    parser.add_argument("--ceiling-rows", type=int, default=1_000_000,
                        help="rows scored in plain Python per size (0: all)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also profile the ceiling (cProfile, one more pass) and print its N costliest functions")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    sizes = sorted(set(args.rows))
    load_start = os.getloadavg()

    from embedlib.core.config import SparkConfig
    from embedlib.core.inference import score_rows
    from embedlib.core.output import build_output
    from embedlib.spark.session import delta_connector_available, get_session

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = get_session(
        SparkConfig(master=args.master, conf={
            "spark.sql.shuffle.partitions": "8",
            "spark.sql.execution.arrow.maxRecordsPerBatch": str(args.batch_size),
        }),
        app_name="score-bench",
    )
    spark.sparkContext.setLogLevel("ERROR")
    cores = _cores(spark, args.master)
    memory = Memory()
    results: dict[int, list[Result]] = {}
    checks: dict[int, tuple[int, float]] = {}
    partitions: dict[int, int] = {}
    by_engine: dict[int, dict[str, Result]] = {}
    kept_all: dict[int, Result] = {}  # --passthrough-all
    by_detail: dict[int, dict[str, tuple[Result, int]]] = {}  # --details: the job and its bytes on disk
    with_summary: dict[int, Result] = {}  # --summary
    summary_bytes: dict[int, int] = {}  # --summary: its table's data files (run_id and scored_at included)
    cpu: dict[int, CpuSplit] = {}
    busy: dict[int, list[Result]] = {}  # the ceiling with every core busy
    profiles: dict[int, str] = {}  # --profile
    ENGINE[0] = args.delta_engines[0]
    with tempfile.TemporaryDirectory(prefix="score-bench-") as tmp:
        _log(f"generating warm-up data and the bundle ({min(sizes[0], WARMUP_ROWS):,} rows)")
        warm = f"{tmp}/warmup.parquet"
        generate(spark, min(sizes[0], WARMUP_ROWS), warm, cores)
        bundle = make_bundle(spark, warm, tmp, "default", [f"model.size={args.size}"])
        first = make_bundle(spark, warm, tmp, "first", FIRST_VERSION)
        _log("bundles built; cold score job")
        threshold = bundle.threshold
        params = sum(p.numel() for p in bundle.model.parameters())
        start = time.perf_counter()
        score_job(spark, bundle, warm, f"{tmp}/warmup-out-cold")
        cold = time.perf_counter() - start
        scorer = row_udf(bundle)
        udf_job(spark, bundle, scorer, warm, f"{tmp}/warmup-udf", where="id % 100 = 0")  # warm, ~200 rows
        memory.sample()

        for n in sizes:
            data = f"{tmp}/data-{n}.parquet"
            _log(f"{n:,} rows: generating")
            generate(spark, n, data, cores)
            partitions[n] = spark.read.parquet(data).rdd.getNumPartitions()
            out: list[Result] = []

            _log(f"{n:,} rows: score job")
            score_job(spark, bundle, warm, f"{tmp}/warmup-out-{n}")
            cpu[n] = timed_cpu(functools.partial(score_job, spark, bundle, data, f"{tmp}/scores-{n}",
                                                 detail=args.details[0]), cores)
            out.append(Result("score job: score_frame -> Delta", n, cpu[n].wall, cores))
            memory.sample()
            by_detail[n] = {args.details[0]: (out[-1], data_bytes(f"{tmp}/scores-{n}"))}
            for detail in args.details[1:]:
                _log(f"{n:,} rows: score job, score.detail {detail}")
                start = time.perf_counter()
                score_job(spark, bundle, data, f"{tmp}/scores-{detail}-{n}", detail=detail)
                by_detail[n][detail] = (Result(f"score job, detail {detail}", n, time.perf_counter() - start, cores),
                                        data_bytes(f"{tmp}/scores-{detail}-{n}"))
            if args.summary:
                _log(f"{n:,} rows: score job with its run summary")
                start = time.perf_counter()
                score_job_with_summary(spark, bundle, data, f"{tmp}/runs-{n}")
                with_summary[n] = Result("score job with its run summary", n, time.perf_counter() - start, cores)
                summary_bytes[n] = data_bytes(f"{tmp}/runs-{n}/bench/scores")
            if args.passthrough_all:
                _log(f"{n:,} rows: score job, every source column passed through")
                start = time.perf_counter()
                score_job(spark, bundle, data, f"{tmp}/scores-all-{n}", keep_all=True)
                kept_all[n] = Result("score job, every source column", n, time.perf_counter() - start, cores)
            by_engine[n] = {args.delta_engines[0]: out[-1]}
            for engine in args.delta_engines[1:]:
                _log(f"{n:,} rows: score job through {engine}")
                ENGINE[0] = engine
                start = time.perf_counter()
                score_job(spark, bundle, data, f"{tmp}/scores-{engine}-{n}")
                by_engine[n][engine] = Result(f"score job -> Delta via {engine}", n, time.perf_counter() - start,
                                              cores)
                ENGINE[0] = args.delta_engines[0]
            written = tables(spark).read(f"{tmp}/scores-{n}").count()
            if written != n:
                raise RuntimeError(f"the score job wrote {written:,} rows of {n:,}")

            m = n if args.ceiling_rows <= 0 else min(n, args.ceiling_rows)
            _log(f"{n:,} rows: ceiling on {m:,} rows")
            batches = load_batches(bundle, data, m, args.batch_size)
            secs = time_batches(
                lambda t: build_output(bundle, t, threshold=threshold, top_reasons=3, emit_code=False,
                                       detail=args.details[0]), batches)
            out.append(Result("ceiling: build_output, 1 thread", m, secs, 1))
            secs = time_batches(lambda b: score_rows(bundle, b), batches)
            out.append(Result("  of which score_rows", m, secs, 1))
            if cores > 1:
                _log(f"{n:,} rows: ceiling in {cores} processes at once")
                busy[n] = [Result("ceiling, every core busy", m, t, 1) for t in
                           ceiling_all_cores(bundle, data, m, args.batch_size, cores)]
            if args.profile:
                profiles[n] = profile_batches(
                    lambda t: build_output(bundle, t, threshold=threshold, top_reasons=3, emit_code=False), batches,
                    args.profile)
            del batches

            _log(f"{n:,} rows: the first version's model")
            score_job(spark, first, warm, f"{tmp}/warmup-first-{n}")
            start = time.perf_counter()
            score_job(spark, first, data, f"{tmp}/scores-first-{n}")
            first_job = Result("score job, first version's model", n, time.perf_counter() - start, cores)
            batches = load_batches(first, data, m, args.batch_size)
            secs = time_batches(
                lambda t: build_output(first, t, threshold=100.0, top_reasons=3, emit_code=False), batches)
            first_ceiling = Result("ceiling, first version's model", m, secs, 1)
            del batches

            step = max(1, n // args.udf_rows)
            k = -(-n // step)
            _log(f"{n:,} rows: row UDF on {k:,} rows")
            subset = f"{tmp}/udf-{n}.parquet"
            spark.read.parquet(data).where(f"id % {step} = 0").repartition(cores).write.parquet(subset)
            start = time.perf_counter()
            udf_job(spark, bundle, scorer, subset, f"{tmp}/udf-scores-{n}")
            out.append(Result("row-at-a-time Python UDF -> Delta", k, time.perf_counter() - start, cores))
            memory.sample()
            checks[n] = _max_score_diff(spark, f"{tmp}/scores-{n}", f"{tmp}/udf-scores-{n}")
            results[n] = [*out, first_job, first_ceiling]
        connector = delta_connector_available(spark)
    spark.stop()

    w = sys.stdout.write
    w(f"sizes: {', '.join(f'{n:,}' for n in sizes)} rows  master: {args.master}  cores (concurrent tasks): {cores}"
      f"  batch: {args.batch_size:,} rows  Delta via {args.delta_engines[0]} (connector in the session: "
      f"{connector})\n")
    w(f"model: {N_CAT} categoricals (~{CARDINALITY} values) + {N_NUM} numerics, untrained, {params:,} parameters,"
      f" bundle {bundle.bundle_id}\n")
    w(f"load average 1/5/15 min: start {load_start[0]:.2f}/{load_start[1]:.2f}/{load_start[2]:.2f}, "
      f"end {'/'.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    w(f"cold start (first job, new Python workers, bundle load): {cold:.2f} s for "
      f"{min(sizes[0], WARMUP_ROWS):,} rows; not in the figures below\n\n")
    w(f"{'size':>11}  {'method':<36}{'rows':>11}{'seconds':>10}{'rows/s':>12}{'rows/s/core':>13}\n")
    for n, out in results.items():
        for r in out:
            w(f"{n:>11,}  {r.method:<36}{r.rows:>11,}{r.seconds:>10.2f}{r.rate:>12,.0f}{r.per_core:>13,.0f}\n")
    w("\n")
    w(f"{'size':>11}  {'partitions':>10}  {'job/core / ceiling/core':>24}  {'job / row UDF':>14}  "
      f"{'UDF vs job scores: rows, max |diff|':>36}\n")
    for n, out in results.items():
        job, ceiling, _, udf, _, _ = out
        rows, diff = checks[n]
        w(f"{n:>11,}  {partitions[n]:>10}  {job.per_core / ceiling.per_core:>23.2f}x  {job.rate / udf.rate:>13.1f}x"
          f"  {rows:>26,}, {diff:.1e}\n")
    w(f"goals: job/core >= {GOAL_CEILING} x ceiling/core; job >= {GOAL_UDF:.0f} x row UDF\n")
    for n, runs in busy.items():
        job, ceiling = results[n][0], results[n][1]
        each = sorted(r.rate for r in runs)
        mean = sum(each) / len(each)
        w(f"{n:>11,}  the ceiling with all {len(runs)} cores busy (one process each, at once): "
          f"{', '.join(f'{r:,.0f}' for r in each)} rows/s per process = {mean / ceiling.rate:.2f}x the ceiling on an "
          f"idle machine; job/core / that = {job.per_core / mean:.2f}x\n")
    masks = len(bundle.spec.mask_groups()) if bundle.spec.masked else 1
    w(f"\ncost per row of the default model, model.size {args.size} ({bundle.spec.kind}, {masks} forward pass(es), hidden "
      f"{list(bundle.spec.hidden)}, calibrated) vs the first version's (autoencoder, 1 pass, hidden [64, 32]):\n")
    for n, out in results.items():
        job, ceiling, _, _, first_job, first_ceiling = out
        w(f"{n:>11,}  score job {first_job.rate / job.rate:.2f}x, ceiling {first_ceiling.rate / ceiling.rate:.2f}x"
          f"  (goal: <= {GOAL_COST:.0f}x)\n")
    w(f"\nscore.detail (the first is the job above; {', '.join(args.details)}): rows/s, and bytes per scored row "
      "in the table's data files (id + scores + flag + bundle_id + whatever detail):\n")
    for n, details in by_detail.items():
        w(f"{n:>11,}  " + "   ".join(f"{d}: {r.rate:,.0f} rows/s, {b / n:.1f} B/row" for d, (r, b) in details.items())
          + "\n")
    w("\nthe score job by Delta engine (the same bundle and data, one commit each):\n")
    for n, engines in by_engine.items():
        w(f"{n:>11,}  " + "   ".join(f"{e}: {r.seconds:.2f} s, {r.rate:,.0f} rows/s" for e, r in engines.items())
          + "\n")
    w("\nwhere the score job's CPU went (/proc, user + system; the JVM reads, converts to and from Arrow, "
      "writes; the Python workers run build_output):\n")
    for n, c in cpu.items():
        ceiling = results[n][1]
        busy = c.jvm + c.python
        w(f"{n:>11,}  JVM {c.jvm:.1f} s ({c.jvm / busy:.0%})  Python workers {c.python:.1f} s ({c.python / busy:.0%})"
          f"  of {c.wall * c.cores:.1f} core-seconds;  Python per row {c.python / n * 1e6:.1f} us against the "
          f"ceiling's {ceiling.seconds / ceiling.rows * 1e6:.1f} us\n")
    if with_summary:
        w("\nthe score job as `embedlib score` runs it (score_into: its run summary and the score_runs row) beside "
          "the job above:\n")
        for n, r in with_summary.items():
            job = results[n][0]
            w(f"{n:>11,}  without {job.rate:,.0f} rows/s   with the summary {r.rate:,.0f} rows/s ({r.rate / job.rate:.2f}x);"
              f"  {summary_bytes[n] / n:.1f} B/row on disk with run_id and scored_at\n")
    if kept_all:
        w(f"\nscore.passthrough: the id only vs every one of the {1 + N_CAT + N_NUM} source columns passed through "
          "(the default when no id is declared):\n")
        for n, r in kept_all.items():
            job = results[n][0]
            w(f"{n:>11,}  id only {job.rate:,.0f} rows/s   every column {r.rate:,.0f} rows/s   "
              f"({r.rate / job.rate:.2f}x)\n")
    if len(sizes) > 1:
        small, large = results[sizes[0]][0], results[sizes[-1]][0]
        row_ratio = large.rows / small.rows
        time_ratio = large.seconds / small.seconds
        w(f"growth {small.rows:,} -> {large.rows:,} rows ({row_ratio:.2f}x): job time {time_ratio:.2f}x, "
          f"time ratio / row ratio = {time_ratio / row_ratio:.2f} (1.00 = linear; goal: linear, <= ~1)\n")
    w(f"peak RSS: driver python {_mib(_maxrss_kib(resource.RUSAGE_SELF))} (RUSAGE_SELF); "
      f"reaped children {_mib(_maxrss_kib(resource.RUSAGE_CHILDREN))} (RUSAGE_CHILDREN); "
      f"JVM {_mib(memory.jvm)}; largest Python worker {_mib(memory.worker)} "
      f"({len(memory.workers_seen)} pyspark processes seen; VmHWM)\n")
    for n, text in profiles.items():
        w(f"\nwhere the ceiling's time goes, {n:,} rows (--profile; cProfile, own time):\n{text}")


if __name__ == "__main__":
    main()
