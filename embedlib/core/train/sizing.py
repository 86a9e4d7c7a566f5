"""``model.size``: the model's capacity, chosen by held-out likelihood.

A *size* sets the encoder widths, the bottleneck and the embedding cap together
(:data:`SIZES`); keys the configuration sets explicitly (``model.hidden``,
``model.bottleneck``, ``model.max_embedding_dim``) win over every size. With
``model.size: auto`` each distinct candidate trains with the same loop and
schedule on a sample of the encoded shards (whole training files up to
``model.search_rows`` rows, validation files up to a quarter of that), one Spark
task per candidate so that they run in parallel, each stopped after
``model.search_steps`` optimizer steps (or on its plateau, before); the lowest
validation NLL wins — the unsupervised model-selection criterion, no labels
needed — compared at equal optimizer steps (:func:`compare_at_equal_steps`),
except that the smallest size within ``SIZE_TOLERANCE`` of it is preferred
(cheaper to score, and as good). Bounded in steps, the search chooses the same
size on an idle or a busy machine; ``model.search_seconds`` is only a guard: a
trial that reaches its share of it fails the run, naming the keys to change.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from embedlib.core.train.errors import TrainError

if TYPE_CHECKING:
    from embedlib.core.config.schema import ModelConfig
    from embedlib.core.encode import ShardSet
    from embedlib.core.train.loop import TrainJob

__all__ = ["SIZES", "SIZE_TOLERANCE", "InProcessTrials", "Size", "SizeChoice", "TrialRunner", "candidates",
           "choose_size", "compare_at_equal_steps", "resolve_size", "run_trial", "sample_shards"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Size:
    """One point of the capacity grid."""

    hidden: tuple[int, ...]
    bottleneck: int
    max_embedding_dim: int


#: The grid, smallest first. ``medium`` is the fixed default of earlier versions.
SIZES: Mapping[str, Size] = {
    "small": Size(hidden=(64, 32), bottleneck=8, max_embedding_dim=16),
    "medium": Size(hidden=(128, 64), bottleneck=16, max_embedding_dim=32),
    "large": Size(hidden=(256, 128), bottleneck=32, max_embedding_dim=64),
}
#: A smaller size whose validation NLL is within this fraction (of |best|) of the best is kept.
SIZE_TOLERANCE = 0.01
#: Seconds between two progress lines of the search.
PROGRESS_SECONDS = 10.0
#: The size used when there is nothing to choose by (no validation rows).
FALLBACK = "medium"


def resolve_size(model: ModelConfig, size: str) -> ModelConfig:
    """``model`` with ``size``'s shape wherever the configuration left it null."""
    s = SIZES[size]
    return replace(
        model,
        size=size,  # type: ignore[arg-type]
        hidden=model.hidden if model.hidden is not None else s.hidden,
        bottleneck=model.bottleneck if model.bottleneck is not None else s.bottleneck,
        max_embedding_dim=model.max_embedding_dim if model.max_embedding_dim is not None else s.max_embedding_dim,
    )


def candidates(model: ModelConfig) -> dict[str, ModelConfig]:
    """The distinct shapes to try, smallest first: every size for ``auto``, else the named one.
    Sizes that explicit keys make identical are tried once (under the smaller name)."""
    names = list(SIZES) if model.size == "auto" else [model.size]
    out: dict[str, ModelConfig] = {}
    seen: set[tuple[Any, ...]] = set()
    for name in names:
        resolved = resolve_size(model, name)
        key = (resolved.hidden, resolved.bottleneck, resolved.max_embedding_dim)
        if key not in seen:
            seen.add(key)
            out[name] = resolved
    return out


@dataclass(frozen=True)
class SizeChoice:
    """The chosen size, its resolved model section, and what each trial measured."""

    size: str
    model: ModelConfig
    trials: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    sample_rows: int = 0
    seconds: float = 0.0
    compared_at_steps: int | None = None  # the trials' NLLs compared at this many steps (None: at their end)
    whole: bool = False  # the trials trained on every training and validation row (not a sample)

    def to_metrics(self) -> dict[str, Any]:
        return {"size": self.size, "trials": {k: dict(v) for k, v in self.trials.items()},
                "sample_rows": self.sample_rows, "seconds": self.seconds, "compared_at_steps": self.compared_at_steps,
                "whole": self.whole}


def sample_shards(shards: ShardSet, rows: int) -> ShardSet:
    """The first whole training files holding at least ``rows`` rows, and validation files
    holding at least a quarter of that (every file when the split is smaller)."""
    from embedlib.core.train.batches import file_rows

    def take(files: tuple[str, ...], want: int) -> tuple[tuple[str, ...], int]:
        chosen: list[str] = []
        total = 0
        for path in files:
            if total >= want:
                break
            chosen.append(path)
            total += file_rows(path)
        return tuple(chosen), total

    train, train_rows = take(shards.train_files, rows)
    valid, valid_rows = take(shards.valid_files, max(1, rows // 4))
    return replace(shards, train_files=train, valid_files=valid, train_rows=train_rows, valid_rows=valid_rows,
                   fingerprint=f"{shards.fingerprint}-sample-{len(train)}-{len(valid)}")


class TrialRunner(Protocol):
    """Runs the size trials: ``slots`` at a time, each with ``threads`` torch threads (0: torch's own)."""

    @property
    def slots(self) -> int: ...
    @property
    def threads(self) -> int: ...
    def run(self, jobs: list[tuple[str, TrainJob]]) -> list[tuple[str, dict[str, Any]]]: ...


@dataclass(frozen=True)
class InProcessTrials:
    """The trials one after another in this process (in memory; a session's runner is
    :class:`embedlib.spark.train.backends.SparkTrials`)."""

    slots: int = 1
    threads: int = 0

    def run(self, jobs: list[tuple[str, TrainJob]]) -> list[tuple[str, dict[str, Any]]]:
        return [run_trial(job) for job in jobs]


def choose_size(model: ModelConfig, shards: ShardSet, trial_job: Callable[[str, ModelConfig, ShardSet], TrainJob],
                runner: TrialRunner | None = None) -> SizeChoice:
    """Resolve ``model.size``: train each candidate (``trial_job(name, model, sample)``) with ``runner``
    (as Spark tasks on a session; one after another in this process by default) and keep the best
    by validation NLL."""
    cands = candidates(model)
    if len(cands) == 1:
        name, resolved = next(iter(cands.items()))
        return SizeChoice(name, resolved)
    if shards.valid_rows == 0:
        log.warning("model.size is auto but there are no validation rows to choose by; using %s "
                    "(raise train.validation_fraction, or set model.size)", FALLBACK)
        return SizeChoice(FALLBACK, cands.get(FALLBACK, next(iter(cands.values()))))
    sample = sample_shards(shards, model.search_rows)
    active: TrialRunner = runner if runner is not None else InProcessTrials()
    slots = max(1, min(len(cands), active.slots))
    per_trial = model.search_seconds / math.ceil(len(cands) / slots)
    jobs = [(name, replace(trial_job(name, m, sample), stop_steps=model.search_steps, max_seconds=per_trial,
                           threads=active.threads, progress=False)) for name, m in cands.items()]
    log.info("model.size auto: training %s on %d rows (validation %d), %d at a time, %d steps each (guard: %.0f s)",
             ", ".join(cands), sample.train_rows, sample.valid_rows, slots, model.search_steps, per_trial)
    started = time.perf_counter()
    try:
        with _Progress(jobs, model.search_steps):
            results = dict(active.run(jobs))
    except Exception as exc:
        from embedlib.core.errors import first_line

        raise TrainError(f"model.size auto: a trial failed: {first_line(exc)}; set model.size to "
                         "small, medium or large to train without the search") from exc
    late = {n: r for n, r in results.items() if r.get("stopped") == "time"}
    if late:
        name, r = next(iter(late.items()))
        raise TrainError(
            f"model.size auto: the {name} trial reached its share of model.search_seconds ({per_trial:.0f} s of "
            f"{model.search_seconds:g} s) after {r['steps']} of model.search_steps={model.search_steps} steps; the "
            "search is bounded in steps so that the same data and seed choose the same size on any machine, and "
            "the clock is only its guard: raise model.search_seconds, lower model.search_steps or "
            "model.search_rows, or set model.size to small, medium or large")
    horizon, compared = compare_at_equal_steps(results)
    best = min(compared.values())
    chosen = next(n for n in cands if compared[n] <= best + SIZE_TOLERANCE * abs(best))
    seconds = round(time.perf_counter() - started, 2)
    log.info("model.size auto: %s%s → %s (%.1f s)", ", ".join(
        f"{n} {compared[n]:.4f}" + ("" if r["converged"] else f" ({r['stopped']})") for n, r in results.items()),
        f", compared at {horizon} steps" if horizon is not None else "", chosen, seconds)
    trials = {n: {**{k: v for k, v in r.items() if k != "history"}, "compared_loss": compared[n]}
              for n, r in results.items()}
    whole = (sample.train_files, sample.valid_files) == (shards.train_files, shards.valid_files)
    return SizeChoice(chosen, cands[chosen], trials, sample.train_rows, seconds, horizon, whole)


class _Progress:
    """A progress line while the trials run: every ``PROGRESS_SECONDS``, the steps each trial's latest
    checkpoint (written every epoch, wherever the trial runs) has reached."""

    def __init__(self, jobs: list[tuple[str, TrainJob]], steps: int) -> None:
        self.jobs, self.steps = jobs, steps
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._report, name="embedlib-size-progress", daemon=True)

    def __enter__(self) -> _Progress:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()

    def _report(self) -> None:
        started = time.perf_counter()
        while not self.done.wait(PROGRESS_SECONDS):
            try:
                reached = [(name, job.store.latest_steps()) for name, job in self.jobs]
            except Exception as exc:  # a checkpoint being replaced, storage briefly unreachable: say so, go on
                log.debug("model.size auto: progress unreadable (%s)", exc)
                continue
            log.info("model.size auto: %s of %d steps (%.0f s)", ", ".join(f"{n} {s}" for n, s in reached),
                     self.steps, time.perf_counter() - started)


def compare_at_equal_steps(results: Mapping[str, Mapping[str, Any]]) -> tuple[int | None, dict[str, float]]:
    """Each trial's validation NLL to choose by, at the same number of optimizer steps.

    Sizes are compared at equal steps: when trials were stopped short of their plateau (by
    ``model.search_steps``; a trial the clock stopped counts the same way), each trial counts its
    best NLL within the steps the least advanced of those reached (``horizon``; epochs have the same
    length in every trial, so every trial was evaluated there). A trial that converged before the
    horizon counts its best. Returns ``(horizon or None, NLLs)``."""
    timed = [int(r["steps"]) for r in results.values() if r.get("stopped") in ("steps", "time")]
    horizon = min(timed) if timed else None
    compared: dict[str, float] = {}
    for name, r in results.items():
        within = [float(loss) for steps, loss in r.get("history", ()) if horizon is None or steps <= horizon]
        compared[name] = min(within) if within else float(r["validation_loss"])
    return horizon, compared


def run_trial(item: tuple[str, TrainJob]) -> tuple[str, dict[str, Any]]:
    """One candidate, in a Spark task: the training loop in a world of one."""
    import torch

    from embedlib.core.train.collective import SingleProcess
    from embedlib.core.train.loop import train_loop

    name, job = item
    if job.threads:
        torch.set_num_threads(job.threads)
    started = time.perf_counter()
    metrics = train_loop(SingleProcess(), job)
    keep = ("validation_loss", "steps", "epochs_run", "best_epoch", "stopped", "converged")
    return name, {**{k: metrics[k] for k in keep}, "seconds": round(time.perf_counter() - started, 2),
                  "history": [(h["steps"], h["validation_loss"]) for h in metrics["history"]]}
