"""Where a run keeps its things, and which paths are acceptable at all.

Every path a run reads or writes is derived here from ``<output_dir>/<name>``
(one object, as horovod's ``Store`` does), and every user-supplied path passes
:func:`check_path` before any I/O touches it. With ``output_schema`` set, the
run's tables are catalog tables ``<catalog>.<schema>.<name>_<table>`` instead.

A table output (``score.output``, ``features.output``) is a catalog table when it
has no ``/`` or ``:`` and exactly two dots (:func:`looks_like_table_name`); it
must then be three names (:func:`is_catalog_table`). A relative path with two
dots is written ``./my.scores.v1``.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = [
    "ALLOWED_SCHEMES",
    "PathError",
    "RunLayout",
    "check_path",
    "is_catalog_schema",
    "is_catalog_table",
    "is_table_name",
    "join",
    "looks_like_table_name",
]

#: URI schemes a path may carry; a plain path (no scheme) is a local or default-FS path.
ALLOWED_SCHEMES = frozenset(
    {"file", "dbfs", "hdfs", "s3", "s3a", "gs", "abfs", "abfss", "wasb", "wasbs", "volumes"}
)


class PathError(ValueError):
    """A path is refused before any I/O (traversal, odd scheme, fragment...)."""


def check_path(path: str, *, what: str = "path") -> str:
    """Return ``path`` if it is acceptable, else raise :class:`PathError` naming ``what``.

    Refused: empty paths, ``..`` segments (also percent-encoded), NUL bytes,
    ``#`` fragments and ``?`` queries, unknown URI schemes, ``file://host/...``
    forms that name a host, and a password in the URI (``s3a://key:secret@bucket``)
    — the message then leaves the path out.
    """
    if not isinstance(path, str) or not path.strip():
        raise PathError(f"{what}: the path is empty")
    try:
        password = urlsplit(path).password
    except ValueError as exc:
        raise PathError(f"{what}: the path cannot be parsed as a path or URI ({exc})") from None
    if password is not None:
        raise PathError(
            f"{what}: the path has a user name and password in it (not shown); pass credentials "
            "through spark.conf (e.g. spark.hadoop.fs.s3a.secret.key), never in a path"
        )
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
    segments = unquote(parts.path if scheme else path).replace("\\", "/").split("/")
    if ".." in segments:
        raise PathError(f"{what}: the path {path!r} contains a '..' segment; give a direct path")
    return path


#: One part of a table name: letters, digits and ``_``, or anything but a backtick between backticks.
_NAME = r"(?:[A-Za-z0-9_]+|`[A-Za-z0-9_\-]+`)"


def table_name_parts(target: str) -> int:
    """How many dot-separated names ``target`` is made of, if it is a table name at all (else 0)."""
    if "/" in target or ":" in target:
        return 0
    for parts in (1, 2, 3):
        if re.fullmatch(r"\.".join([_NAME] * parts), target):
            return parts
    return 0


def is_table_name(target: str) -> bool:
    """True for a table name (``table``, ``schema.table`` or ``catalog.schema.table``), False for a path."""
    return table_name_parts(target) > 0


def looks_like_table_name(target: str) -> bool:
    """True for ``a.b.c``-shaped values (no ``/`` or ``:``, two dots): meant as catalog tables."""
    return "/" not in target and ":" not in target and target.count(".") == 2


def is_catalog_table(target: str) -> bool:
    """True for a three-part catalog table name ``catalog.schema.table``."""
    return table_name_parts(target) == 3


def is_catalog_schema(target: str) -> bool:
    """True for a two-part ``catalog.schema`` name."""
    return table_name_parts(target) == 2


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
    directory, so Spark and delta-rs see the same place. With ``output_schema``
    (``catalog.schema``) the tables — vocab, embeddings, features, scores,
    score_runs — are catalog tables ``<output_schema>.<name>_<table>`` (the name
    with every character other than letters, digits and ``_`` made ``_``); the
    bundle and the scratch space stay files under ``output_dir``.
    """

    output_dir: str
    name: str
    output_schema: str | None = None

    def _table(self, table: str) -> str:
        if self.output_schema is None:
            return join(self.root, table)
        return f"{self.output_schema}.{re.sub(r'[^A-Za-z0-9_]', '_', self.name)}_{table}"

    @cached_property
    def root(self) -> str:
        """``<output_dir>/<name>``, resolved (a relative local folder against the working directory) and
        checked once, when first asked: a run's paths do not move if the working directory does."""
        base = self.output_dir if has_scheme(self.output_dir) else os.path.abspath(self.output_dir)
        return check_path(join(base, self.name), what="run directory")

    @property
    def vocab(self) -> str:
        """The vocabulary Delta table ``(column, value, index, count)``."""
        return self._table("vocab")

    @property
    def work(self) -> str:
        """Scratch space of a run (encoded shards, checkpoints)."""
        return join(self.root, "_work")

    @property
    def fit_source(self) -> str:
        """The Parquet copy of the DataFrame ``EmbeddingAnomalyDetector.fit`` trains on."""
        return join(self.work, "fit-source")

    @property
    def encoded(self) -> str:
        """The encoded training shards (Parquet, ``split=train|valid``)."""
        return join(self.work, "encoded")

    @property
    def shards_manifest(self) -> str:
        """The encoded shards' file list, row counts and fingerprint (JSON)."""
        return join(self.encoded, "_shards.json")

    @property
    def checkpoints(self) -> str:
        """Per-epoch training state; a rerun with the same run directory resumes from it."""
        return join(self.work, "checkpoints")

    @property
    def size_trials(self) -> str:
        """Checkpoints of the ``model.size: auto`` trials, one folder per candidate size."""
        return join(self.work, "size-trials")

    @property
    def worker_reports(self) -> str:
        """One ``rank-<r>.json`` per training worker: running, failed or done."""
        return join(self.checkpoints, "workers")

    @property
    def bundle(self) -> str:
        """The model bundle directory (``bundle.json``, weights, vocabulary)."""
        return join(self.root, "bundle")

    @property
    def embeddings(self) -> str:
        return self._table("embeddings")

    @property
    def features(self) -> str:
        return self._table("features")

    @property
    def scores(self) -> str:
        return self._table("scores")

    @property
    def score_runs(self) -> str:
        return self._table("score_runs")

    @property
    def evaluation(self) -> str:
        """``embedlib evaluate``'s metrics (JSON) and plots (PNG)."""
        return join(self.root, "evaluation")

    def evaluation_file(self, name: str) -> str:
        """One file of the evaluation folder (``metrics.json``, ``roc.png``, …)."""
        return join(self.evaluation, name)


#: Sub-folder of a Delta table directory where the delta-rs engine stages its data files.
STAGING_DIR = "data"


def staging_folder(table: str) -> tuple[str, str]:
    """A fresh folder for the data files of one delta-rs commit to ``table``:
    ``(path relative to the table, full path)``. Inside the table directory, so
    the commit can name its files relatively; not hidden, so Spark writes there."""
    relative = f"{STAGING_DIR}/{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}"
    return relative, join(table, relative)


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
    if scheme in ("s3", "s3a"):  # one client for s3:// and s3a://, settings from embedlib.core.storage
        from embedlib.core.storage import pyarrow_filesystem

        return pyarrow_filesystem(), (parts.netloc + parts.path).rstrip("/")
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


@contextmanager
def open_atomic(path: str) -> Iterator[Any]:
    """An output stream to a temporary sibling of ``path``, moved into place when the block ends
    without an error (and removed when it raises): readers see the whole file or none."""
    fs, inner = filesystem(path)
    parent = inner.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{inner}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with fs.open_output_stream(tmp) as handle:
            yield handle
    except BaseException:
        fs.delete_file(tmp)
        raise
    fs.move(tmp, inner)


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to a temporary sibling, then move it into place."""
    with open_atomic(path) as handle:
        handle.write(data)


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
