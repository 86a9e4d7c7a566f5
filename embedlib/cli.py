"""The ``embedlib`` command: ``embedlib <command> --conf FILE [--conf FILE2 …] [--set k=v …]``.

Every job entry point (``jobs/*.py``, the wheel's console scripts, Databricks
``python_wheel_task``) is this same parser with the command fixed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from embedlib import __version__
from embedlib.config import Config, ConfigError, SourceConfig, load_config
from embedlib.layout import PathError, check_path

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "COMMANDS",
    "entry",
    "evaluate_main",
    "extract_main",
    "features_main",
    "main",
    "run_main",
    "score_main",
    "train_main",
    "vocab_main",
]

log = logging.getLogger("embedlib")


def _vocab(spark: SparkSession, cfg: Config, args: argparse.Namespace) -> list[str]:
    from embedlib.vocab import run_vocab_job

    vocab = run_vocab_job(spark, cfg)
    return [f"vocabulary written to {cfg.layout.vocab}", *vocab.summary()]


def _train(spark: SparkSession, cfg: Config, args: argparse.Namespace) -> list[str]:
    from embedlib.train import run_train_job

    result = run_train_job(spark, cfg)
    m = result.metrics
    lines = [
        f"bundle {result.bundle_id} written to {result.bundle_path}",
        f"backend {m['backend']} ({m['world_size']} worker(s)), {m['epochs_run']} epoch(s), "
        f"best epoch {m['best_epoch']}, validation loss {m['validation_loss']:.4f} nats/row, "
        f"threshold {result.threshold:.3f} nats, {m['train_seconds']}s",
        "epoch  train    validation",
    ]
    lines += [f"{h['epoch']:>5}  {h['train_loss']:<8.4f} {h['validation_loss']:.4f}" for h in m["history"]]
    if result.tracking_run_id:
        lines.append(f"MLflow run {result.tracking_run_id}")
    return lines


def _extract(spark: SparkSession, cfg: Config, args: argparse.Namespace) -> list[str]:
    from embedlib.extract import run_extract_job

    path, npz = run_extract_job(spark, cfg, getattr(args, "npz", None))
    lines = [f"embeddings written to {path}"]
    if npz:
        lines.append(f"{len(npz)} .npz file(s) written to {args.npz}")
    return lines


def _features(spark: SparkSession, cfg: Config, args: argparse.Namespace) -> list[str]:
    from embedlib.extract import run_features_job

    return [f"design matrix written to {run_features_job(spark, cfg)}"]


def _score(spark: SparkSession, cfg: Config, args: argparse.Namespace) -> list[str]:
    from embedlib.score import run_score_job

    run = run_score_job(spark, cfg)
    if not run.written:
        rebuilt = "; its missing run summary was rebuilt" if run.rows else ""
        return [f"score run {run.run_id} was already written to {run.output}; nothing added{rebuilt}"]
    lines = score_report(spark, run, cfg)
    if run.tracking_run_id:
        lines.append(f"MLflow run {run.tracking_run_id}")
    return lines


def score_report(spark: SparkSession, run: Any, cfg: Config, top: int = 10) -> list[str]:
    """Readable summary of a score run: the top rows with reasons, the distribution."""
    from pyspark.sql import functions as F

    from embedlib.tables import read_table

    lines = [
        f"scored {run.rows:,} rows of {run.source} -> {run.output} (run {run.run_id})",
        f"threshold {run.threshold:.3f} nats: {run.anomalies:,} rows flagged "
        f"({100.0 * run.anomalies / max(run.rows, 1):.2f}%)",
        "score quantiles (nats): " + ", ".join(f"q{float(q) * 100:g}={v:.2f}" for q, v in run.quantiles.items()),
    ]
    if run.inf_rows:
        lines.append(f"{run.inf_rows:,} row(s) had ±inf numerics, scored as missing (the vocabulary's inf_policy is null)")
    oov = {c: r for c, r in run.oov_rate.items() if r > 0}
    if oov:
        lines.append("out-of-vocabulary rate: " + ", ".join(f"{c} {100 * r:.3f}%" for c, r in oov.items()))
    scores = read_table(spark, run.output).where(F.col("bundle_id") == run.bundle_id)
    rows = scores.orderBy(F.col("anomaly_score").desc()).limit(top).collect()
    lines.append(f"top {len(rows)} rows:")
    for row in rows:
        ids = ", ".join(f"{c}={row[c]}" for c in cfg.columns.id)
        lines.append(f"  {row['anomaly_score']:8.2f} nats{'  ' + ids if ids else ''}")
        for reason in row["reasons"]:
            lines.append("      " + format_reason(reason))
    return lines


def format_reason(reason: Any) -> str:
    """``native-country=Holand-Netherlands — expected United-States (p=0.91), +4.1 nats``."""
    prob = f" (p={reason['probability']:.2f})" if reason["probability"] is not None else ""
    return (
        f"{reason['column']}={reason['value']} — expected {reason['expected']}{prob}, "
        f"+{reason['nats']:.1f} nats"
    )


def _run(spark: SparkSession, cfg: Config, args: argparse.Namespace) -> list[str]:
    lines = ["== vocab", *_vocab(spark, cfg, args), "== train", *_train(spark, cfg, args)]
    lines += ["== extract", *_extract(spark, cfg, args), "== score", *_score(spark, cfg, args)]
    lines += [
        "== outputs",
        f"  vocabulary  {cfg.layout.vocab}",
        f"  bundle      {cfg.layout.bundle}",
        f"  embeddings  {cfg.layout.embeddings}",
        f"  scores      {cfg.score.output or cfg.layout.scores}",
        f"  score runs  {cfg.layout.score_runs}",
    ]
    return lines


def _evaluate(spark: SparkSession, cfg: Config, args: argparse.Namespace) -> list[str]:
    from embedlib.evaluate import EvaluateOptions, run_evaluate_job

    opts = EvaluateOptions(
        labels=args.labels, label_column=args.label_column, positive=args.positive,
        labels_format=args.labels_format, plant=args.plant, seed=args.seed, top_k=args.top_k,
        baselines=args.baselines, max_rows=args.max_rows,
    )
    return evaluation_report(run_evaluate_job(spark, cfg, opts))


def evaluation_report(ev: Any) -> list[str]:
    """The metrics of every method side by side, the columns behind the flags, and the files."""
    from embedlib.evaluate import METHODS

    k = ev.methods[0].top_k
    lines = [
        f"evaluated bundle {ev.bundle_id} on {ev.description}",
        f"{ev.positives:,} positive of {ev.rows:,} rows ({100.0 * ev.positives / max(ev.rows, 1):.2f}%)",
        f"{'method':<38} {'AUROC':>6} {'AUPRC':>6} {'threshold':>10} {'flagged':>8} {'precision':>9} "
        f"{'recall':>6} {'P@' + str(k):>8} {'R@' + str(k):>8}",
    ]
    for m in ev.methods:
        lines.append(
            f"{METHODS.get(m.method, m.method):<38} {m.auroc:>6.3f} {m.auprc:>6.3f} {m.threshold:>10.4g} "
            f"{m.flagged:>8,} {m.precision:>9.3f} {m.recall:>6.3f} {m.precision_at_k:>8.3f} {m.recall_at_k:>8.3f}"
        )
    gaps = sorted(
        ((name, v["flagged"], v["unflagged"]) for name, v in ev.column_means.items() if v["flagged"] is not None),
        key=lambda t: t[1] - (t[2] or 0.0), reverse=True,
    )
    if gaps:
        lines.append("mean nats, flagged vs unflagged rows (embedlib; largest differences first):")
        lines += [f"  {name:<20} {f:7.2f} vs {u or 0.0:6.2f}" for name, f, u in gaps[:5]]
    lines.append(f"written to {ev.folder}:")
    lines += [f"  {name:<17} {path}" for name, path in ev.files.items()]
    return lines


def _evaluate_args(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--labels", metavar="PATH",
                      help="labels table (Delta path, .parquet, .csv with a header, or catalog name), "
                           "joined to the run's scores on columns.id")
    what.add_argument("--plant", type=float, metavar="FRACTION",
                      help="plant anomalies in this fraction of the rows of score.source (held out) and score them")
    parser.add_argument("--label-column", metavar="NAME", help="the labels table's label column (with --labels)")
    parser.add_argument("--positive", metavar="VALUE",
                        help="the label value that marks an anomaly, when labels are not 0/1 or true/false")
    parser.add_argument("--labels-format", choices=["delta", "parquet", "csv", "table"],
                        help="format of --labels (default: from the path)")
    parser.add_argument("--baselines", action="store_true",
                        help="also score the rows with the seed design (MSE on embedding output) and IsolationForest")
    parser.add_argument("--top-k", type=int, metavar="K",
                        help="precision and recall in the K highest scores (default: the number of positive rows)")
    parser.add_argument("--max-rows", type=int, default=200_000, metavar="N",
                        help="rows evaluated, and rows the baselines are fitted on, at most (a seeded sample; "
                             "default 200000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the planting and of samples (default 0)")


def _npz_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--npz", metavar="DIR", help="also write one <column>.npz per categorical to DIR")


Command = Callable[["SparkSession", Config, argparse.Namespace], list[str]]

#: command name → (help, function, extra-argument adder).
COMMANDS: dict[str, tuple[str, Command, Callable[[argparse.ArgumentParser], None] | None]] = {
    "vocab": ("build category vocabularies and numeric statistics", _vocab, None),
    "train": ("encode the source and train the embedding autoencoder; write the bundle", _train, None),
    "extract": ("write the embedding matrices (Delta; --npz for .npz files)", _extract, _npz_arg),
    "features": ("write the design matrix: embeddings + standardized numerics", _features, None),
    "score": ("score a table: anomaly score, contributions, reasons, flag", _score, None),
    "run": ("vocab -> train -> extract -> score, end to end", _run, _npz_arg),
    "evaluate": ("detection quality: AUROC, AUPRC, precision/recall, plots (--labels or --plant)", _evaluate,
                 _evaluate_args),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedlib", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"embedlib {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, _, extra) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if extra is not None:
            extra(cmd)
        cmd.add_argument(
            "--conf", action="append", default=[], metavar="FILE",
            help="YAML config file; repeat to layer files (later ones win)",
        )
        cmd.add_argument(
            "--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
            help="override one key, value read as YAML (e.g. --set vocab.min_count=5)",
        )
        cmd.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit code (0 ok, 2 bad input, 1 other failures).

    A failure is logged as one line: an embedlib error raised inside a Spark task
    is found in Spark's wrapping (:func:`embedlib.errors.explain`). The full trace
    is logged at DEBUG only; ``--log-level DEBUG`` also leaves Spark's own
    per-task stack traces on stderr.
    """
    args = _parser().parse_args(argv)
    debug = _setup_logging(args.log_level)
    try:
        cfg = load_config(args.conf, args.overrides)
        if getattr(args, "npz", None):
            check_path(args.npz, what="--npz")
    except (ConfigError, PathError) as exc:
        log.error("configuration error: %s", exc)
        return 2
    import embedlib

    log.info("embedlib %s (%s) %s", __version__, embedlib.__file__, args.command)
    spark: SparkSession | None = None
    try:
        from embedlib.spark import get_session

        spark = get_session(cfg.spark, app_name=f"embedlib-{args.command}-{cfg.name}")
        if not debug:
            _quiet_task_failure_logs(spark)
        lines = COMMANDS[args.command][1](spark, cfg, args)
    except ValueError as exc:  # every embedlib input error is a ValueError with a clear message
        log.error("%s failed: %s", args.command, exc)
        log.debug("%s failed", args.command, exc_info=True)
        return 2
    except Exception as exc:  # a Spark job failed, or something unexpected: one line, trace at DEBUG
        from embedlib.errors import explain

        failure = explain(exc, spark, _sources(cfg))
        log.error("%s failed: %s", args.command, failure.message)
        log.debug("%s failed", args.command, exc_info=True)
        return failure.exit_code
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
    return 0


def _sources(cfg: Config) -> list[SourceConfig]:
    """Every source configuration a command may read (to explain read failures)."""
    out = [cfg.source]
    for other in (cfg.score.source, cfg.features.source):
        if other is not None:
            out.append(cfg.source.with_target(other))
    return out


#: Spark loggers that print a whole Java/Python stack trace for each failed task.
_TASK_FAILURE_LOGGERS = (
    "org.apache.spark.executor.Executor",
    "org.apache.spark.scheduler.TaskSetManager",
    "org.apache.spark.sql.execution.datasources.FileFormatWriter",
    "org.apache.spark.sql.execution.datasources.FileFormatDataWriter",
    "org.apache.spark.util.Utils",
)


def _quiet_task_failure_logs(spark: SparkSession) -> None:
    """Keep Spark's per-task stack traces off stderr; :func:`main` reports the failure."""
    try:
        jvm = spark.sparkContext._jvm
        assert jvm is not None
        level = jvm.org.apache.logging.log4j.Level.OFF
        for name in _TASK_FAILURE_LOGGERS:
            jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(name, level)
    except Exception as exc:  # another logging backend: its traces stay, nothing else changes
        log.debug("could not quiet Spark's task failure logs: %s", exc)


def _setup_logging(level: str) -> bool:
    """Configure logging; True when the level is DEBUG (or lower)."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(level=numeric, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return bool(numeric <= logging.DEBUG)


def entry(command: str) -> Callable[[Sequence[str] | None], int]:
    """A ``main(argv)`` with the command fixed, for ``jobs/*.py`` and console scripts."""

    def run(argv: Sequence[str] | None = None) -> int:
        return main([command, *(sys.argv[1:] if argv is None else argv)])

    return run


def _script(command: str) -> Callable[[], int]:
    """The wheel's ``embedlib-<command>`` entry point.

    A console script exits with the returned code; a Databricks
    ``python_wheel_task`` calls the function and ignores what it returns, so a
    failure is raised as ``SystemExit`` to fail the task.
    """
    run = entry(command)

    def script() -> int:
        code = run(None)
        if code:
            raise SystemExit(code)
        return 0

    script.__name__ = f"{command}_main"
    script.__doc__ = f"``embedlib {command}`` with ``sys.argv[1:]`` as its arguments."
    return script


vocab_main = _script("vocab")
train_main = _script("train")
extract_main = _script("extract")
features_main = _script("features")
score_main = _script("score")
run_main = _script("run")
evaluate_main = _script("evaluate")


if __name__ == "__main__":
    sys.exit(main())
