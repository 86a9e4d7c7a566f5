"""``embedlib train``: vocabulary → encoded shards → the loop on the resolved backend → bundle."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from embedlib.core.calibration import Calibration
from embedlib.core.drift import training_profile
from embedlib.core.encode import Encoded, Encoder, ShardSet, read_shards
from embedlib.core.layout import join
from embedlib.core.model import EmbeddingAutoencoder, ModelSpec, column_nll
from embedlib.core.train.checkpoint import CheckpointStore
from embedlib.core.train.errors import TrainError
from embedlib.core.train.loop import TrainJob, tensors, train_loop
from embedlib.core.train.sizing import FALLBACK, choose_size, resolve_size
from embedlib.core.train.warm import load_parent, parent_model_config, warm_weights
from embedlib.spark.train.backends import Backend, SparkTrials, resolve_backend

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from embedlib.core.bundle import Bundle
    from embedlib.core.config import Config
    from embedlib.core.vocab import Vocabulary

__all__ = [
    "TrainResult", "best_model", "calibrate", "check_vocab_matches", "contributions_of", "make_job",
    "encode_to_shards", "run_train_job", "spec_for", "train_on_shards", "warm_start_of",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What training produced: the bundle and the metrics stored in it."""

    bundle_id: str
    bundle_path: str
    metrics: Mapping[str, Any]
    threshold: float
    tracking_run_id: str | None = None  # the MLflow run, with tracking.mlflow: true


def spec_for(vocab: Vocabulary, cfg: Config) -> ModelSpec:
    """The model of ``cfg`` for ``vocab``. A shape still unresolved (``model.size: auto``
    outside :func:`run_train_job`, which chooses) takes the fallback size's."""
    m = cfg.model
    if not m.shape_set:
        m = resolve_size(m, FALLBACK if m.size == "auto" else m.size)
    assert m.hidden is not None and m.bottleneck is not None and m.max_embedding_dim is not None
    return ModelSpec.build(
        vocab.categorical,
        [vocab.size(c) for c in vocab.categorical],
        vocab.numeric_columns,
        max_embedding_dim=m.max_embedding_dim,
        embedding_dims=m.embedding_dims,
        hidden=m.hidden,
        bottleneck=m.bottleneck,
        kind=m.kind,
        masks=m.masks,
        adaptive_above=m.adaptive_above,
        numeric_head=m.numeric_head,
    )


def check_vocab_matches(vocab: Vocabulary, cfg: Config) -> None:
    """The configured columns must be exactly the vocabulary's (same order)."""
    from embedlib.core.vocab import SchemaError

    if tuple(vocab.categorical) != cfg.columns.categorical or tuple(vocab.numeric_columns) != cfg.columns.numeric:
        raise SchemaError(
            "the configured columns do not match the vocabulary at "
            f"{cfg.layout.vocab}: vocabulary has categorical {list(vocab.categorical)} and numeric "
            f"{list(vocab.numeric_columns)}, config has categorical {list(cfg.columns.categorical)} and "
            f"numeric {list(cfg.columns.numeric)}; rerun `embedlib vocab` for this config"
        )


def contributions_of(model: EmbeddingAutoencoder, files: Sequence[str], encoder: Encoder,
                     max_rows: int = 200_000) -> np.ndarray:
    """Per-column contributions ``[rows, columns]`` of the first ``max_rows`` rows of ``files``,
    scored as scoring does, the model's ``pass_rows`` at a time (bounded memory whatever the shard size)."""
    model.eval()
    parts: list[np.ndarray] = []
    seen = 0
    with torch.inference_mode():
        for enc in read_shards(files, encoder, rows=model.pass_rows):
            cat, num, miss = tensors(enc, torch.device("cpu"))
            logits, pred = model.reconstruct(cat, num, miss)
            parts.append(column_nll(logits, pred, cat, num, miss).double().numpy())
            seen += cat.shape[0]
            if seen >= max_rows:
                return np.concatenate(parts)[:max_rows]
    return np.concatenate(parts) if parts else np.zeros((0, len(model.spec.columns)))


def profile_of(shards: ShardSet, encoder: Encoder, spec: ModelSpec, max_rows: int = 200_000) -> dict[str, list[float]]:
    """The share of each drift bin (:mod:`embedlib.core.drift`) over the first ``max_rows`` training rows."""
    def batches() -> Iterator[Encoded]:
        seen = 0
        for enc in read_shards(shards.train_files, encoder, rows=65_536):
            yield enc
            seen += len(enc)
            if seen >= max_rows:
                return

    return training_profile(spec.columns, len(spec.categorical), batches())


def calibrate(model: EmbeddingAutoencoder, shards: ShardSet, encoder: Encoder, quantile: float,
              max_rows: int = 200_000) -> tuple[Calibration, dict[str, float]]:
    """The calibration, fitted on validation rows (rows the weights were not fitted on; the
    training rows when there are none), and the ``quantile`` of training-row scores, both ways."""
    fit_on = shards.valid_files if shards.valid_rows else shards.train_files
    calibration = Calibration.fit(contributions_of(model, fit_on, encoder, max_rows))
    train = contributions_of(model, shards.train_files, encoder, max_rows)
    thresholds = {
        "nats": float(np.quantile(train.sum(1), quantile)),
        "calibrated": float(np.quantile(calibration.terms(train).sum(1), quantile)),
    }
    return calibration, thresholds


def run_train_job(spark: SparkSession, cfg: Config) -> TrainResult:
    """vocab (read) → encode shards → train on the backend → bundle."""
    from embedlib.core.vocab.schema import check_columns
    from embedlib.spark.tables import open_tables
    from embedlib.spark.tracking import check_tracking
    from embedlib.spark.vocab.job import load_vocabulary

    layout = cfg.layout
    tables = open_tables(spark, cfg.delta)
    backend = resolve_backend(spark, cfg.train)
    cfg = replace(cfg, train=replace(cfg.train, backend=backend.name))  # type: ignore[arg-type]  # tracking logs it
    check_tracking(cfg)
    vocab = load_vocabulary(tables, layout.vocab)
    check_vocab_matches(vocab, cfg)
    cfg, parent = warm_start_of(cfg, vocab)  # a bad warm start is refused before the source is encoded
    df = tables.read_source(cfg.source)
    check_columns(df.schema, cfg.source.name, categorical=cfg.columns.categorical, numeric=cfg.columns.numeric,
                  ids=cfg.columns.id, trained=vocab.meta.get("source_types"))
    version = ""
    if cfg.source.format == "delta" and cfg.source.path is not None:
        version = str(tables.version(cfg.source.path))
    shards = encode_to_shards(spark, df, vocab, cfg, source_version=version)
    return train_on_shards(spark, cfg, vocab, shards, backend, parent=parent)


def warm_start_of(cfg: Config, vocab: Vocabulary) -> tuple[Config, Bundle | None]:
    """``train.warm_start``'s bundle, checked against the run, and ``cfg`` with its model's shape."""
    if cfg.train.warm_start is None:
        return cfg, None
    parent = load_parent(cfg.train.warm_start)
    model = parent_model_config(parent, vocab, cfg.model, (cfg.columns.categorical, cfg.columns.numeric))
    return replace(cfg, model=model), parent


def train_on_shards(spark: SparkSession | None, cfg: Config, vocab: Vocabulary, shards: ShardSet,
                    backend: Backend, *, parent: Bundle | None) -> TrainResult:
    """Size → the loop on ``backend`` → calibration, thresholds → the bundle (and its MLflow run).
    ``spark`` runs the size trials in parallel; without it (in memory) they run one after another.
    ``parent``: the warm start's bundle, with ``cfg`` from :func:`warm_start_of`."""
    from embedlib.core.bundle import save_bundle
    from embedlib.spark.tracking import log_training

    layout = cfg.layout
    def trial_folder(name: str) -> str:
        return join(layout.size_trials, name)

    size = choose_size(cfg.model, shards, lambda name, model, sample: make_job(
        replace(cfg, model=model), vocab, sample, backend, folder=trial_folder(name)),
        SparkTrials.of(spark) if spark is not None else None)
    cfg = replace(cfg, model=size.model)
    job = make_job(cfg, vocab, shards, backend, parent=parent)
    # a winner trained on every row, in a world of one, is the first steps of this run: go on from there
    continued = (size.whole and backend.workers == 1 and parent is None
                 and job.store.adopt(CheckpointStore(trial_folder(size.size), "", "")))
    if continued:
        log.info("continuing the %s trial of the size search (%d steps; it trained on every row)", size.size,
                 job.store.latest_steps())
    started = time.perf_counter()
    metrics = backend.run(train_loop, job)
    metrics = {**metrics, "backend": backend.name, "train_seconds": round(time.perf_counter() - started, 2),
               "train_rows": shards.train_rows, "validation_rows": shards.valid_rows, "model_size": size.size,
               "parent_bundle_id": parent.bundle_id if parent is not None else None,
               "continued_trial": size.size if continued else None}
    if size.trials:
        metrics["size_search"] = size.to_metrics()
    model = best_model(job)
    calibration, thresholds = calibrate(model, shards, job.encoder, cfg.score.threshold_quantile)
    threshold = thresholds[cfg.score.rank_by]
    profile = profile_of(shards, job.encoder, model.spec)
    bundle_id = save_bundle(
        layout.bundle,
        model=model,
        vocab=vocab,
        threshold=threshold,
        threshold_quantile=cfg.score.threshold_quantile,
        metrics=metrics,
        model_config=asdict(cfg.model),
        calibration=calibration,
        rank_by=cfg.score.rank_by,
        thresholds=thresholds,
        profile=profile,
    )
    tracked = log_training(cfg, layout.bundle, bundle_id, metrics, threshold)
    return TrainResult(bundle_id=bundle_id, bundle_path=layout.bundle, metrics=metrics, threshold=threshold,
                       tracking_run_id=tracked)


def make_job(cfg: Config, vocab: Vocabulary, shards: ShardSet, backend: Backend,
             folder: str | None = None, parent: Bundle | None = None) -> TrainJob:
    """What every rank needs to train ``cfg``'s model on ``shards``; checkpoints go to the
    run's folder, or to ``folder`` (a size trial's); ``parent``: the bundle it starts from."""
    spec = spec_for(vocab, cfg)
    t = cfg.train
    fingerprint = _job_fingerprint(spec, shards, cfg, backend, parent.bundle_id if parent is not None else None)
    store = (CheckpointStore.for_run(cfg.layout, fingerprint) if folder is None
             else CheckpointStore(folder=folder, reports=join(folder, "workers"), fingerprint=fingerprint))
    return TrainJob(
        spec=spec,
        shards=shards,
        encoder=Encoder.for_vocab(vocab),
        store=store,
        epochs=t.epochs,
        batch_size=t.batch_size,
        learning_rate=t.learning_rate,
        seed=t.seed,
        patience=t.patience,
        corruption=cfg.model.corruption,
        shuffle_buffer=t.shuffle_buffer,
        max_steps=t.max_steps,
        lr_schedule=t.lr_schedule,
        min_improvement=t.min_improvement,
        mask_rate=cfg.model.mask_rate,
        lazy_above=t.lazy_above,
        precision=t.precision,
        init=warm_weights(parent, spec, t.seed) if parent is not None else None,
    )


def best_model(job: TrainJob) -> EmbeddingAutoencoder:
    """The best-validation weights from the last checkpoint."""
    model = EmbeddingAutoencoder(job.spec)
    opt = torch.optim.Adam(model.parameters(), lr=job.learning_rate)
    restored = job.store.load(model, opt)
    if restored is None:
        raise TrainError(f"training wrote no checkpoint in {job.store.folder}")
    model.load_state_dict(restored[1])
    model.eval()
    return model


def _job_fingerprint(spec: ModelSpec, shards: ShardSet, cfg: Config, backend: Backend, parent: str | None) -> str:
    t = cfg.train
    key = {
        "spec": spec.to_dict(),
        "shards": shards.fingerprint,
        "corruption": cfg.model.corruption,
        "mask_rate": cfg.model.mask_rate,
        "schedule": [t.lr_schedule, t.max_steps, t.min_improvement, t.patience],
        "lr": t.learning_rate,
        "batch_size": t.batch_size,
        "seed": t.seed,
        "shuffle_buffer": t.shuffle_buffer,
        "world": backend.workers,
        "backend": backend.name,
        "parent": parent,
        **({"precision": t.precision} if t.precision != "fp32" else {}),  # fp32 runs keep their fingerprints
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def encode_to_shards(
    spark: SparkSession,
    df: DataFrame,
    vocab: Vocabulary,
    cfg: Config,
    *,
    source_version: str = "",
) -> ShardSet:
    """Encode ``df`` into Parquet shards under ``<run>/_work/encoded``.

    Rows go to validation by a deterministic hash of their declared columns
    (``train.validation_fraction``); ``train.sample_fraction`` / ``train.max_rows``
    keep a deterministic sample. Shards are hash-partitioned and sorted by that
    hash, so the same source and config give byte-for-byte the same shards — which
    is what lets an interrupted training run resume exactly. Shards whose
    fingerprint matches the request are reused.
    """
    from pyspark.sql import functions as F

    from embedlib.core.encode import (
        HASH,
        SAMPLE,
        VALID,
        Encoder,
        collect_shards,
        reusable_shards,
        shard_count,
        shards_fingerprint,
    )
    from embedlib.core.layout import write_text_atomic

    t = cfg.train
    shards = shard_count(cfg)
    fingerprint = shards_fingerprint(vocab, cfg, shards, source_version)
    root = cfg.layout.encoded
    meta_path = cfg.layout.shards_manifest
    found = reusable_shards(cfg, fingerprint)
    if found is not None:
        return found

    encoder = Encoder.for_vocab(vocab)
    cols = [F.col(f"`{c}`") for c in encoder.columns]
    frame = df.select(*cols).withColumn(HASH, F.xxhash64(*cols))
    scale = 1_000_000
    if t.sample_fraction is not None or t.max_rows is not None:
        frame = frame.withColumn(SAMPLE, F.pmod(F.xxhash64(F.col(HASH), F.lit(t.seed)), F.lit(scale)))
        if t.sample_fraction is not None:
            frame = frame.where(F.col(SAMPLE) < F.lit(int(t.sample_fraction * scale)))
        else:
            assert t.max_rows is not None
            frame = frame.orderBy(SAMPLE, HASH).limit(t.max_rows)
        frame = frame.drop(SAMPLE)
    frame = frame.withColumn(
        VALID, F.pmod(F.col(HASH), F.lit(scale)) < F.lit(int(t.validation_fraction * scale))
    )
    out_schema = _encoded_schema(encoder)
    encoded = frame.mapInArrow(encoder.spark_batches, out_schema)
    encoded = encoded.repartition(shards, HASH).sortWithinPartitions(HASH)
    split = F.when(F.col(VALID), F.lit("valid")).otherwise(F.lit("train"))
    encoded.withColumn("split", split).drop(VALID, HASH).write.mode("overwrite").partitionBy(
        "split"
    ).parquet(root)
    result = collect_shards(root, fingerprint)
    write_text_atomic(meta_path, json.dumps(result.to_dict(), indent=1))
    log.info("encoded %d train / %d valid rows into %s", result.train_rows, result.valid_rows, root)
    return result


def _encoded_schema(encoder: Encoder) -> str:
    parts = [f"cat_{i} INT" for i in range(len(encoder.categorical))]
    parts += [f"num_{j} FLOAT" for j in range(len(encoder.numeric))]
    parts += [f"miss_{j} FLOAT" for j in range(len(encoder.numeric))]
    from embedlib.core.encode import HASH, VALID

    return ", ".join(parts + [f"{HASH} BIGINT", f"{VALID} BOOLEAN"])
