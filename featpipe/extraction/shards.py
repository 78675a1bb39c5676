"""WebDataset tar shards: brace patterns, listing a shard's samples, and streaming its images.

A shard is a tar file whose members belong together by key, as WebDataset (and img2dataset) write
them: the key is a member's path up to the first dot of its file name, the rest its extension
(``a/b/000123.jpg`` and ``a/b/000123.cls`` form sample ``a/b/000123``). A sample's image is its first
member with an image extension; its label comes from a ``.cls`` or ``.txt`` member, or a field of its
``.json`` member (``--label-key``). Samples without an image are not rows.

Shards are read once, front to back, with :mod:`tarfile`'s streaming mode over a local or fsspec file:
object stores serve that best, and no index is needed. The reader is strict where tarfile is lenient:
a shard that ends inside a member, inside a header, or without the end-of-archive blocks is
*truncated*, and a header that fails its checksum is *corrupt*; the samples from there on fail
(with that reason), the ones before it keep their features, and other shards are not affected.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tarfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any

from .. import remote
from .._util import atomic_write, sha256_stream

log = logging.getLogger(__name__)

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
IMAGE_SUFFIXES = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif"})
DEFAULT_LABEL_KEY = ".cls"
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """``shards/{00000..00002}.tar`` -> three names (zero-padded like the first bound); ``{a,b}`` -> two.
    Patterns nest and combine, left to right, as in the shell and WebDataset's braceexpand."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    head, body, tail = pattern[:m.start()], m.group(1), pattern[m.end():]
    r = _RANGE.match(body)
    if r:
        lo, hi = int(r.group(1)), int(r.group(2))
        width = len(r.group(1)) if r.group(1).lstrip("-").startswith("0") else 0
        step = 1 if hi >= lo else -1
        options = [f"{k:0{width}d}" for k in range(lo, hi + step, step)]
    else:
        options = body.split(",")
    return [name for option in options for name in expand_braces(head + option + tail)]


def is_shard(location: str) -> bool:
    name = remote.clean_url(str(location)).lower()
    return name.endswith(TAR_SUFFIXES)


def split_key(name: str) -> tuple[str | None, str]:
    """WebDataset's key and extension of a member: ('a/000123', 'jpg') for 'a/000123.jpg'."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot <= slash:  # no extension, or a dot file: not part of any sample
        return None, ""
    return name[:dot], name[dot + 1:].lower()


@dataclass(frozen=True)
class Member:
    """One sample of a shard: its image member and what identifies it."""

    name: str  # the image member's name in the tar
    size: int
    mtime_ns: int
    sha256: str
    label: str | None  # the class name, None where the sample has none


@dataclass
class ShardListing:
    """A shard's samples in tar order; ``broken`` says why listing stopped early (truncated, corrupt)."""

    location: str
    size: int
    mtime_ns: int
    version: str
    members: list[Member] = field(default_factory=list)
    broken: str | None = None
    # The shard broke off inside its last listed member, whose row then carries the error; else the part
    # that could not be listed fails as one row of its own (see sources.py).
    broken_in_member: bool = False

    @property
    def identity(self) -> str:
        """The shard file's identity: part of every member's (a rewritten shard is computed again)."""
        return f"shard:{self.size}:{self.mtime_ns}:{self.version}"


class _StrictHeader(tarfile.TarInfo):
    """tarfile ends an archive quietly at a truncated or corrupt header after the first one; here it is an error."""

    @classmethod
    def fromtarfile(cls, tf):
        try:
            return super().fromtarfile(tf)
        except tarfile.EOFHeaderError:
            raise
        except tarfile.TruncatedHeaderError:
            raise tarfile.ReadError("truncated shard: it ends inside a header") from None
        except tarfile.EmptyHeaderError:
            raise tarfile.ReadError("truncated shard: it ends without the end-of-archive blocks") from None
        except tarfile.InvalidHeaderError as exc:
            raise tarfile.ReadError(f"corrupt shard: bad tar header ({exc})") from None


def _reason(exc: BaseException, options: Mapping[str, Any] | None) -> str:
    text = remote.describe_error(exc, options)
    if "truncated" in text or "corrupt" in text:
        return text
    if "unexpected end of data" in text:
        return "truncated shard: it ends inside a member"
    if isinstance(exc, tarfile.ReadError):
        return f"corrupt shard: {text}"
    return f"unreadable shard: {text}"


def _open_tar(location: str, options: Mapping[str, Any] | None):
    f = remote.open_file(location, options)
    try:
        return f, tarfile.open(fileobj=f, mode="r|*", tarinfo=_StrictHeader)
    except BaseException:
        f.close()
        raise


def _walk(location: str, options: Mapping[str, Any] | None, want) -> Iterator[tuple[str, str, tarfile.TarInfo, Any]]:
    """(key, extension, member info, file object or None) for every regular member, in tar order;
    ``want(key, ext)`` says which members' bytes the caller reads (the rest are skipped unread)."""
    f, tf = _open_tar(location, options)
    try:
        for info in tf:
            if not info.isreg():
                continue
            key, ext = split_key(info.name)
            if key is None:
                continue
            yield key, ext, info, tf.extractfile(info) if want(key, ext) else None
    finally:
        tf.close()
        f.close()


def _label_of(ext: str, data: bytes, label_key: str) -> str | None:
    if label_key.startswith("."):
        text = data.decode("utf-8", "replace").strip()
        return text or None
    value = json.loads(data).get(label_key) if ext == "json" else None
    return None if value is None else str(value)


def _stat(location: str, options: Mapping[str, Any] | None) -> tuple[int, int, str]:
    if remote.is_url(location):
        return remote.stat(location, options)
    st = os.stat(remote.local_path(location))
    return st.st_size, st.st_mtime_ns, ""


def stat_shard(location: str, options: Mapping[str, Any] | None = None) -> tuple[int, int, str]:
    """A shard file's (size, mtime ns, version): one request, without reading it.

    Raises:
        UsageError: the shard does not exist or cannot be reached.
    """
    try:
        return _stat(location, options)
    except OSError as exc:
        raise remote.access_error(location, exc, options) from None


def list_shard(location: str, options: Mapping[str, Any] | None = None,
               label_key: str | None = None, stat: tuple[int, int, str] | None = None) -> ShardListing:
    """The samples of one shard, with their labels and each image member's sha256 (the bytes stream past
    anyway). A shard that breaks off (truncated, corrupt, not a tar at all) is listed up to there, with
    ``broken`` set. ``stat`` is the shard's :func:`stat_shard`, when the caller has it.

    Raises:
        UsageError: the shard does not exist or cannot be opened at all.
    """
    size, mtime, version = stat or stat_shard(location, options)
    listing = ShardListing(remote.clean_url(location), size, mtime, version)
    key_label = label_key or DEFAULT_LABEL_KEY
    label_ext = key_label[1:].lower() if key_label.startswith(".") else "json"
    current: str | None = None
    image: tuple | None = None
    label: str | None = None

    def finish() -> None:
        if image is not None:
            listing.members.append(Member(*image, label))

    try:
        for key, ext, info, fobj in _walk(location, options, lambda k, e: e in IMAGE_SUFFIXES or e == label_ext):
            if key != current:
                finish()
                current, image, label = key, None, None
            if ext in IMAGE_SUFFIXES and image is None:
                image = (info.name, info.size, int(info.mtime) * 1_000_000_000, "")  # a row even if cut short
                image = (*image[:3], sha256_stream(fobj))
            elif ext == label_ext and label is None:
                try:
                    label = _label_of(ext, fobj.read(), key_label)
                except (ValueError, AttributeError):
                    label = None  # a .json member that is not an object: the sample has no label
        finish()
    except (FileNotFoundError, PermissionError) as exc:
        raise remote.access_error(location, exc, options) from None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        listing.broken_in_member = image is not None and not image[3]
        finish()  # the sample being read stays a row (its label may have been cut off)
        # From here on the shard cannot be read: one failed row stands for the rest (see sources.py).
        listing.broken = _reason(exc, options)
    return listing


def read_members(location: str, options: Mapping[str, Any] | None,
                 names: Sequence[str | None]) -> Iterator[tuple[int, bytes | str]]:
    """Stream the shard once and yield (position in ``names``, image bytes or the reason it failed) for
    every name, each once. ``None`` stands for the part of a shard that its listing could not read: it
    fails with the shard's error. Members not found by the end of the shard fail as missing."""
    wanted: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        if name is not None:
            wanted.setdefault(name, []).append(i)
    left = set(range(len(names)))
    reason = "missing from the shard (it changed since it was listed)"
    try:
        for _key, _ext, info, fobj in _walk(location, options, lambda k, e: e in IMAGE_SUFFIXES):
            if fobj is None or info.name not in wanted:
                continue
            data = fobj.read()  # a truncated member raises here: it fails, with the rest of the shard
            for i in wanted.pop(info.name):
                left.discard(i)
                yield i, data
            if not wanted and all(names[i] is not None for i in left):
                return  # nothing else to read: leave the rest of the shard unread
        if any(names[i] is None for i in left):
            reason = "shard listing stopped here, but the shard now reads to its end; run again"
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        reason = _reason(exc, options)
    for i in sorted(left):
        yield i, reason


# --- listings kept between runs ------------------------------------------------------------------

LISTINGS_FORMAT = 1


def list_shards(locations: Sequence[str], options: Mapping[str, Any] | None, label_key: str | None,
                cache: Path | None = None, threads: int = 8) -> list[ShardListing]:
    """The listings of ``locations``, in parallel. With ``cache`` (a JSON file next to the output), a shard
    whose file is unchanged (size, time, version: one request) is not read again; the others are, and the
    cache is rewritten. A rerun over unchanged shards, "already complete" included, then reads no shard."""
    known = _read_cache(cache, label_key)

    def one(location: str) -> tuple[ShardListing, bool]:
        stat = stat_shard(location, options)
        entry = known.get(remote.clean_url(location))
        if entry is not None and tuple(entry["stat"]) == stat:
            listing = ShardListing(remote.clean_url(location), *stat, [Member(*m) for m in entry["members"]],
                                   entry["broken"], entry["broken_in_member"])
            return listing, False
        return list_shard(location, options, label_key, stat), True

    with ThreadPoolExecutor(max(1, min(threads, len(locations)))) as pool:
        done = list(pool.map(one, locations))
    listings = [listing for listing, _ in done]
    if cache is not None and any(fresh for _, fresh in done):
        _write_cache(cache, label_key, listings)
    return listings


def _read_cache(cache: Path | None, label_key: str | None) -> dict:
    if cache is None:
        return {}
    try:
        data = json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}
    if data.get("format") != LISTINGS_FORMAT or data.get("label_key") != label_key:
        return {}  # labels from another member: every shard is listed again
    return data.get("shards", {})


def _write_cache(cache: Path, label_key: str | None, listings: list[ShardListing]) -> None:
    shards = {x.location: {"stat": [x.size, x.mtime_ns, x.version], "members": [list(astuple(m)) for m in x.members],
                           "broken": x.broken, "broken_in_member": x.broken_in_member} for x in listings}
    try:
        with atomic_write(cache) as tmp:
            tmp.write_text(json.dumps({"format": LISTINGS_FORMAT, "label_key": label_key, "shards": shards}))
    except OSError as exc:  # only a cache: the next run lists the shards again
        log.warning("could not keep the shards' listings in %s (%s)", cache, exc)
