"""The ``embedlib`` command: ``embedlib <command> --conf FILE [--conf FILE2 …] [--set k=v …]``.

Every job entry point (``jobs/*.py``, the wheel's console scripts, Databricks
``python_wheel_task``) is this same parser with the command fixed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from embedlib import __version__
from embedlib.config import Config, ConfigError, load_config
from embedlib.layout import PathError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["COMMANDS", "main"]

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
    return lines


Command = Callable[["SparkSession", Config, argparse.Namespace], list[str]]

#: command name → (help, function). Later capabilities register here.
COMMANDS: dict[str, tuple[str, Command]] = {
    "vocab": ("build category vocabularies and numeric statistics", _vocab),
    "train": ("encode the source and train the embedding autoencoder; write the bundle", _train),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedlib", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"embedlib {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, _) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
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
    """Run one command; returns the process exit code (0 ok, 2 bad input)."""
    args = _parser().parse_args(argv)
    _setup_logging(args.log_level)
    try:
        cfg = load_config(args.conf, args.overrides)
    except (ConfigError, PathError) as exc:
        log.error("configuration error: %s", exc)
        return 2
    from embedlib.spark import get_session

    spark = get_session(cfg.spark, app_name=f"embedlib-{args.command}-{cfg.name}")
    try:
        lines = COMMANDS[args.command][1](spark, cfg, args)
    except ValueError as exc:  # every embedlib input error is a ValueError with a clear message
        log.error("%s failed: %s", args.command, exc)
        return 2
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
    return 0


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("py4j", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def entry(command: str) -> Callable[[Sequence[str] | None], int]:
    """A ``main(argv)`` with the command fixed, for ``jobs/*.py`` and console scripts."""

    def run(argv: Sequence[str] | None = None) -> int:
        return main([command, *(sys.argv[1:] if argv is None else argv)])

    return run


if __name__ == "__main__":
    sys.exit(main())
