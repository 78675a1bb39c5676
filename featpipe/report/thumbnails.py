"""Thumbnails: small JPEGs of the images a report shows, read the way extraction reads them.

A feature file's row names its image as a path relative to the file's ``image_root``: a local file,
a URL, or ``<shard>.tar/<member>`` for a WebDataset shard. The bytes are fetched with extraction's
own readers (extraction/inputs.py: one pass per shard, URLs read whole) and decoded with its decoder
(extraction/decode.py), so a thumbnail shows what the network saw before preprocessing. An image that
cannot be read or decoded gets the placeholder, never a failed report.
"""
from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

log = logging.getLogger(__name__)

SIZE = 112  # longest side in pixels: small on disk (2-6 kB), still recognisable at twice the CSS size
QUALITY = 82
FOLDER = "thumbs"
PLACEHOLDER = "missing.png"
# URLs are fetched concurrently: each is a network round trip, not CPU work.
REMOTE_THREADS = 8


def split_shard(path: str) -> tuple[str, str] | None:
    """(shard, member) when ``path`` is a tar member as a feature file names it (``dir/a.tar/x/1.jpg``), else None."""
    from ..extraction.shards import is_shard

    parts = path.split("/")
    for i in range(1, len(parts)):
        shard = "/".join(parts[:i])
        if is_shard(shard):
            return shard, "/".join(parts[i:])
    return None


def _encode(image) -> bytes:
    from PIL import Image

    image = image.copy()
    image.thumbnail((SIZE, SIZE), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=QUALITY, optimize=True)
    return out.getvalue()


def _decode(source) -> bytes | str:
    """JPEG bytes of one image (a Path or file object), or the reason it could not be made."""
    from ..extraction.decode import BadImage, load_rgb

    try:
        return _encode(load_rgb(source))
    except BadImage as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - a thumbnail is never worth a failed report
        return f"{type(exc).__name__}: {exc}"


def _read_files(root: str, paths: Sequence[str], rows: Sequence[int]) -> Iterable[tuple[int, bytes | str]]:
    from .. import remote
    from ..extraction.decode import BadImage
    from ..extraction.inputs import open_partition

    read = open_partition(root, tuple(paths), None, None)

    def one(i: int) -> tuple[int, bytes | str]:
        try:
            return rows[i], _decode(read(i))
        except BadImage as exc:
            return rows[i], str(exc)

    far = remote.is_url(root) or any(remote.is_url(p) for p in paths)
    if far:
        with ThreadPoolExecutor(REMOTE_THREADS) as pool:
            yield from pool.map(one, range(len(paths)))
    else:
        yield from map(one, range(len(paths)))
    read.close()


def _read_shard(root: str, shard: str, members: Sequence[str], rows: Sequence[int]) -> Iterable[tuple[int, bytes | str]]:
    from .. import remote
    from ..extraction.decode import BadImage
    from ..extraction.inputs import open_partition

    location = shard if remote.is_url(shard) or os.path.isabs(shard) else (
        remote.join(root, shard) if remote.is_url(root) else str(Path(root) / shard))
    read = open_partition(root, tuple(members), location, None)
    try:
        for i in range(len(members)):
            try:
                yield rows[i], _decode(read(i))
            except BadImage as exc:
                yield rows[i], str(exc)
    except Exception as exc:  # noqa: BLE001 - a shard that cannot be opened: its rows get the placeholder
        for i in range(len(members)):
            yield rows[i], f"{type(exc).__name__}: {exc}"
    finally:
        read.close()


def write_placeholder(folder: Path) -> str:
    """The placeholder image (a grey square with a cross), written once; its path relative to the page."""
    from PIL import Image, ImageDraw

    path = folder / FOLDER / PLACEHOLDER
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.new("RGB", (SIZE, SIZE), (226, 228, 232))
        draw = ImageDraw.Draw(image)
        draw.line((24, 24, SIZE - 24, SIZE - 24), fill=(150, 150, 158), width=5)
        draw.line((24, SIZE - 24, SIZE - 24, 24), fill=(150, 150, 158), width=5)
        image.save(path)
    return f"{FOLDER}/{PLACEHOLDER}"


def make_thumbnails(folder: Path, root: str, paths: Sequence[str], rows: Iterable[int]) -> dict[int, tuple[str, str]]:
    """Thumbnails of the feature-file ``rows`` (``paths[row]`` relative to ``root``) under ``folder/thumbs``.

    Returns, per row, (src relative to ``folder``, why it is the placeholder or ""). Rows of one tar
    shard are read in one pass over the shard.
    """
    thumbs = folder / FOLDER
    thumbs.mkdir(parents=True, exist_ok=True)
    placeholder = write_placeholder(folder)
    files: list[int] = []
    shards: dict[str, list[tuple[int, str]]] = {}
    for row in sorted(set(int(r) for r in rows)):
        member = split_shard(paths[row])
        if member is None:
            files.append(row)
        else:
            shards.setdefault(member[0], []).append((row, member[1]))
    results = list(_read_files(root, [paths[r] for r in files], files))
    for shard, items in shards.items():
        results += _read_shard(root, shard, [m for _, m in items], [r for r, _ in items])
    out: dict[int, tuple[str, str]] = {}
    failed = 0
    for row, made in results:
        if isinstance(made, bytes):
            name = f"{FOLDER}/{row}.jpg"
            (folder / name).write_bytes(made)
            out[row] = (name, "")
        else:
            failed += 1
            out[row] = (placeholder, made)
    if failed:
        log.info("%d of %d thumbnails could not be made; they show the placeholder", failed, len(out))
    return out
