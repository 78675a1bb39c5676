"""Remote files: fsspec URLs (``s3://``, ``gs://``, ``https://`` ...) wherever featpipe reads images or lists.

A location is a local path or a URL. ``file://`` URLs are local paths. Everything else goes through
fsspec, with the storage options given (``--storage-option``) on top of what each filesystem finds
itself: the environment (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL`` ...), the provider's config files
(``~/.aws/credentials``, ``gcloud``'s) and fsspec's own config (``FSSPEC_S3_*``, ``~/.config/fsspec``).

Credentials never leave this module in words: stored paths are URLs without query string or user info
(:func:`clean_url`; a presigned URL's signature is a credential), and every error message is made with
:func:`describe_error`, which leaves out the storage options' values and any URL's query string.
fsspec itself is imported on first use, so local runs never load it.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from .errors import UsageError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Where each protocol's filesystem lives, for the message when it is missing.
PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
            "abfss": "adlfs", "http": "aiohttp", "https": "aiohttp"}
CLOUD_EXTRA = "featpipe[cloud]"


def protocol(location: str) -> str | None:
    """'s3' for 's3://bucket/key', None for a local path."""
    m = _SCHEME.match(str(location))
    return m.group(1).lower() if m else None


def is_url(location) -> bool:
    """A location read through fsspec (a ``file://`` URL is a local path)."""
    return protocol(str(location)) not in (None, "file", "local")


def local_path(location) -> str:
    """A local location as a plain path: ``file:///data/x.jpg`` -> ``/data/x.jpg``."""
    text = str(location)
    if protocol(text) in ("file", "local"):
        return unquote(urlsplit(text).path)
    return text


def clean_url(url: str) -> str:
    """The URL as featpipe stores and shows it: without query string, fragment or user info."""
    if not is_url(url) or "::" in url:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def join(root: str, path: str) -> str:
    """``path`` (relative, or itself a URL) inside the URL ``root``."""
    if is_url(path):
        return path
    return f"{root.rstrip('/')}/{path}"


def describe_error(exc: BaseException, options: Mapping[str, Any] | None = None) -> str:
    """One line about ``exc`` that names no secret: no storage option value, no URL query string."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    for value in _option_values(options or {}):
        text = text.replace(value, "***")
    text = re.sub(r"(\w+://[^\s?'\"]*)\?[^\s'\"]*", r"\1", text)
    return text if len(text) <= 300 else text[:297] + "..."


def _option_values(options: Mapping[str, Any]):
    for value in options.values():
        if isinstance(value, Mapping):
            yield from _option_values(value)
        elif isinstance(value, str) and len(value) >= 4:
            yield value


def filesystem(url: str, options: Mapping[str, Any] | None = None):
    """(fsspec filesystem, path within it) for ``url``; fsspec caches the filesystem per options.

    Raises:
        UsageError: an unknown protocol, or one whose package is not installed (naming the extra).
    """
    try:
        import fsspec
    except ImportError:
        raise UsageError(f"reading {clean_url(url)!r} needs fsspec: pip install '{CLOUD_EXTRA}'") from None
    try:
        return fsspec.core.url_to_fs(url, **dict(options or {}))
    except ImportError:
        pkg = PACKAGES.get(protocol(url) or "", "the fsspec implementation for it")
        raise UsageError(
            f"reading {clean_url(url)!r} needs {pkg}: pip install '{CLOUD_EXTRA}'"
            + ("" if pkg == "s3fs" else f" (or pip install {pkg})")
        ) from None
    except ValueError as exc:
        raise UsageError(f"cannot read {clean_url(url)!r}: {describe_error(exc, options)}; "
                         "give a local path or an fsspec URL (s3://, gs://, https:// ...)") from None


def access_error(url: str, exc: BaseException, options: Mapping[str, Any] | None = None) -> UsageError:
    """The one-line error for a location that cannot be reached at all (no bucket, no access)."""
    reason = describe_error(exc, options)
    if isinstance(exc, PermissionError) or "denied" in reason.lower() or "forbidden" in reason.lower():
        return UsageError(
            f"access to {clean_url(url)!r} was refused ({reason}); check the credentials: the environment "
            "(AWS_ACCESS_KEY_ID, GOOGLE_APPLICATION_CREDENTIALS ...), the provider's config files, or --storage-option"
        )
    if isinstance(exc, FileNotFoundError):
        return UsageError(f"input {clean_url(url)!r} does not exist ({reason}); check the bucket and path")
    return UsageError(f"cannot read {clean_url(url)!r}: {reason}")


def _nanoseconds(value) -> int:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1_000_000) * 1000
    if isinstance(value, (int, float)):
        return int(value * 1e9) if value < 1e11 else int(value)  # seconds or already ns
    if isinstance(value, str):
        try:
            return _nanoseconds(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            from email.utils import parsedate_to_datetime

            try:
                return _nanoseconds(parsedate_to_datetime(value))  # HTTP Last-Modified
            except (TypeError, ValueError):
                return 0
    return 0


_MTIME_KEYS = ("LastModified", "last_modified", "mtime", "updated", "Last-Modified", "modified", "created")
_VERSION_KEYS = ("ETag", "etag", "generation", "md5Hash", "Content-MD5", "content_md5", "VersionId", "version_id")


def identity_of(info: Mapping[str, Any]) -> tuple[int, int, str]:
    """(size, modification time in ns, version) from an fsspec ``info()`` or listing entry: what
    featpipe/identity.py keys a remote file on. Time and version are 0 and '' where the backend has none."""
    size = info.get("size")
    mtime = next((_nanoseconds(info[k]) for k in _MTIME_KEYS if info.get(k) is not None), 0)
    version = next((str(info[k]).strip('"') for k in _VERSION_KEYS if info.get(k)), "")
    return (int(size) if size is not None else -1), mtime, version


def stat(url: str, options: Mapping[str, Any] | None = None) -> tuple[int, int, str]:
    """A remote file's (size, mtime ns, version).

    Raises:
        OSError: the file cannot be found or read (FileNotFoundError, PermissionError ...).
    """
    fs, path = filesystem(url, options)
    fs.invalidate_cache(path)  # fsspec keeps listings per process: a notebook's rerun must see changes
    info = fs.info(path)
    if info.get("type") == "directory":
        raise IsADirectoryError(f"{clean_url(url)} is a folder")
    return identity_of(info)


def read_bytes(url: str, options: Mapping[str, Any] | None = None) -> bytes:
    """All bytes of a remote file, read by whoever calls it (a Dask worker: nothing passes the client)."""
    fs, path = filesystem(url, options)
    return fs.cat_file(path)


def open_file(location: str, options: Mapping[str, Any] | None = None, mode: str = "rb"):
    """A file object on a local path or a URL (lists, tar shards); the caller closes it."""
    if not is_url(location):
        return open(local_path(location), mode)  # noqa: SIM115 - the caller closes it
    fs, path = filesystem(location, options)
    return fs.open(path, mode)
