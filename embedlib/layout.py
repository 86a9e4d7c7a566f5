"""Where a run keeps its things, and which paths are acceptable at all.

Every path a run reads or writes is derived here from ``<output_dir>/<name>``
(one object, as horovod's ``Store`` does), and every user-supplied path passes
:func:`check_path` before any I/O touches it.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = ["ALLOWED_SCHEMES", "PathError", "RunLayout", "check_path", "join"]

#: URI schemes a path may carry; a plain path (no scheme) is a local or default-FS path.
ALLOWED_SCHEMES = frozenset(
    {"file", "dbfs", "hdfs", "s3", "s3a", "gs", "abfs", "abfss", "wasb", "wasbs", "volumes"}
)


class PathError(ValueError):
    """A path is refused before any I/O (traversal, odd scheme, fragment...)."""


def check_path(path: str, *, what: str = "path") -> str:
    """Return ``path`` if it is acceptable, else raise :class:`PathError` naming ``what``.

    Refused: empty paths, ``..`` segments, NUL bytes, ``#`` fragments and ``?``
    queries, unknown URI schemes, and ``file://host/...`` forms that name a host.
    """
    if not isinstance(path, str) or not path.strip():
        raise PathError(f"{what}: the path is empty")
    if "\x00" in path:
        raise PathError(f"{what}: the path {path!r} contains a NUL byte")
    if "#" in path or "?" in path:
        raise PathError(f"{what}: the path {path!r} contains '#' or '?'; give a plain path")
    parts = urlsplit(path)
    scheme = parts.scheme.lower()
    if len(scheme) == 1:  # a Windows drive letter, c:/...
        scheme = ""
    if scheme and scheme not in ALLOWED_SCHEMES:
        raise PathError(
            f"{what}: the path {path!r} has an unknown scheme '{scheme}:'; "
            f"use a plain path or one of {', '.join(sorted(ALLOWED_SCHEMES))}"
        )
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise PathError(
                f"{what}: the path {path!r} names a host after file://; use file:///absolute/path"
            )
    segments = (parts.path if scheme else path).replace("\\", "/").split("/")
    if ".." in segments:
        raise PathError(f"{what}: the path {path!r} contains a '..' segment; give a direct path")
    return path


def has_scheme(path: str) -> bool:
    scheme = urlsplit(path).scheme
    return len(scheme) > 1


def local_path(path: str) -> str | None:
    """The local filesystem path for ``path`` if it is local, else ``None``."""
    if not has_scheme(path):
        return os.path.abspath(path)
    parts = urlsplit(path)
    if parts.scheme.lower() == "file":
        return parts.path
    return None


def join(base: str, *parts: str) -> str:
    """Join path segments with ``/`` whatever the scheme."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


@dataclass(frozen=True)
class RunLayout:
    """All paths of one run: ``<output_dir>/<name>/...``.

    A relative local ``output_dir`` is made absolute against the working
    directory, so Spark and delta-rs see the same place.
    """

    output_dir: str
    name: str

    @property
    def root(self) -> str:
        base = self.output_dir if has_scheme(self.output_dir) else os.path.abspath(self.output_dir)
        return check_path(join(base, self.name), what="run directory")

    @property
    def vocab(self) -> str:
        """The vocabulary Delta table ``(column, value, index, count)``."""
        return join(self.root, "vocab")

    @property
    def work(self) -> str:
        """Scratch space of a run (encoded shards, checkpoints)."""
        return join(self.root, "_work")

    @property
    def checkpoints(self) -> str:
        """Per-epoch training state; a rerun with the same run directory resumes from it."""
        return join(self.work, "checkpoints")

    @property
    def bundle(self) -> str:
        """The model bundle directory (``bundle.json``, weights, vocabulary)."""
        return join(self.root, "bundle")

    @property
    def embeddings(self) -> str:
        return join(self.root, "embeddings")

    @property
    def features(self) -> str:
        return join(self.root, "features")

    @property
    def scores(self) -> str:
        return join(self.root, "scores")

    @property
    def score_runs(self) -> str:
        return join(self.root, "score_runs")

    @property
    def evaluation(self) -> str:
        """``embedlib evaluate``'s metrics (JSON) and plots (PNG)."""
        return join(self.root, "evaluation")


# ------------------------------------------------------------------ small-file I/O
# Bundles, checkpoints and metadata are written by the driver (or rank 0) to the
# run directory, which on a cluster is shared storage. pyarrow's filesystems give
# one way to reach local disk, DBFS (through /dbfs), S3, GCS, HDFS and ABFS.


def filesystem(path: str) -> tuple[Any, str]:
    """``(pyarrow FileSystem, path inside it)`` for a local path or URI."""
    import pyarrow.fs as pafs

    check_path(path, what="path")
    local = local_path(path)
    if local is not None:
        return pafs.LocalFileSystem(), local
    parts = urlsplit(path)
    scheme = parts.scheme.lower()
    if scheme == "dbfs":
        return pafs.LocalFileSystem(), "/dbfs/" + (parts.netloc + parts.path).lstrip("/")
    if scheme == "s3a":
        path = "s3" + path[3:]
    fs, inner = pafs.FileSystem.from_uri(path)
    return fs, inner


def read_text(path: str) -> str | None:
    """The text of a file, or None if it does not exist."""
    import pyarrow.fs as pafs

    fs, inner = filesystem(path)
    if fs.get_file_info(inner).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(inner) as handle:
        return bytes(handle.read()).decode("utf-8")


def read_bytes(path: str) -> bytes:
    fs, inner = filesystem(path)
    with fs.open_input_stream(inner) as handle:
        return bytes(handle.read())


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to a temporary sibling, then move it into place."""
    fs, inner = filesystem(path)
    parent = inner.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{inner}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open_output_stream(tmp) as handle:
        handle.write(data)
    fs.move(tmp, inner)


def write_text_atomic(path: str, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def remove_tree(path: str) -> None:
    import pyarrow.fs as pafs

    fs, inner = filesystem(path)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(inner)
    elif info.type == pafs.FileType.File:
        fs.delete_file(inner)
