"""Object storage (S3 and S3-compatible servers): one set of settings for every client.

embedlib reaches ``s3://``/``s3a://`` paths through three clients — Spark (``hadoop-aws``),
pyarrow (bundles, checkpoints, metadata, the shards training ranks read) and delta-rs (its
commits) — and each names the same few settings differently. They are read here once:

- from the environment: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
  ``AWS_REGION`` (or ``AWS_DEFAULT_REGION``), ``AWS_ENDPOINT_URL`` (an S3-compatible server);
- on the driver, from the session's ``spark.hadoop.fs.s3a.*`` keys (``access.key``,
  ``secret.key``, ``session.token``, ``endpoint``, ``endpoint.region``,
  ``path.style.access``), which win over the environment (:func:`configure`).

Without credentials in either, each client falls back to its own chain (instance profile,
``~/.aws``). Credentials are never logged: :class:`S3Settings` prints without them and
:func:`explain` turns a client's error into a message with the path and the S3 error code only.

delta-rs commits to S3 with **conditional put** (``If-None-Match``): two writers racing for the
same log version cannot both succeed, so concurrent commits are safe without a lock table
(:func:`delta_rs_options`). No pyspark, torch or deltalake at import.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "S3Settings",
    "StorageError",
    "use_session_settings",
    "delta_rs_options",
    "explain",
    "hadoop_conf",
    "is_s3",
    "pyarrow_filesystem",
    "settings",
]

S3_SCHEMES = ("s3", "s3a")
#: ``spark.hadoop.fs.s3a.<key>`` → the field of :class:`S3Settings` it sets.
SPARK_KEYS = {
    "access.key": "access_key",
    "secret.key": "secret_key",
    "session.token": "session_token",
    "endpoint": "endpoint",
    "endpoint.region": "region",
}


class StorageError(RuntimeError):
    """Object storage refused a request (missing bucket, credentials); the message says which."""


@dataclass(frozen=True)
class S3Settings:
    """What every client needs to reach S3; ``None`` leaves a setting to the client's defaults."""

    endpoint: str | None = None
    region: str | None = None
    path_style: bool | None = None
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    @property
    def plain_http(self) -> bool:
        return bool(self.endpoint) and str(self.endpoint).lower().startswith("http://")

    def merged_over(self, base: S3Settings) -> S3Settings:
        """These settings, each unset one taken from ``base``."""
        return S3Settings(**{
            name: getattr(self, name) if getattr(self, name) is not None else getattr(base, name)
            for name in self.__dataclass_fields__
        })


def is_s3(path: str) -> bool:
    """True for ``s3://`` and ``s3a://`` paths."""
    return urlsplit(str(path)).scheme.lower() in S3_SCHEMES


def from_environment(env: Mapping[str, str] | None = None) -> S3Settings:
    env = os.environ if env is None else env
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    return S3Settings(
        endpoint=endpoint,
        region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
        # an S3-compatible server on its own host name serves buckets as paths, not sub-domains
        path_style=True if endpoint else None,
        access_key=env.get("AWS_ACCESS_KEY_ID") or None,
        secret_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
        session_token=env.get("AWS_SESSION_TOKEN") or None,
    )


def from_spark_conf(conf: Mapping[str, str]) -> S3Settings:
    """The ``spark.hadoop.fs.s3a.*`` keys of a session's configuration."""
    values: dict[str, Any] = {}
    for key, name in SPARK_KEYS.items():
        value = conf.get(f"spark.hadoop.fs.s3a.{key}")
        if value:
            values[name] = value
    style = conf.get("spark.hadoop.fs.s3a.path.style.access")
    if style is not None:
        values["path_style"] = style.strip().lower() == "true"
    return S3Settings(**values)


_DRIVER: S3Settings | None = None


#: :class:`S3Settings` field → the environment variable the Python clients of workers read.
WORKER_ENV = {
    "access_key": "AWS_ACCESS_KEY_ID",
    "secret_key": "AWS_SECRET_ACCESS_KEY",
    "session_token": "AWS_SESSION_TOKEN",
    "endpoint": "AWS_ENDPOINT_URL",
    "region": "AWS_REGION",
}


def use_session_settings(own: S3Settings | None) -> None:
    """This process's session keys (``spark.hadoop.fs.s3a.*``) for its pyarrow and delta-rs clients
    (:func:`embedlib.spark.configure_storage` reads them off a session); None: the environment's only."""
    global _DRIVER
    _DRIVER = own if own != S3Settings() else None


def settings() -> S3Settings:
    """This process's S3 settings: the session's keys (driver) over the environment."""
    env = from_environment()
    return _DRIVER.merged_over(env) if _DRIVER is not None else env


def hadoop_conf(s3: S3Settings) -> dict[str, str]:
    """``spark.hadoop.*`` settings for a session embedlib starts: the endpoint, region and
    addressing style, and ``s3://`` read as ``s3a://``. Credentials are not copied: Spark takes
    them from the environment (hadoop-aws's environment provider) or from the user's own keys."""
    out = {"spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem"}
    if s3.endpoint:
        out["spark.hadoop.fs.s3a.endpoint"] = s3.endpoint
        out["spark.hadoop.fs.s3a.connection.ssl.enabled"] = "false" if s3.plain_http else "true"
    if s3.region:
        out["spark.hadoop.fs.s3a.endpoint.region"] = s3.region
    if s3.path_style is not None:
        out["spark.hadoop.fs.s3a.path.style.access"] = "true" if s3.path_style else "false"
    return out


def delta_rs_options(path: str) -> dict[str, str] | None:
    """delta-rs ``storage_options`` for ``path``: ``None`` off S3. Commits use conditional put
    (``If-None-Match``), so concurrent writers to one table cannot overwrite each other's log
    entry; no DynamoDB lock table is needed."""
    if not is_s3(path):
        return None
    s3 = settings()
    out = {"conditional_put": "etag"}
    for key, value in (
        ("AWS_ENDPOINT_URL", s3.endpoint),
        ("AWS_REGION", s3.region),
        ("AWS_ACCESS_KEY_ID", s3.access_key),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_key),
        ("AWS_SESSION_TOKEN", s3.session_token),
    ):
        if value:
            out[key] = value
    if s3.plain_http:
        out["AWS_ALLOW_HTTP"] = "true"
    if s3.path_style is not None:
        out["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] = "false" if s3.path_style else "true"
    return out


def pyarrow_filesystem() -> Any:
    """A pyarrow ``S3FileSystem`` for this process's settings (one per distinct settings)."""
    return _filesystem_for(settings())


@functools.lru_cache(maxsize=8)
def _filesystem_for(s3: S3Settings) -> Any:
    import pyarrow.fs as pafs

    kwargs: dict[str, Any] = {}
    if s3.access_key and s3.secret_key:
        kwargs.update(access_key=s3.access_key, secret_key=s3.secret_key, session_token=s3.session_token)
    if s3.region:
        kwargs["region"] = s3.region
    if s3.endpoint:
        parts = urlsplit(s3.endpoint)
        kwargs["endpoint_override"] = parts.netloc or s3.endpoint
        kwargs["scheme"] = parts.scheme or "https"
    if s3.path_style is not None:
        kwargs["force_virtual_addressing"] = not s3.path_style
    return pafs.S3FileSystem(**kwargs)


# What S3 clients say (AWS error codes; Hadoop's, pyarrow's and delta-rs's wording of them).
_MISSING = re.compile(r"NoSuchBucket|NO_SUCH_BUCKET|UnknownStoreException|bucket does not exist")
_REFUSED = re.compile(r"InvalidAccessKeyId|SignatureDoesNotMatch|ExpiredToken|InvalidToken|AccessDenied|"
                      r"ACCESS_DENIED|FORBIDDEN|Forbidden|Status Code: 403|\b403 Forbidden")
_BUCKET = re.compile(r"s3a?://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])|in bucket '([^']+)'|<BucketName>([^<]+)<")


def explain(exc: BaseException, path: str | None = None) -> str | None:
    """A clear message for an S3 error (a missing bucket, refused credentials), or ``None`` when
    ``exc`` is neither. The message names the bucket (from ``path``, else from the error) and
    what to check; nothing else of the client's text, so no request detail or key is repeated."""
    if path is not None and not is_s3(path):
        return None
    text = f"{exc}\n{exc.__cause__ or ''}"
    missing = _MISSING.search(text)
    refused = None if missing else _REFUSED.search(text)
    if missing is None and refused is None:
        return None
    where = urlsplit(path).netloc if path else next(
        (next(g for g in m.groups() if g) for m in _BUCKET.finditer(text)), "?")
    subject = f"{path}: " if path else ""
    if missing is not None:
        return (f"{subject}the S3 bucket '{where}' does not exist; create it or fix the path (and the "
                "endpoint: AWS_ENDPOINT_URL or spark.hadoop.fs.s3a.endpoint)")
    assert refused is not None
    return (f"{subject}S3 refused the credentials for bucket '{where}' ({refused.group(0)}); check "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or spark.hadoop.fs.s3a.access.key / "
            "secret.key) and the bucket's policy")
