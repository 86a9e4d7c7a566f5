"""Files and folders through the session's filesystems: Hadoop's on a classic session (every
filesystem the cluster has: s3a, abfss, dbfs, …), pyarrow's over Spark Connect (no JVM on the client).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from embedlib.core.config import ConfigError
from embedlib.core.connect import is_connect

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["FileStatus", "delete_folder", "hadoop_fs", "list_status"]


def hadoop_fs(spark: SparkSession, path: str) -> tuple[Any, Any]:
    """``(Hadoop FileSystem, Path)`` for ``path`` through a classic session's Hadoop configuration
    (the one place embedlib reaches the JVM's filesystems: s3a, abfss, dbfs, …)."""
    if is_connect(spark):
        raise ConfigError(f"{path}: a Spark Connect session has no Hadoop filesystem on the client; "
                          "embedlib lists files through pyarrow there (embedlib.spark.tables.files.list_status)")
    sc = spark.sparkContext
    jvm = sc._jvm
    assert jvm is not None
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    return hpath.getFileSystem(sc._jsc.hadoopConfiguration()), hpath  # type: ignore[union-attr]


@dataclass(frozen=True)
class FileStatus:
    """One file or folder as Hadoop names it: ``file:/…`` for local paths, the URI otherwise."""

    path: str
    length: int
    mtime_ms: int
    is_dir: bool

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]


def list_status(spark: SparkSession, pattern: str, *, children: bool = False) -> list[FileStatus]:
    """The files and folders ``pattern`` matches (a path or a glob), sorted; with ``children``, the
    entries directly inside the folder ``pattern`` instead. A classic session asks Hadoop (every
    filesystem the cluster has); a Connect session, which has no JVM here, asks pyarrow (local
    paths, ``dbfs:``, ``s3``/``s3a`` and what pyarrow reads), naming entries as Hadoop would."""
    if is_connect(spark):
        return _arrow_status(pattern, children)
    fs, hpath = hadoop_fs(spark, pattern)
    found = fs.listStatus(hpath) if children else (fs.globStatus(hpath) or [])
    return sorted((FileStatus(str(st.getPath()), int(st.getLen()), int(st.getModificationTime()),
                              bool(st.isDirectory())) for st in found), key=lambda st: st.path)


def delete_folder(spark: SparkSession, folder: str) -> None:
    """Remove ``folder`` and everything in it (through Hadoop, or pyarrow over Connect)."""
    if is_connect(spark):
        from embedlib.core.layout import filesystem

        fs, inner = filesystem(folder)
        fs.delete_dir(inner)
        return
    fs, hpath = hadoop_fs(spark, folder)
    fs.delete(hpath, True)


def _arrow_status(pattern: str, children: bool) -> list[FileStatus]:
    import fnmatch

    import pyarrow.fs as pafs

    from embedlib.core.layout import filesystem, local_path

    local = local_path(pattern)
    prefix = "file:" if local is not None else pattern[: pattern.index("://") + 3] if "://" in pattern else ""
    fs, inner = filesystem(pattern)

    def status(info: pafs.FileInfo) -> FileStatus:
        mtime = info.mtime_ns // 1_000_000 if info.mtime_ns is not None else 0
        return FileStatus(prefix + info.path, int(info.size or 0), int(mtime), info.type == pafs.FileType.Directory)

    if children:
        infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    elif any(ch in inner for ch in "*?["):
        parts = inner.split("/")
        fixed = next(i for i, p in enumerate(parts) if any(ch in p for ch in "*?["))
        base = "/".join(parts[:fixed]) or "/"
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        depth = len(parts)
        infos = [i for i in fs.get_file_info(selector)
                 if len(i.path.split("/")) == depth and fnmatch.fnmatchcase(i.path, inner)]
    else:
        info = fs.get_file_info(inner)
        infos = [] if info.type == pafs.FileType.NotFound else [info]
    return sorted((status(i) for i in infos), key=lambda st: st.path)
