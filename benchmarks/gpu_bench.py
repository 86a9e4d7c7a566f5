"""Training and scoring on a device (a GPU), each figure beside the same figure on this machine's CPU,
measured in the same run.

    python benchmarks/gpu_bench.py [--device auto|cuda|cpu] [--quick] [--json PATH] [--seed 0]
                                   [--size medium] [--batch-size 512]

Runs with the pyspark-free part of embedlib only (``embedlib.fit``, ``embedlib.core``): no Spark, no
JVM, no Delta, no network, so it runs on a bare GPU machine from the repository root
(``PYTHONPATH=.``; torch, numpy, pandas, pyarrow, PyYAML, safetensors and tqdm are all it imports).
It generates its tables from ``--seed`` on the machine it runs on:

* **table A**, the 10-categorical + 20-numeric table (categoricals of 20 to 5,000 values and numerics
  tied to each other through four hidden factors; 200,000 rows, ``--quick`` 20,000);
* **table B**, one 100,000-value column (the adaptive head; ``vocab.min_count: 1``) beside two small
  categoricals and four numerics that follow the wide value (300,000 rows, ``--quick`` 30,000).

And prints, for the device and (unless the device is the CPU) the CPU:

1. training samples/s of the default masked model on table A, fp32 and ``train.precision: bf16``,
   with peak device memory, and the held-out NLL (nats/row, the run's validation rows) after the same
   number of steps: bf16's difference to fp32 is printed beside it;
2. training samples/s on table B, and peak memory;
3. scoring rows/s of the core's scoring: ``score_rows`` (the model's nats) and ``build_output`` (the
   score job's columns, reasons included: what every worker runs), at batch sizes from 1,000 to
   65,536 rows, and the batch size at which it saturates (the smallest within 10 % of the best);
4. the time from a cold process (a new ``python``) to its first scored batch of 10,000 rows: imports,
   the bundle loaded and moved to the device, one ``build_output``;
5. from the best ``build_output`` rate: the device-hours that 1 billion rows take, and how many of this
   machine's CPU cores (the CPU rate over its threads) one device does the work of.

Training is ``embedlib.fit`` with ``model.size`` fixed (``--size``; the default is medium: no size
search), ``train.max_steps`` steps and early stopping off (``train.patience: 0``), so every run trains
the same steps. Samples/s is the training rows stepped through (steps × batch size) over the epochs'
seconds less their validation passes (``embedlib.core.train.loop.evaluate`` is wrapped with a timer
while it runs: instrumentation only); each device first runs an untimed fit of a few steps (CUDA's
context, cuBLAS handles, torch's lazy imports). The CPU uses torch's default thread count.
Peak memory is ``torch.cuda.max_memory_allocated`` over the fit (the CPU's is not measured).

``--quick`` is a smoke run of about a minute on a GPU (~15 s with ``--device cpu`` on 2 cores): smaller tables, fewer steps,
two batch sizes. The whole run is sized to end within 8 minutes on one H100. ``--json PATH`` writes
every figure (and the device, torch and CUDA versions) to PATH.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars (tqdm reads it when imported)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import embedlib  # noqa: E402
from embedlib.core.bundle import Bundle  # noqa: E402
from embedlib.core.inference import score_rows  # noqa: E402
from embedlib.core.output import build_output  # noqa: E402
from embedlib.core.train import loop  # noqa: E402

log = logging.getLogger("gpu_bench")
SATURATION = 0.9  # the saturating batch: the smallest reaching this share of the best rate
COLD_ROWS = 10_000


@dataclass(frozen=True)
class Plan:
    """The sizes of one run (full or ``--quick``)."""

    rows_a: int
    rows_b: int
    steps_device: int  # training steps per configuration on the device
    steps_cpu: int  # … on the CPU (its samples/s needs fewer)
    score_batches: tuple[int, ...]
    score_rows: int  # rows scored per batch size (at least one batch)


FULL = Plan(rows_a=200_000, rows_b=300_000, steps_device=3000, steps_cpu=300,
            score_batches=(1000, 4096, 16384, 65536), score_rows=262_144)
QUICK = Plan(rows_a=8_000, rows_b=20_000, steps_device=300, steps_cpu=40,
             score_batches=(1000, 4096), score_rows=8_192)


@dataclass
class Training:
    """One training configuration's figures."""

    table: str
    device: str
    precision: str
    steps: int
    batch_size: int
    samples_per_s: float
    train_seconds: float
    validation_nll: float
    peak_memory_mib: float | None


@dataclass
class Scoring:
    """Scoring rows/s per batch size, and where it saturates."""

    device: str
    function: str
    rows_per_s: dict[int, float] = field(default_factory=dict)

    @property
    def saturates_at(self) -> int:
        best = max(self.rows_per_s.values())
        return min(b for b, r in self.rows_per_s.items() if r >= SATURATION * best)


# ------------------------------------------------------------------ tables


def table_a(rows: int, seed: int) -> tuple[pd.DataFrame, list[str], list[str]]:
    """10 categoricals (20 … 5,000 values) and 20 numerics, all driven by 4 hidden factors."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((rows, 4))
    sizes = (20, 50, 100, 200, 300, 500, 1000, 2000, 3000, 5000)
    frame: dict[str, Any] = {}
    for k, n in enumerate(sizes):
        w = rng.standard_normal(4)
        u = z @ w / np.linalg.norm(w) + 0.3 * rng.standard_normal(rows)
        rank = np.clip(((u + 3) / 6 * n).astype(np.int64), 0, n - 1)  # a factor's direction, cut in n bins
        frame[f"c{k}"] = np.char.add(f"v{k}_", rank.astype(str))
    for j in range(20):
        w = rng.standard_normal(4)
        frame[f"x{j}"] = z @ w + 0.1 * (j + 1) * rng.standard_normal(rows)
    frame["x19"] = frame["x0"] * frame["x1"] + 0.01 * rng.standard_normal(rows)  # one exact product
    return pd.DataFrame(frame), [f"c{k}" for k in range(10)], [f"x{j}" for j in range(20)]


def table_b(rows: int, seed: int) -> tuple[pd.DataFrame, list[str], list[str]]:
    """One 100,000-value column, two small categoricals and four numerics that follow its value."""
    rng = np.random.default_rng(seed + 1)
    wide = rng.integers(0, 100_000, rows)
    centre = np.random.default_rng(seed + 2).standard_normal((100_000, 4))[wide]
    frame = {
        "account": np.char.add("a", wide.astype(str)),
        "region": np.char.add("r", (wide % 17).astype(str)),
        "channel": np.char.add("h", rng.integers(0, 5, rows).astype(str)),
        **{f"y{j}": centre[:, j] + 0.2 * rng.standard_normal(rows) for j in range(4)},
    }
    return pd.DataFrame(frame), ["account", "region", "channel"], [f"y{j}" for j in range(4)]


# ------------------------------------------------------------------ training


@contextlib.contextmanager
def validation_timer() -> Iterator[list[float]]:
    """Seconds spent in the training loop's validation passes while the block runs."""
    spent: list[float] = []
    original = loop.evaluate

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - started)

    loop.evaluate = timed  # type: ignore[assignment]
    try:
        yield spent
    finally:
        loop.evaluate = original  # type: ignore[assignment]


def fit(frame: pd.DataFrame, categorical: list[str], numeric: list[str], *, device: str, precision: str,
        steps: int, size: str, batch_size: int, seed: int, out: str, extra: dict[str, Any] | None = None) -> Bundle:
    settings = {
        "model.size": size, "train.max_steps": steps, "train.patience": 0, "train.use_gpu": device == "cuda",
        "train.precision": precision, "train.batch_size": batch_size, "train.seed": seed, **(extra or {}),
    }
    return embedlib.fit(frame, categorical=categorical, numeric=numeric, output_dir=tempfile.mkdtemp(dir=out),
                        settings=settings)


def measure_training(name: str, frame: pd.DataFrame, categorical: list[str], numeric: list[str], *, device: str,
                     precision: str, steps: int, size: str, batch_size: int, seed: int, out: str,
                     extra: dict[str, Any] | None = None) -> tuple[Training, Bundle]:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with validation_timer() as spent:
        bundle = fit(frame, categorical, numeric, device=device, precision=precision, steps=steps, size=size,
                     batch_size=batch_size, seed=seed, out=out, extra=extra)
    metrics = bundle.manifest["metrics"]
    epoch_seconds = sum(float(h["seconds"]) for h in metrics["history"])
    seconds = max(epoch_seconds - sum(spent), 1e-9)
    ran = int(metrics["steps"])
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    figure = Training(table=name, device=device, precision=precision, steps=ran, batch_size=batch_size,
                      samples_per_s=ran * batch_size / seconds, train_seconds=seconds,
                      validation_nll=float(metrics["validation_loss"]), peak_memory_mib=peak)
    log.info("%s on %s %s: %.0f samples/s, validation %.4f nats/row", name, device, precision,
             figure.samples_per_s, figure.validation_nll)
    return figure, bundle


# ------------------------------------------------------------------ scoring


def measure_scoring(bundle: Bundle, frame: pd.DataFrame, device: str, plan: Plan) -> list[Scoring]:
    bundle.to(device)
    columns = list(bundle.spec.columns)
    table = pa.Table.from_pandas(frame[columns].iloc[: plan.score_rows], preserve_index=False)
    threshold = bundle.threshold_for(bundle.rank_by)
    runs = {
        "score_rows": lambda batch: score_rows(bundle, batch),
        "build_output": lambda batch: build_output(bundle, batch, threshold=threshold, top_reasons=3, emit_code=False),
    }
    figures = []
    for function, run in runs.items():
        scoring = Scoring(device=device, function=function)
        for size in plan.score_batches:
            batches = [table.slice(start, size) for start in range(0, max(len(table) - size + 1, 1), size)]
            run(batches[0])  # warm: the first batch of a size pays its allocations
            sync(device)
            started = time.perf_counter()
            for batch in batches:
                run(batch)
            sync(device)
            scoring.rows_per_s[size] = sum(b.num_rows for b in batches) / (time.perf_counter() - started)
        figures.append(scoring)
        log.info("%s on %s: %s rows/s", function, device, {k: round(v) for k, v in scoring.rows_per_s.items()})
    bundle.to("cpu")
    return figures


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


COLD = """
import sys, time
started = float(sys.argv[1])
sys.path.insert(0, sys.argv[4])
import pyarrow.parquet as pq  # noqa: E402
from embedlib.core.bundle import load_bundle
from embedlib.core.output import build_output
bundle = load_bundle(sys.argv[2]).to(sys.argv[5])
batch = pq.read_table(sys.argv[3])
out = build_output(bundle, batch, threshold=bundle.threshold, top_reasons=3, emit_code=False)
assert len(out["anomaly_score"]) == batch.num_rows
print("first batch", time.time() - started)
"""


def cold_start(bundle: Bundle, frame: pd.DataFrame, device: str, folder: str) -> float:
    """Seconds from spawning a new ``python`` to its first scored batch of :data:`COLD_ROWS` rows."""
    data = os.path.join(folder, "cold.parquet")
    pq.write_table(pa.Table.from_pandas(frame[list(bundle.spec.columns)].iloc[:COLD_ROWS], preserve_index=False), data)
    done = subprocess.run([sys.executable, "-c", COLD, repr(time.time()), bundle.path, data, str(ROOT), device],
                          capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise SystemExit(f"the cold-start process failed:\n{done.stderr[-3000:]}")
    return float(done.stdout.split("first batch")[-1])


# ------------------------------------------------------------------ report


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


def _mib(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def report(result: dict[str, Any]) -> str:
    out = [f"device: {result['device_name']} ({result['device']}); CPU: {result['cpu_threads']} threads; "
           f"torch {result['torch']}, CUDA {result['cuda'] or 'none'}; {'quick' if result['quick'] else 'full'} run"]
    rows = []
    for t in result["training"]:
        rows.append([t["table"], t["device"], t["precision"], f"{t['steps']} × {t['batch_size']}",
                     f"{t['samples_per_s']:,.0f}", f"{t['validation_nll']:.4f}", _mib(t["peak_memory_mib"])])
    out += ["", "Training (samples/s: steps × batch / training seconds, validation passes excluded)", "",
            table(["table", "device", "precision", "steps × batch", "samples/s", "held-out NLL", "peak MiB"], rows)]
    for pair in result["bf16_vs_fp32"]:
        out.append(f"bf16 vs fp32 on {pair['device']}: held-out NLL {pair['bf16']:.4f} vs {pair['fp32']:.4f} "
                   f"({pair['difference']:+.4f} nats/row, {pair['relative']:+.2%}); samples/s ×{pair['speedup']:.2f}")
    rows = []
    for s in result["scoring"]:
        rates = s["rows_per_s"]
        rows.append([s["function"], s["device"], *(f"{rates[str(b)]:,.0f}" for b in result["score_batches"]),
                     str(s["saturates_at"])])
    out += ["", "Scoring (rows/s by batch size)", "",
            table(["function", "device", *(f"{b:,}" for b in result["score_batches"]), "saturates at"], rows)]
    for line in result["per_billion"]:
        out.append(f"1 billion rows through build_output on {line['device']}: {line['hours']:.2f} device-hours "
                   f"at {line['rows_per_s']:,.0f} rows/s" + (f" = the work of {line['cpu_cores_replaced']:.0f} CPU cores "
                                                          f"of this machine" if line["cpu_cores_replaced"] else ""))
    out += ["", "Cold process to first scored batch of 10,000 rows: "
            + ", ".join(f"{d} {s:.1f} s" for d, s in result["cold_start_seconds"].items())]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="a smoke run (about a minute on a GPU)")
    parser.add_argument("--json", help="write every figure to this file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", default="medium", choices=["small", "medium", "large"])
    parser.add_argument("--batch-size", type=int, default=512)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    logging.getLogger("embedlib").setLevel(logging.ERROR)  # each fit stops at its step budget, as asked
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device here")
    plan = QUICK if args.quick else FULL
    devices = [device] if device == "cpu" else [device, "cpu"]
    started = time.perf_counter()

    out = tempfile.mkdtemp(prefix="gpu-bench-")
    frame_a, cat_a, num_a = table_a(plan.rows_a, args.seed)
    frame_b, cat_b, num_b = table_b(plan.rows_b, args.seed)
    training: list[Training] = []
    bundles: dict[str, Bundle] = {}
    for where in devices:
        steps = plan.steps_cpu if where == "cpu" else plan.steps_device
        # untimed, once per device: CUDA's context and cuBLAS handles, torch's lazy imports
        fit(frame_a.iloc[: 4 * args.batch_size], cat_a, num_a, device=where, precision="bf16", steps=5,
            size=args.size, batch_size=args.batch_size, seed=args.seed, out=out)
        for precision in ("fp32", "bf16"):
            figure, bundle = measure_training("A: 10 cat + 20 num", frame_a, cat_a, num_a, device=where,
                                              precision=precision, steps=steps, size=args.size,
                                              batch_size=args.batch_size, seed=args.seed, out=out)
            training.append(figure)
            if precision == "fp32":
                bundles[where] = bundle
        figure, _ = measure_training("B: 100,000-value column", frame_b, cat_b, num_b, device=where, precision="fp32",
                                     steps=max(steps // 3, 20), size=args.size, batch_size=args.batch_size,
                                     seed=args.seed, out=out, extra={"vocab.min_count": 1})
        training.append(figure)
    pairs = []
    for where in devices:
        fp32, bf16 = (next(t for t in training if t.device == where and t.precision == p and t.table.startswith("A"))
                      for p in ("fp32", "bf16"))
        pairs.append({"device": where, "fp32": fp32.validation_nll, "bf16": bf16.validation_nll,
                      "difference": bf16.validation_nll - fp32.validation_nll,
                      "relative": (bf16.validation_nll - fp32.validation_nll) / abs(fp32.validation_nll),
                      "speedup": bf16.samples_per_s / fp32.samples_per_s})

    # scoring and the cold start use the device's fp32 bundle (the same weights on both)
    scored = bundles[device]
    scoring = [s for where in devices for s in measure_scoring(scored, frame_a, where, plan)]
    cold = {where: cold_start(scored, frame_a, where, out) for where in devices}
    shutil.rmtree(out, ignore_errors=True)

    best = {s.device: max(s.rows_per_s.values()) for s in scoring if s.function == "build_output"}
    per_core = best["cpu"] / torch.get_num_threads()
    per_billion = [{"device": where, "rows_per_s": rate, "hours": 1e9 / rate / 3600,
                    "cpu_cores_replaced": rate / per_core if where != "cpu" else None} for where, rate in best.items()]
    result = {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device == "cuda" else None,
        "quick": args.quick,
        "seed": args.seed,
        "size": args.size,
        "plan": asdict(plan),
        "training": [asdict(t) for t in training],
        "bf16_vs_fp32": pairs,
        "score_batches": list(plan.score_batches),
        "scoring": [{"device": s.device, "function": s.function, "saturates_at": s.saturates_at,
                     "rows_per_s": {str(k): v for k, v in s.rows_per_s.items()}} for s in scoring],
        "cold_start_seconds": cold,
        "per_billion": per_billion,
        "seconds": time.perf_counter() - started,
    }
    print(report(result))
    print(f"\n(the whole run: {result['seconds']:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
