"""Encoded shard files into training batches: each rank's files in a seeded order, shuffled within a
buffer of rows (:func:`epoch_batches`); a small table's files read once and kept (:class:`ShardReader`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from embedlib.core.encode import Encoded, Encoder, read_shards

__all__ = ["ShardReader", "epoch_batches", "file_rows", "shard_rows"]


def _batches(
    files: Sequence[str], read: Callable[[str], Iterable[Encoded]], batch_size: int, buffer_rows: int,
    rng: np.random.Generator
) -> Iterator[Encoded]:
    """Stream ``files`` (each through ``read``) in a random order, shuffling within a buffer of rows."""
    pending: list[Encoded] = []
    held = 0

    def drain(final: bool) -> Iterator[Encoded]:
        nonlocal pending, held
        if not pending:
            return
        cat = np.concatenate([p.cat for p in pending])
        num = np.concatenate([p.num for p in pending])
        miss = np.concatenate([p.missing for p in pending])
        order = rng.permutation(len(cat))
        cat, num, miss = cat[order], num[order], miss[order]
        stop = len(cat) if final else len(cat) - len(cat) % batch_size
        for start in range(0, stop, batch_size):
            yield Encoded(cat[start : start + batch_size], num[start : start + batch_size], miss[start : start + batch_size])
        pending = [Encoded(cat[stop:], num[stop:], miss[stop:])] if stop < len(cat) else []
        held = len(cat) - stop

    for idx in rng.permutation(len(files)):
        for chunk in read(files[int(idx)]):
            pending.append(chunk)
            held += len(chunk)
            if held >= buffer_rows:
                yield from drain(final=False)
    yield from drain(final=True)


def file_rows(path: str) -> int:
    """Rows in one encoded shard (from its Parquet footer)."""
    import pyarrow.parquet as pq

    from embedlib.core.layout import filesystem

    fs, inner = filesystem(path)
    with fs.open_input_file(inner) as handle:
        return int(pq.ParquetFile(handle).metadata.num_rows)


def shard_rows(files: Sequence[str]) -> int:
    """Rows in ``files`` (from their footers)."""
    return sum(file_rows(path) for path in files)


class ShardReader:
    """Reads encoded shard files (each row group whole, or ``rows`` rows at a time); with ``keep`` (the
    loop's choice for files of at most ``train.shuffle_buffer`` rows in all) each file is read once and its
    arrays kept: a small table's pass is a few steps, and re-reading its files every pass cost more than
    the steps. The same arrays in the same order either way, so the same model."""

    def __init__(self, encoder: Encoder, keep: bool = False, rows: int | None = None) -> None:
        self.encoder, self.rows = encoder, rows
        self.kept: dict[str, list[Encoded]] | None = {} if keep else None

    def __call__(self, path: str) -> Iterable[Encoded]:
        if self.kept is None:
            return read_shards([path], self.encoder, rows=self.rows)
        if path not in self.kept:
            self.kept[path] = list(read_shards([path], self.encoder, rows=self.rows))
        return self.kept[path]

    def all(self, files: Sequence[str]) -> Iterator[Encoded]:
        for path in files:
            yield from self(path)


def epoch_batches(files: Sequence[str], read: Callable[[str], Iterable[Encoded]], batch_size: int, buffer_rows: int,
                  key: tuple[int, int, int], passes: int) -> Iterator[Encoded]:
    """The batches of one epoch: ``passes`` passes, each over a fresh shuffle of the files, seeded from
    ``key`` = (seed, epoch, rank) and the pass."""
    for p in range(passes):
        rng = np.random.default_rng([*key] + ([p] if p else []))
        yield from _batches(files, read, batch_size, buffer_rows, rng)
