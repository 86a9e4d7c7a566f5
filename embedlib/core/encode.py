"""Raw columns → model inputs, with one implementation of the rules.

:class:`Encoder` turns an Arrow batch of raw columns into

* ``cat_<i>`` (int32) — the vocabulary index of categorical ``i`` (0 null, 1 OOV, 2..),
* ``num_<j>`` (float32) — numeric ``j`` standardized with the vocab pass's
  statistics (after ``sign(x)·log1p(|x|)`` where configured), 0 where missing,
* ``miss_<j>`` (float32) — 1 where numeric ``j`` is null or NaN (or ±inf under
  ``inf_policy: null``), else 0.

Spark uses the very same function through ``mapInArrow``
(:func:`embedlib.spark.train.job.encode_to_shards`), and scoring calls it on its Arrow batches,
so the two cannot disagree. Core: no pyspark.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedlib.core.vocab.model import VocabError, Vocabulary

if TYPE_CHECKING:
    from embedlib.core.config import Config

__all__ = ["EncodeError", "Encoded", "Encoder", "ShardSet", "collect_shards", "encode_in_memory", "read_shards",
           "reusable_shards", "shard_count", "shards_fingerprint"]

log = logging.getLogger(__name__)

#: Hidden columns of the encoding job: the row's hash (split, shard, order), the
#: sampling key and the validation flag. ``spark_batches`` passes ``__*`` columns through.
HASH, SAMPLE, VALID = "__h", "__s", "__valid"


class EncodeError(VocabError):
    """A value cannot be encoded under the configured policy (e.g. ±inf)."""


@dataclass(frozen=True)
class Encoded:
    """Model inputs of a batch as numpy arrays."""

    cat: np.ndarray  # int64 [rows, categoricals]
    num: np.ndarray  # float32 [rows, numerics]
    missing: np.ndarray  # float32 [rows, numerics]

    def __len__(self) -> int:
        return int(self.cat.shape[0])  # [rows, 0] when there are no categoricals


@dataclass(frozen=True)
class Encoder:
    """Encodes the declared columns of raw Arrow data with a vocabulary."""

    vocab: Vocabulary
    categorical: tuple[str, ...]
    numeric: tuple[str, ...]
    inf_policy: str = "error"

    @classmethod
    def for_vocab(cls, vocab: Vocabulary) -> Encoder:
        return cls(
            vocab=vocab,
            categorical=vocab.categorical,
            numeric=vocab.numeric_columns,
            inf_policy=str(vocab.meta.get("params", {}).get("inf_policy", "error")),
        )

    @property
    def columns(self) -> tuple[str, ...]:
        return self.categorical + self.numeric

    def output_schema(self) -> pa.Schema:
        fields = [pa.field(f"cat_{i}", pa.int32()) for i in range(len(self.categorical))]
        fields += [pa.field(f"num_{j}", pa.float32()) for j in range(len(self.numeric))]
        fields += [pa.field(f"miss_{j}", pa.float32()) for j in range(len(self.numeric))]
        return pa.schema(fields)

    def arrays(self, data: pa.RecordBatch | pa.Table) -> Encoded:
        """Encode raw columns of ``data`` (looked up by name) into numpy arrays."""
        rows = data.num_rows
        cat = np.empty((rows, len(self.categorical)), dtype=np.int64)
        for i, name in enumerate(self.categorical):
            cat[:, i] = self.vocab.lookup(name, _column(data, name))
        num = np.zeros((rows, len(self.numeric)), dtype=np.float32)
        missing = np.zeros((rows, len(self.numeric)), dtype=np.float32)
        for j, name in enumerate(self.numeric):
            num[:, j], missing[:, j] = self._numeric(name, _column(data, name))
        return Encoded(cat=cat, num=num, missing=missing)

    def _numeric(self, name: str, values: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
        stats = self.vocab.numeric[name]
        try:
            x = pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise EncodeError(
                f"numeric column '{name}' holds values that are not numbers ({exc}); "
                "clean the column or declare it categorical"
            ) from exc
        x = np.array(x, dtype=np.float64, copy=True)
        if stats.log1p:
            x = np.sign(x) * np.log1p(np.abs(x))
        inf = np.isinf(x)
        if inf.any():
            if self.inf_policy == "error":
                raise EncodeError(
                    f"numeric column '{name}' has {int(inf.sum()):,} infinite value(s) in one batch and the "
                    "vocabulary's inf_policy is 'error'; clean them, or rebuild the vocabulary (and retrain) "
                    "with vocab.inf_policy=null to treat them as missing"
                )
            x[inf] = np.nan
        miss = np.isnan(x)
        out = np.where(miss, 0.0, (x - stats.mean) / stats.scale).astype(np.float32)
        return out, miss.astype(np.float32)

    def encode(self, data: pa.RecordBatch | pa.Table) -> pa.RecordBatch:
        """Encode to an Arrow batch with :meth:`output_schema` (shards, Spark)."""
        return self.to_batch(self.arrays(data))

    def to_batch(self, enc: Encoded) -> pa.RecordBatch:
        """Encoded arrays as an Arrow batch with :meth:`output_schema`."""
        cols: list[pa.Array] = [pa.array(enc.cat[:, i].astype(np.int32)) for i in range(enc.cat.shape[1])]
        cols += [pa.array(enc.num[:, j]) for j in range(enc.num.shape[1])]
        cols += [pa.array(enc.missing[:, j]) for j in range(enc.missing.shape[1])]
        return pa.RecordBatch.from_arrays(cols, schema=self.output_schema())

    def from_encoded(self, data: pa.RecordBatch | pa.Table) -> Encoded:
        """Read back the arrays of an encoded batch (the inverse of the layout above)."""
        c, n = len(self.categorical), len(self.numeric)

        def stack(prefix: str, count: int, dtype: Any) -> np.ndarray:
            if not count:
                return np.zeros((data.num_rows, 0), dtype=dtype)
            return np.stack(
                [np.asarray(_column(data, f"{prefix}_{k}").to_numpy(zero_copy_only=False)) for k in range(count)],
                axis=1,
            ).astype(dtype)

        return Encoded(
            cat=stack("cat", c, np.int64), num=stack("num", n, np.float32), missing=stack("miss", n, np.float32)
        )

    def spark_batches(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """``mapInArrow`` body: raw columns + pass-through ``__*`` columns → encoded."""
        for batch in batches:
            out = self.encode(batch)
            extra = [n for n in batch.schema.names if n.startswith("__")]
            arrays = list(out.columns) + [batch.column(n) for n in extra]
            yield pa.RecordBatch.from_arrays(arrays, names=list(out.schema.names) + extra)


def _column(data: pa.RecordBatch | pa.Table, name: str) -> pa.Array | pa.ChunkedArray:
    try:
        return data.column(name)
    except KeyError:
        raise EncodeError(
            f"column '{name}' is missing from the data to encode (it has: {', '.join(data.schema.names)})"
        ) from None


# ------------------------------------------------------------------- Parquet shards


@dataclass(frozen=True)
class ShardSet:
    """The encoded training data of a run: Parquet files per split."""

    root: str
    train_files: tuple[str, ...]
    valid_files: tuple[str, ...]
    train_rows: int
    valid_rows: int
    fingerprint: str

    def files_for(self, split: str, rank: int, world: int) -> list[str]:
        """Rank ``r`` reads files r, r + world, … of the split."""
        files = self.train_files if split == "train" else self.valid_files
        return list(files[rank::world])

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "train_files": list(self.train_files),
            "valid_files": list(self.valid_files),
            "train_rows": self.train_rows,
            "valid_rows": self.valid_rows,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardSet:
        return cls(
            root=data["root"],
            train_files=tuple(data["train_files"]),
            valid_files=tuple(data["valid_files"]),
            train_rows=int(data["train_rows"]),
            valid_rows=int(data["valid_rows"]),
            fingerprint=data["fingerprint"],
        )


def shards_fingerprint(vocab: Vocabulary, cfg: Config, shards: int, source_version: str) -> str:
    t = cfg.train
    key = {
        "vocab": vocab.content_hash,
        "source": source_version,
        "columns": list(vocab.categorical) + list(vocab.numeric_columns),
        "validation_fraction": t.validation_fraction,
        "max_rows": t.max_rows,
        "sample_fraction": t.sample_fraction,
        "seed": t.seed,
        "shards": shards,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def shard_count(cfg: Config) -> int:
    return cfg.train.num_shards or max(8, 4 * cfg.train.num_workers)


def reusable_shards(cfg: Config, fingerprint: str) -> ShardSet | None:
    """The run's shards when their manifest has ``fingerprint`` (same rows, vocabulary, split)."""
    from embedlib.core.layout import read_text

    existing = read_text(cfg.layout.shards_manifest)
    if existing is None:
        return None
    found = ShardSet.from_dict(json.loads(existing))
    if found.fingerprint != fingerprint:
        return None
    log.info("reusing encoded shards %s (%d train / %d valid rows)", found.root, found.train_rows, found.valid_rows)
    return found


def encode_in_memory(table: pa.Table, vocab: Vocabulary, cfg: Config) -> ShardSet:
    """Encode a table in memory into the run's Parquet shards, without Spark: the same
    :class:`Encoder`, split, sampling and shard layout rules as :func:`encode_to_shards`, with a
    hash of each encoded row (pandas' ``hash_pandas_object``) in place of Spark's ``xxhash64``.
    Identical rows go to the same split; the same table and config give the same shards."""
    import pandas as pd
    import pyarrow.parquet as pq

    from embedlib.core.layout import filesystem, join, remove_tree, write_text_atomic

    t = cfg.train
    encoder = Encoder.for_vocab(vocab)
    enc = encoder.arrays(table)
    parts = {f"c{i}": enc.cat[:, i] for i in range(enc.cat.shape[1])}
    parts |= {f"n{j}": enc.num[:, j] for j in range(enc.num.shape[1])}
    parts |= {f"m{j}": enc.missing[:, j] for j in range(enc.missing.shape[1])}
    h = pd.util.hash_pandas_object(pd.DataFrame(parts), index=False).to_numpy(np.uint64)
    scale = np.uint64(1_000_000)
    keep = np.arange(len(h))
    if t.sample_fraction is not None or t.max_rows is not None:
        sample = pd.util.hash_array(h ^ np.uint64(t.seed)) % scale
        if t.sample_fraction is not None:
            keep = np.flatnonzero(sample < np.uint64(int(t.sample_fraction * 1_000_000)))
        else:
            assert t.max_rows is not None
            keep = np.lexsort((h, sample))[: t.max_rows]
    keep = keep[np.argsort(h[keep], kind="stable")]
    valid = h[keep] % scale < np.uint64(int(t.validation_fraction * 1_000_000))
    shards = shard_count(cfg)
    digest = hashlib.sha256(h[keep].tobytes()).hexdigest()[:16]
    fingerprint = shards_fingerprint(vocab, cfg, shards, f"in-memory:{digest}")
    found = reusable_shards(cfg, fingerprint)
    if found is not None:
        return found
    root = cfg.layout.encoded
    remove_tree(root)  # the manifest inside goes first: half-written shards are never reused
    fs, base = filesystem(root)
    batch = encoder.to_batch(enc)
    files: dict[str, list[str]] = {"train": [], "valid": []}
    rows = {"train": 0, "valid": 0}
    for split, rows_of_split in (("train", keep[~valid]), ("valid", keep[valid])):
        fs.create_dir(f"{base}/split={split}", recursive=True)
        shard_of = h[rows_of_split] % np.uint64(shards)
        for s in range(shards):
            take = rows_of_split[shard_of == np.uint64(s)]
            if not len(take):
                continue
            name = f"part-{s:05d}.parquet"
            with fs.open_output_stream(f"{base}/split={split}/{name}") as out:
                pq.write_table(pa.Table.from_batches([batch.take(pa.array(take))]), out)
            files[split].append(join(root, f"split={split}", name))
            rows[split] += len(take)
    if rows["train"] == 0:
        raise EncodeError(f"no training rows after sampling and the validation split (shards at {root})")
    result = ShardSet(root=root, train_files=tuple(files["train"]), valid_files=tuple(files["valid"]),
                      train_rows=rows["train"], valid_rows=rows["valid"], fingerprint=fingerprint)
    write_text_atomic(cfg.layout.shards_manifest, json.dumps(result.to_dict(), indent=1))
    log.info("encoded %d train / %d valid rows into %s", result.train_rows, result.valid_rows, root)
    return result


def collect_shards(root: str, fingerprint: str) -> ShardSet:
    """The shards under ``root`` (``split=train``, ``split=valid``) with their row counts."""
    import pyarrow.parquet as pq

    from embedlib.core.layout import filesystem, join

    fs, base = filesystem(root)
    files: dict[str, list[str]] = {}
    rows: dict[str, int] = {}
    for split in ("train", "valid"):
        folder = f"{base}/split={split}"
        try:
            infos = fs.get_file_info(_selector(folder))
        except FileNotFoundError:
            infos = []
        names = sorted(i.base_name for i in infos if i.base_name.endswith(".parquet"))
        files[split] = [join(root, f"split={split}", n) for n in names]
        rows[split] = sum(pq.read_metadata(f"{folder}/{n}", filesystem=fs).num_rows for n in names)
    if rows["train"] == 0:
        raise EncodeError(f"no training rows after sampling and the validation split (shards at {root})")
    return ShardSet(
        root=root,
        train_files=tuple(files["train"]),
        valid_files=tuple(files["valid"]),
        train_rows=rows["train"],
        valid_rows=rows["valid"],
        fingerprint=fingerprint,
    )


def _selector(folder: str) -> Any:
    import pyarrow.fs as pafs

    return pafs.FileSelector(folder, allow_not_found=False, recursive=False)


def read_shards(files: Sequence[str], encoder: Encoder, rows: int | None = None) -> Iterator[Encoded]:
    """Yield the encoded arrays of ``files`` in order: each row group whole, or at most ``rows``
    rows at a time (the passes that run the model: memory bounded whatever the shard size)."""
    import pyarrow.parquet as pq

    from embedlib.core.layout import filesystem

    for path in files:
        fs, local = filesystem(path)
        with fs.open_input_file(local) as handle:
            pf = pq.ParquetFile(handle)
            parts = (pf.iter_batches(batch_size=rows) if rows is not None
                     else (pf.read_row_group(rg) for rg in range(pf.num_row_groups)))
            for part in parts:
                yield encoder.from_encoded(part)
