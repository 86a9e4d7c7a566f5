"""The model bundle: saved, loaded and verified without Spark (scoring it: :mod:`embedlib.core.inference`).

A bundle is a directory::

    bundle.json          schema version, columns and kinds, the source's column types,
                         vocab sizes, embedding dims, numeric statistics, model spec,
                         calibration (per-column quantiles of validation contributions),
                         rank_by, thresholds (nats and calibrated), training metrics,
                         library/torch versions, sha256 of every other file, bundle id
    weights.safetensors  the model's tensors (safetensors: no pickle, ever)
    vocab.parquet        the vocabulary table; its metadata in the Parquet schema

The bundle id is a hash of ``bundle.json`` (which pins every file's sha256), so it
is a hash of the whole content. :func:`load_bundle` verifies every hash and
refuses a bundle whose files do not match, naming the file and both hashes.
This module imports no pyspark.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import io
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.fs
import pyarrow.parquet as pq
import torch

from embedlib.core.calibration import Calibration
from embedlib.core.devices import resolve_device
from embedlib.core.encode import Encoder
from embedlib.core.layout import filesystem
from embedlib.core.model import EmbeddingAutoencoder, ModelSpec
from embedlib.core.storage import is_s3
from embedlib.core.version import __version__
from embedlib.core.vocab.model import Vocabulary

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Bundle", "BundleError", "bundle_from_files", "copy_bundle", "load_bundle", "read_bundle_files",
           "save_bundle"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
#: Versions this embedlib reads: 1 had no calibration (it ranks by nats).
READABLE_VERSIONS = (1, 2)
WEIGHTS = "weights.safetensors"
VOCAB = "vocab.parquet"
MANIFEST = "bundle.json"
#: The files of a bundle folder.
BUNDLE_FILES = (MANIFEST, WEIGHTS, VOCAB)
_VOCAB_META_KEY = b"embedlib.vocab"


class BundleError(ValueError):
    """A bundle is missing, tampered with, or does not fit the data."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _bundle_id(manifest: Mapping[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "bundle_id"}
    return _sha256(json.dumps(body, sort_keys=True).encode())[:20]


def weights_bytes(model: torch.nn.Module) -> bytes:
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return save(state)


def vocab_bytes(vocab: Vocabulary) -> bytes:
    table = vocab.to_arrow().replace_schema_metadata(
        {_VOCAB_META_KEY: json.dumps(dict(vocab.meta), sort_keys=True).encode()}
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def vocab_of(data: bytes) -> Vocabulary:
    """The vocabulary that :func:`vocab_bytes` wrote."""
    table = pq.read_table(io.BytesIO(data))
    meta = json.loads((table.schema.metadata or {}).get(_VOCAB_META_KEY, b"{}"))
    return Vocabulary.from_arrow(table.replace_schema_metadata(None), meta)


def save_bundle(
    path: str,
    *,
    model: EmbeddingAutoencoder,
    vocab: Vocabulary,
    threshold: float,
    threshold_quantile: float,
    calibration: Calibration | None = None,
    rank_by: str = "nats",
    thresholds: Mapping[str, float] | None = None,
    metrics: Mapping[str, Any],
    model_config: Mapping[str, Any],
    profile: Mapping[str, Sequence[float]] | None = None,
) -> str:
    """Write a bundle directory atomically (temp directory, then rename); return its id."""
    spec = model.spec
    files = {WEIGHTS: weights_bytes(model), VOCAB: vocab_bytes(vocab)}
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "library_version": __version__,
        "torch_version": torch.__version__,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "columns": {
            **{c: "categorical" for c in spec.categorical},
            **{c: "numeric" for c in spec.numeric},
        },
        "categorical": list(spec.categorical),
        "numeric": list(spec.numeric),
        "vocab_sizes": dict(zip(spec.categorical, spec.cardinalities)),
        "embedding_dims": dict(zip(spec.categorical, spec.embedding_dims)),
        "numeric_stats": {k: vocab.meta.get("numeric", {}).get(k) for k in spec.numeric},
        "source_types": dict(vocab.meta.get("source_types", {})),
        "vocab_hash": vocab.content_hash,
        "model": spec.to_dict(),
        "model_config": dict(model_config),
        "threshold": float(threshold),
        "threshold_quantile": float(threshold_quantile),
        "rank_by": rank_by,
        "thresholds": {k: float(v) for k, v in (thresholds or {rank_by: threshold}).items()},
        "calibration": _calibration_json(spec.columns, calibration),
        "metrics": dict(metrics),
        "profile": {k: list(v) for k, v in (profile or {}).items()},  # drift bins' training shares
        "files": {name: _sha256(data) for name, data in files.items()},
    }
    manifest["bundle_id"] = _bundle_id(manifest)
    files[MANIFEST] = json.dumps(manifest, indent=1, sort_keys=True).encode()

    _write_files(path, files)
    log.info("bundle %s written to %s", manifest["bundle_id"], path)
    return str(manifest["bundle_id"])


def copy_bundle(source: str, target: str) -> str:
    """Copy the bundle at ``source`` to ``target`` (verified first, written as :func:`save_bundle`
    writes); return its id."""
    files = read_bundle_files(source)
    bundle_id = bundle_from_files(files, source).bundle_id
    _write_files(target, files)
    return bundle_id


def _write_files(path: str, files: Mapping[str, bytes]) -> None:
    """A bundle's files to ``path``, so that a reader never sees a half-written bundle."""
    fs, inner = filesystem(path)
    if is_s3(path):
        _write_in_place(fs, inner, files)
    else:
        _write_by_rename(fs, inner, files)


def _write_by_rename(fs: Any, target: str, files: Mapping[str, bytes]) -> None:
    """A file system: the bundle is written to a sibling folder, then renamed into place."""
    parent = target.rsplit("/", 1)[0]
    tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
    fs.create_dir(tmp, recursive=True)
    for name, data in files.items():
        with fs.open_output_stream(f"{tmp}/{name}") as handle:
            handle.write(data)
    old = None
    if fs.get_file_info(target).type != pa.fs.FileType.NotFound:
        old = f"{parent}/.{target.rsplit('/', 1)[1]}.old-{uuid.uuid4().hex[:8]}"
        fs.move(target, old)
    fs.move(tmp, target)
    if old is not None:
        fs.delete_dir(old)


def _write_in_place(fs: Any, target: str, files: Mapping[str, bytes]) -> None:
    """Object storage, where a folder cannot be renamed: each object is written whole (a PUT is
    atomic), the manifest removed first and written last. A reader meanwhile finds no manifest,
    or one whose checksums name exactly the files beside it (:func:`load_bundle` verifies them)."""
    fs.create_dir(target, recursive=True)
    if fs.get_file_info(f"{target}/{MANIFEST}").type != pa.fs.FileType.NotFound:
        fs.delete_file(f"{target}/{MANIFEST}")
    for name, data in sorted(files.items(), key=lambda item: item[0] == MANIFEST):
        with fs.open_output_stream(f"{target}/{name}") as handle:
            handle.write(data)


@dataclass(frozen=True)
class Bundle:
    """A verified, loaded bundle: model, vocabulary, encoder and metadata."""

    bundle_id: str
    path: str
    manifest: Mapping[str, Any]
    spec: ModelSpec
    model: EmbeddingAutoencoder
    vocab: Vocabulary

    @functools.cached_property
    def encoder(self) -> Encoder:
        return Encoder.for_vocab(self.vocab)

    def to(self, device: str | torch.device = "auto") -> Bundle:
        """Move the model to ``device`` (``score.device``'s values: ``auto`` is CUDA where present;
        or a ``torch.device``) and return this bundle: scoring then runs there, the results come back
        to the host."""
        self.model.to(device if isinstance(device, torch.device) else resolve_device(device, "score.device"))
        return self

    @property
    def threshold(self) -> float:
        """The threshold of the bundle's own ranking (:attr:`rank_by`)."""
        return float(self.manifest["threshold"])

    @property
    def rank_by(self) -> str:
        """``calibrated`` or ``nats``: what the bundle ranks and flags rows by."""
        return str(self.manifest.get("rank_by") or "nats")

    def threshold_for(self, rank_by: str) -> float:
        """The ``threshold_quantile`` of training-row scores ranked ``rank_by``."""
        found = (self.manifest.get("thresholds") or {"nats": self.manifest["threshold"]}).get(rank_by)
        if found is None:
            raise BundleError(
                f"bundle {self.path} has no threshold for score.rank_by={rank_by} (it has "
                f"{sorted(self.manifest.get('thresholds') or {'nats': 0})}); retrain it with this embedlib, "
                "or set score.rank_by=nats"
            )
        return float(found)

    @functools.cached_property
    def calibration(self) -> Calibration | None:
        """Per-column calibration of contributions (None for bundles written before it)."""
        doc = self.manifest.get("calibration")
        if not doc:
            return None
        columns = self.spec.columns
        return Calibration(
            quantiles=np.array([doc["quantiles"][c] for c in columns], dtype=np.float64),
            tail_scale=np.array([doc["tail_scale"][c] for c in columns], dtype=np.float64),
            rows=int(doc["rows"]),
        )

    def score_frame(self, frame: pd.DataFrame, *, rank_by: str | None = None, top_reasons: int = 3,
                    emit_code: bool = False, detail: str = "all") -> pd.DataFrame:
        """The score job's columns for each row of a pandas DataFrame, without Spark, indexed like
        ``frame`` (:func:`embedlib.core.output.score_pandas`; ``detail`` as ``score.detail``, every row's
        by default here)."""
        from embedlib.core.output import score_pandas

        return score_pandas(self, frame, rank_by=rank_by, top_reasons=top_reasons, emit_code=emit_code,
                            detail=detail)

    @property
    def source_types(self) -> dict[str, str]:
        """Spark type of each feature column when the vocabulary was built ({} for older bundles)."""
        return dict(self.manifest.get("source_types") or self.vocab.meta.get("source_types") or {})


def _calibration_json(columns: tuple[str, ...], calibration: Calibration | None) -> dict[str, Any] | None:
    if calibration is None:
        return None
    return {
        "levels": int(calibration.quantiles.shape[1]),
        "rows": calibration.rows,
        "quantiles": {c: [float(v) for v in calibration.quantiles[j]] for j, c in enumerate(columns)},
        "tail_scale": {c: float(calibration.tail_scale[j]) for j, c in enumerate(columns)},
    }


def read_bundle_files(path: str) -> dict[str, bytes]:
    """The raw bytes of a bundle's files (what scoring carries to the workers)."""
    fs, root = filesystem(path)
    blobs: dict[str, bytes] = {}
    for name in BUNDLE_FILES:
        try:
            with fs.open_input_stream(f"{root}/{name}") as handle:
                blobs[name] = bytes(handle.read())
        except (FileNotFoundError, OSError) as exc:
            if not blobs and fs.get_file_info(root).type == pa.fs.FileType.NotFound:
                raise BundleError(
                    f"there is no model bundle at {path}; run `embedlib train` with this config first"
                ) from exc
            raise BundleError(f"bundle {path}: file {name} is missing or unreadable ({exc})") from exc
    return blobs


def load_bundle(path: str) -> Bundle:
    """Load and verify a bundle; raise :class:`BundleError` naming what does not match."""
    return bundle_from_files(read_bundle_files(path), path)


def bundle_from_files(files: Mapping[str, bytes], path: str) -> Bundle:
    """Verify and load a bundle from its files' bytes (no filesystem access)."""
    from safetensors.torch import load

    try:
        manifest = json.loads(files[MANIFEST])
    except (KeyError, json.JSONDecodeError) as exc:
        raise BundleError(f"bundle {path}: {MANIFEST} is missing or not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("schema_version") not in READABLE_VERSIONS:
        found = manifest.get("schema_version") if isinstance(manifest, dict) else "?"
        raise BundleError(
            f"bundle {path}: {MANIFEST} has schema version {found}; this embedlib reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))} (a newer embedlib wrote it: upgrade embedlib)"
        )
    listed = manifest.get("files", {})
    if set(listed) != {WEIGHTS, VOCAB}:
        raise BundleError(f"bundle {path}: {MANIFEST} lists files {sorted(listed)}; expected {WEIGHTS}, {VOCAB}")
    for name, expected in listed.items():
        if name not in files:
            raise BundleError(f"bundle {path}: file {name} is missing")
        actual = _sha256(files[name])
        if actual != expected:
            raise BundleError(
                f"bundle {path}: {name} does not match {MANIFEST} (sha256 {actual}, expected {expected}); "
                "the bundle was changed after it was written — rebuild it with `embedlib train`"
            )
    recomputed = _bundle_id(manifest)
    if recomputed != manifest.get("bundle_id"):
        raise BundleError(
            f"bundle {path}: {MANIFEST} was edited (its content hashes to {recomputed}, "
            f"it claims bundle id {manifest.get('bundle_id')})"
        )
    vocab = vocab_of(files[VOCAB])
    if vocab.content_hash != manifest["vocab_hash"]:
        raise BundleError(
            f"bundle {path}: {VOCAB} has content hash {vocab.content_hash}, {MANIFEST} expects "
            f"{manifest['vocab_hash']}"
        )
    try:
        spec = ModelSpec.from_dict(manifest["model"])
    except ValueError as exc:
        raise BundleError(f"bundle {path}: {exc}") from exc
    model = EmbeddingAutoencoder(spec)
    try:
        state = load(files[WEIGHTS])
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise BundleError(f"bundle {path}: {WEIGHTS} does not fit the model in {MANIFEST}: {exc}") from exc
    model.eval()
    return Bundle(
        bundle_id=str(manifest["bundle_id"]), path=path, manifest=manifest, spec=spec, model=model, vocab=vocab
    )


