"""The ``embedlib`` command: ``embedlib <command> --conf FILE [--conf FILE2 …] [--set k=v …]``.

Every job entry point (``jobs/*.py``, the wheel's console scripts, Databricks
``python_wheel_task``) is this same parser with the command fixed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from embedlib import __version__
from embedlib.core.config import Config, ConfigError, SourceConfig, load_config
from embedlib.core.errors import CommandAlert
from embedlib.core.layout import PathError, check_path
from embedlib.reports import evaluation_report, format_reason, score_report  # re-exported: notebooks use them

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "COMMANDS",
    "drift_main",
    "entry",
    "evaluate_main",
    "evaluation_report",
    "extract_main",
    "features_main",
    "format_reason",
    "main",
    "run_main",
    "score_main",
    "score_report",
    "train_main",
    "vocab_main",
]

log = logging.getLogger("embedlib")


def _vocab(spark: SparkSession, cfg: Config, args: argparse.Namespace) -> list[str]:
    from embedlib.reports import vocab_report
    from embedlib.spark.vocab import run_vocab_job

    return vocab_report(run_vocab_job(spark, cfg, update=getattr(args, "update", False)), cfg)


def _vocab_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--update", action="store_true",
                        help="count the source into the run's vocabulary: indices kept, new values numbered after "
                             "the last, counts and statistics updated (a new version of the table)")


def _train(spark: SparkSession, cfg: Config, args: argparse.Namespace) -> list[str]:
    from embedlib.reports import train_report
    from embedlib.spark.train import run_train_job

    return train_report(run_train_job(spark, cfg))


def _train_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--warm-start", metavar="BUNDLE",
                        help="start from this bundle's weights (or a run folder's bundle): train.warm_start; the "
                             "run's vocabulary must extend the bundle's (embedlib vocab --update)")


def _extract(spark: SparkSession, cfg: Config, args: argparse.Namespace) -> list[str]:
    from embedlib.reports import extract_report
    from embedlib.spark.extract import run_extract_job

    npz = getattr(args, "npz", None)
    return extract_report(*run_extract_job(spark, cfg, npz), npz)


def _features(spark: SparkSession, cfg: Config, args: argparse.Namespace) -> list[str]:
    from embedlib.spark.extract import run_features_job

    return [f"design matrix written to {run_features_job(spark, cfg)}"]


def _score(spark: SparkSession, cfg: Config, args: argparse.Namespace) -> list[str]:
    if getattr(args, "stream", False):
        from embedlib.reports import stream_report
        from embedlib.spark.stream import run_score_stream

        return stream_report(run_score_stream(spark, cfg), cfg)
    from embedlib.spark.score import run_score_job

    return score_report(spark, run_score_job(spark, cfg), cfg)


def _score_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stream", action="store_true",
                        help="score score.source as a stream (Structured Streaming; score.stream sets the trigger, "
                             "checkpoint and files per micro-batch), each micro-batch one idempotent Delta commit")


def _drift(spark: SparkSession, cfg: Config, args: argparse.Namespace) -> list[str]:
    from embedlib.spark.runs import run_drift_job

    return run_drift_job(spark, cfg)


def _run(spark: SparkSession, cfg: Config, args: argparse.Namespace) -> list[str]:
    from embedlib.pipeline import run_pipeline

    return run_pipeline(spark, cfg, npz_dir=getattr(args, "npz", None))


def _evaluate(spark: SparkSession, cfg: Config, args: argparse.Namespace) -> list[str]:
    from embedlib.evaluate import EvaluateOptions, run_evaluate_job

    opts = EvaluateOptions(
        labels=args.labels, label_column=args.label_column, positive=args.positive,
        labels_format=args.labels_format, plant=args.plant, seed=args.seed, top_k=args.top_k,
        baselines=args.baselines, max_rows=args.max_rows,
    )
    return evaluation_report(run_evaluate_job(spark, cfg, opts))


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
    "vocab": ("build category vocabularies and numeric statistics", _vocab, _vocab_args),
    "train": ("encode the source and train the embedding autoencoder; write the bundle", _train, _train_args),
    "extract": ("write the embedding matrices (Delta; --npz for .npz files)", _extract, _npz_arg),
    "features": ("write the design matrix: embeddings + standardized numerics", _features, None),
    "score": ("score a table: anomaly score, contributions, reasons, flag", _score, _score_args),
    "run": ("vocab -> train -> extract -> score, end to end", _run, _npz_arg),
    "drift": ("drift of every scoring run against training: PSI, OOV and null rates per column; exit 3 on alert",
              _drift, None),
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
    is found in Spark's wrapping (:func:`embedlib.spark.failures.explain`). The full trace
    is logged at DEBUG only; ``--log-level DEBUG`` also leaves Spark's own
    per-task stack traces on stderr.
    """
    args = _parser().parse_args(argv)
    debug = _setup_logging(args.log_level)
    try:
        extra = [f"train.warm_start={json.dumps(args.warm_start)}"] if getattr(args, "warm_start", None) else []
        cfg = load_config(args.conf, [*args.overrides, *extra])
        if getattr(args, "npz", None):
            check_path(args.npz, what="--npz")
    except (ConfigError, PathError) as exc:
        log.error("configuration error: %s", exc)
        return 2
    import embedlib

    log.info("embedlib %s (%s) %s", __version__, embedlib.__file__, args.command)
    spark: SparkSession | None = None
    try:
        from embedlib.spark.session import get_session, quiet_task_failure_logs

        spark = get_session(cfg.spark, app_name=f"embedlib-{args.command}-{cfg.name}", delta=cfg.delta,
                            s3a=cfg.uses_s3a)
        if not debug:
            quiet_task_failure_logs(spark)
        lines = COMMANDS[args.command][1](spark, cfg, args)
    except CommandAlert as alert:  # the command ran; what it found fails the job
        sys.stdout.write("\n".join(alert.lines) + "\n")
        sys.stdout.flush()
        log.error("%s: %s", args.command, alert)
        return alert.exit_code
    except ValueError as exc:  # every embedlib input error is a ValueError with a clear message
        log.error("%s failed: %s", args.command, exc)
        log.debug("%s failed", args.command, exc_info=True)
        return 2
    except Exception as exc:  # a Spark job failed, or something unexpected: one line, trace at DEBUG
        from embedlib.spark.failures import explain

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
drift_main = _script("drift")


if __name__ == "__main__":
    sys.exit(main())
