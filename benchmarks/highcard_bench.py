"""Wide categoricals: the adaptive softmax head against the full softmax, by cardinality.

    .venv/bin/python benchmarks/highcard_bench.py [--rows 1000000] [--cardinalities 100 10000 100000 1000000]
        [--train-seconds 60] [--score-seconds 30] [--rounds 3] [--master local[2]]
        [--inputs DIR] [--device cpu|cuda] [--batch-size 512]

For each cardinality K, Spark generates (deterministically, ``xxhash64`` of the row id) a table of
``--rows`` rows: ``c``, a categorical of K values with a Zipf-like (log-uniform) distribution and 1 %
nulls; ``d``, 20 values determined by ``c``; ``x`` and ``y = 2x + noise``. ``embedlib vocab`` builds its
vocabulary (``vocab.min_count: 1``, so the vocabulary holds every value seen) and is timed.
``--inputs DIR`` keeps each table and its vocabulary there (``data-K.parquet``, ``vocab-K.parquet``,
``inputs.json``); a later run given the same folder and ``--rows`` measures them again without Spark
or a JVM — how the figures of a machine without either (a GPU host) are taken. Then, for
the default model (``model.adaptive_above``: an adaptive head above 1,000 values; ``train.lazy_above``:
sparse gradients and the deferred Adam for an embedding table above 50,000 rows), for the same with every
table dense (``dense``, ``train.lazy_above: null``: the baseline of the deferred Adam, where the cardinality
is above ``train.lazy_above``) and for the full softmax (``model.adaptive_above: null``), each in its own process
(so that its peak memory is its own), with ``model.size: small`` and the masked kind:

* the rows are encoded into shards in memory (not timed), and the training loop runs on ``--device``
  (``cuda``: the model and each batch on the GPU, every table dense, ``dense`` not measured apart) as many steps
  as take about ``--train-seconds`` (sized by a 10-step probe after a 2-step warm-up, which takes the
  process's one-off costs; no validation): training rows/s = steps × batch / seconds;
* the model is saved as a bundle (its size on disk) and ``build_output`` — what the score job runs on
  each Arrow batch — scores batches of 10,000 raw rows for ``--score-seconds`` in one thread:
  scoring rows/s (1 core; scoring runs on the CPU whatever ``--device``, as the score job does);
* the process's peak resident memory (``ru_maxrss``) is read last, and on a GPU the peak of the memory
  torch allocated there.

At or below ``model.adaptive_above`` values both models are the same full softmax, so such a
cardinality runs once.

The models are measured in ``--rounds`` rounds, each running every model once, in reverse order every
other round: this host's speed drifts by tens of percent within minutes, and two rates taken minutes
apart in one fixed order compare the hours as much as the models. The table shows each model's median
over the rounds (its peak memory, the largest).
The figures print side by side, with the goal: at 100,000 values, the default's training and
scoring rows/s ≥ 0.5× the 100-value table's — the median of the rounds' ratios, each round's beside it
(and the same ratios for ``dense``).
Weights are trained only for the measured seconds (speed, not quality: ``tests/test_wide.py`` checks the
nats are exact).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from embedlib.core.config.schema import ModelConfig, TrainConfig

SCORE_BATCH = 10_000


def generate(spark: Any, rows: int, cardinality: int, path: str) -> None:
    from pyspark.sql import functions as F

    def unit(seed: int) -> Any:
        return (F.abs(F.xxhash64(F.col("id"), F.lit(seed))) % 1_000_003) / 1_000_003.0

    # log-uniform over [0, K): P(v) ~ 1 / (v + 1), a Zipf-like skew
    value = F.floor(F.exp(unit(1) * F.log(F.lit(float(cardinality + 1))))).cast("long") - 1
    c = F.when(unit(2) < 0.01, None).otherwise(F.concat(F.lit("v"), value.cast("string")))
    d = F.concat(F.lit("d"), F.pmod(F.xxhash64(c), F.lit(20)).cast("string"))
    x = unit(3) * 10.0
    spark.range(0, rows, 1, 8).select(c.alias("c"), d.alias("d"), x.alias("x"),
                                      (x * 2.0 + unit(4) - 0.5).alias("y")).write.mode("overwrite").parquet(path)


#: the models: the default (an adaptive head above 1,000 values, the deferred Adam above 50,000 rows), the
#: same with every embedding table dense (``train.lazy_above``'s baseline), and a full softmax for every column
HEADS = {"adaptive": [], "dense": ["train.lazy_above=null"], "full": ["model.adaptive_above=null"]}


def config(out: str, data: str, head: str = "adaptive", batch: int = 512) -> Any:
    from embedlib.core.config import load_config

    return load_config([], [f"output_dir={out}", f"source.path={data}", "source.format=parquet",
                            "columns.categorical=[c, d]", "columns.numeric=[x, y]", "vocab.min_count=1",
                            "model.size=small", f"train.batch_size={batch}", "train.validation_fraction=0.01",
                            *HEADS[head]])


def measure(out: str, data: str, vocab_file: str, head: str, args: argparse.Namespace) -> dict[str, Any]:
    """One model in this process: training and scoring rows/s, bundle size, peak memory."""
    import dataclasses

    import pyarrow.parquet as pq
    import torch

    from embedlib.core.bundle import load_bundle, save_bundle, vocab_of
    from embedlib.core.encode import encode_in_memory
    from embedlib.core.output import build_output
    from embedlib.core.train import CheckpointStore, SingleProcess, train_loop
    from embedlib.spark.train.backends import LocalBackend
    from embedlib.spark.train.job import best_model, make_job

    cfg = config(out, data, head, args.batch_size)
    vocab = vocab_of(Path(vocab_file).read_bytes())
    device = torch.device(args.device)
    table = pq.read_table(data.replace("file://", ""))
    shards = encode_in_memory(table, vocab, cfg)
    train_only = dataclasses.replace(shards, valid_files=(), valid_rows=0)

    def steps(n: int) -> tuple[Any, dict[str, Any], float]:
        job = make_job(cfg, vocab, train_only, LocalBackend())
        folder = tempfile.mkdtemp(prefix="checkpoints-", dir=out)  # each run from scratch, in every round
        store = CheckpointStore(folder=folder, reports=f"{folder}/workers", fingerprint=job.store.fingerprint)
        job = dataclasses.replace(job, max_steps=n, progress=False, store=store)
        started = time.perf_counter()
        metrics = train_loop(SingleProcess(device), job)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return job, metrics, time.perf_counter() - started

    steps(2)  # the process's one-off costs (~1.2 s: thread pools, first allocations), which a probe must not time
    _, _, probe = steps(10)  # the speed, to size the measured run to about --train-seconds
    job, metrics, seconds = steps(max(20, int(args.train_seconds / max(probe / 10, 1e-3))))
    model = best_model(job)
    save_bundle(cfg.layout.bundle, model=model, vocab=vocab, threshold=1e9, threshold_quantile=0.99, metrics={},
                model_config={}, rank_by="nats", thresholds={"nats": 1e9})
    size = sum(f.stat().st_size for f in Path(cfg.layout.bundle).iterdir())
    bundle = load_bundle(cfg.layout.bundle)
    scored = 0
    started = time.perf_counter()
    while time.perf_counter() - started < args.score_seconds:
        batch = table.slice(scored % max(1, table.num_rows - SCORE_BATCH), SCORE_BATCH)
        build_output(bundle, batch, threshold=1e9, top_reasons=3, emit_code=False)
        scored += batch.num_rows
    score_secs = time.perf_counter() - started
    return {
        "values": vocab.size("c") - 2, "cutoffs": list(bundle.spec.cutoffs_of(0)), "bucket": bundle.spec.bucket_of(0),
        "train_steps": metrics["steps"], "train_rows_per_s": metrics["steps"] * args.batch_size / seconds,
        "score_rows_per_s": scored / score_secs, "bundle_mib": size / 2**20,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "gpu_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--cardinalities", type=int, nargs="+", default=[100, 10_000, 100_000, 1_000_000])
    parser.add_argument("--train-seconds", type=float, default=60.0)
    parser.add_argument("--score-seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=3, help="each model measured this many times, interleaved")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--inputs", help="keep the tables and vocabularies in this folder; reuse them when there")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the training loop runs")
    parser.add_argument("--batch-size", type=int, default=512, help="train.batch_size")
    parser.add_argument("--one", nargs=4, metavar=("OUT", "DATA", "VOCAB", "HEAD"), help=argparse.SUPPRESS)  # a child
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.one:
        out, data, vocab, head = args.one
        print(json.dumps(measure(out, data, vocab, head, args)))
        return
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device on this machine")
        args.gpu = torch.cuda.get_device_name(0)
    results: dict[int, dict[str, Any]] = {}
    rounds: dict[tuple[int, str], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="highcard-bench-") as tmp:
        folder = Path(args.inputs or tmp)
        results.update(inputs(args, folder, tmp))
        models: list[tuple[int, str]] = []
        for k in sorted(args.cardinalities):
            heads = ["adaptive", *(["dense"] if args.device == "cpu" and k + 2 > (TrainConfig().lazy_above or k + 2)
                                   else []),
                     *(["full"] if k + 2 > (ModelConfig().adaptive_above or k + 2) else [])]
            models += [(k, head) for head in heads]
        for r in range(args.rounds):
            for k, head in models if r % 2 == 0 else models[::-1]:
                sys.stderr.write(f"round {r + 1}: {k:,} values, {head} head\n")
                run = subprocess.run([sys.executable, __file__, "--one", f"{tmp}/runs-{k}", str(folder / f"data-{k}.parquet"),
                                      str(folder / f"vocab-{k}.parquet"), head, "--train-seconds", str(args.train_seconds),
                                      "--score-seconds", str(args.score_seconds), "--device", args.device,
                                      "--batch-size", str(args.batch_size)],
                                     capture_output=True, text=True, check=False)
                if run.returncode != 0:
                    results[k][head] = {"error": (run.stderr.strip().splitlines() or ["?"])[-1]}
                    continue
                rounds.setdefault((k, head), []).append(json.loads(run.stdout.strip().splitlines()[-1]))
    for (k, head), runs in rounds.items():
        if "error" not in results[k].get(head, {}):
            results[k][head] = {**runs[0], "rounds": runs, "peak_rss_mib": max(m["peak_rss_mib"] for m in runs),
                                **{key: statistics.median(m[key] for m in runs)
                                   for key in ("train_rows_per_s", "score_rows_per_s")}}
    report(args, results)


def inputs(args: argparse.Namespace, folder: Path, tmp: str) -> dict[int, dict[str, Any]]:
    """Each cardinality's table and vocabulary in ``folder``: made with Spark (the vocab job timed) unless there."""
    record = folder / "inputs.json"
    kept = json.loads(record.read_text()) if record.exists() else {"rows": args.rows, "cardinalities": []}
    if kept["rows"] != args.rows:
        sys.exit(f"--inputs {folder}: its tables have {kept['rows']:,} rows, not --rows {args.rows:,}; "
                 "give the same --rows, or another folder")
    missing = [k for k in sorted(args.cardinalities) if k not in kept["cardinalities"]]
    results: dict[int, dict[str, Any]] = {k: {"vocab_seconds": None} for k in args.cardinalities}
    if not missing:
        return results
    from embedlib.core.bundle import vocab_bytes
    from embedlib.core.config import SparkConfig
    from embedlib.core.vocab import Vocabulary
    from embedlib.spark.session import get_session
    from embedlib.spark.vocab import run_vocab_job

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    try:
        spark = get_session(SparkConfig(master=args.master, conf={"spark.sql.shuffle.partitions": "8",
                                                                  "spark.driver.memory": "4g"}), app_name="highcard-bench")
    except ImportError as exc:  # a host without Spark (a GPU host) measures inputs made elsewhere
        sys.exit(f"--inputs {folder} lacks the tables of {', '.join(f'{k:,}' for k in missing)} values, and making them "
                 f"needs Spark ({exc}); make them with --inputs on a machine with Spark and copy the folder here")
    spark.sparkContext.setLogLevel("ERROR")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for k in missing:
            data = str(folder / f"data-{k}.parquet")
            generate(spark, args.rows, k, data)
            cfg = config(f"{tmp}/vocab-{k}", data)
            started = time.perf_counter()
            run_vocab_job(spark, cfg)
            results[k]["vocab_seconds"] = time.perf_counter() - started
            (folder / f"vocab-{k}.parquet").write_bytes(vocab_bytes(Vocabulary.load_delta(cfg.layout.vocab)))
            kept["cardinalities"].append(k)
            record.write_text(json.dumps(kept))  # a table counts as kept once its vocabulary is written
    finally:
        spark.stop()
    return results


def report(args: argparse.Namespace, results: dict[int, dict[str, Any]]) -> None:
    w = sys.stdout.write
    w(f"rows: {args.rows:,}  columns: c (the cardinality), d (20 values, from c), x, y  model.size small, masked; "
      f"train {args.train_seconds:.0f} s, score {args.score_seconds:.0f} s (1 thread, batches of {SCORE_BATCH:,}); "
      f"rows/s: the median of {args.rounds} interleaved rounds; training on {getattr(args, 'gpu', 'the CPU')}, "
      f"batches of {args.batch_size:,}\n\n")
    w(f"{'cardinality':>12} {'values':>9} {'head':<9}{'cutoffs / bucket':<22}{'vocab s':>8}{'train rows/s':>14}"
      f"{'score rows/s':>14}{'bundle MiB':>12}{'peak MiB':>10}{'GPU MiB':>9}\n")
    for k, r in results.items():
        for head in HEADS:
            m = r.get(head)
            if m is None:
                continue
            if "error" in m:
                w(f"{k:>12,} {'':>9} {head:<9}failed: {m['error']}\n")
                continue
            name = head if m["cutoffs"] else "full"  # at or below adaptive_above the default is a full softmax
            shape = str(m["cutoffs"]) + (f" / {m['bucket']:,}" if m.get("bucket") else "")
            vocab_s, gpu = r["vocab_seconds"], m.get("gpu_peak_mib")
            w(f"{k:>12,} {m['values']:>9,} {name:<9}{shape:<22}{'kept' if vocab_s is None else f'{vocab_s:.1f}':>8}"
              f"{m['train_rows_per_s']:>14,.0f}{m['score_rows_per_s']:>14,.0f}{m['bundle_mib']:>12.1f}"
              f"{m['peak_rss_mib']:>10,.0f}{'—' if gpu is None else f'{gpu:,.0f}':>9}\n")
    w("\neach round's rows/s, train | score:\n")
    for k, r in results.items():
        for head in HEADS:
            runs = r.get(head, {}).get("rounds", [])
            if runs:
                train, score = (" / ".join(f"{m[key]:,.0f}" for m in runs) for key in ("train_rows_per_s", "score_rows_per_s"))
                w(f"{k:>12,} {head if runs[0]['cutoffs'] else 'full':<9}{train} | {score}\n")
    base = results.get(min(results), {}).get("adaptive", {})
    for k, head in ((100_000, "adaptive"), (100_000, "dense")):
        m = results.get(k, {}).get(head, {})
        if "rounds" in m and "rounds" in base:
            # round by round (a model that failed in a round has no "rounds")
            train_x, score_x = ([wide[key] / narrow[key] for wide, narrow in zip(m["rounds"], base["rounds"])]
                                for key in ("train_rows_per_s", "score_rows_per_s"))
            t, s = statistics.median(train_x), statistics.median(score_x)
            ok = "met" if t >= 0.5 and s >= 0.5 else "NOT met"
            model = "the default's" if head == "adaptive" else "with every table dense (train.lazy_above: null), the"
            w(f"\ngoal: at {k:,} values {model} training and scoring rows/s >= 0.5x the {min(results):,}-value "
              f"table's (median of {len(train_x)} rounds): training {t:.2f}x, scoring {s:.2f}x — {ok}\n"
              f"  each round: training {' '.join(f'{x:.2f}x' for x in train_x)}, "
              f"scoring {' '.join(f'{x:.2f}x' for x in score_x)}\n")


if __name__ == "__main__":
    main()
