"""Decode one image file to an RGB picture, or say in a few words why not.

Everything a folder of real-world images holds is handled: EXIF orientation,
grayscale, RGBA, CMYK, palette and 16-bit images (converted to 8-bit RGB, alpha
dropped as torchvision's loader does), the first frame of a GIF. A file that
cannot be used raises :class:`BadImage` with a short reason; the caller keeps
the row and records the reason.

``at_least`` asks for JPEG scaled decoding (``--decode fast``): libjpeg's IDCT
scales by 1/2, 1/4 or 1/8 while decoding, several times faster on camera-sized
photos, and never below the size the resize needs (:func:`draft_request`).
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

# Pillow's own default: above this many pixels a file is treated as a
# decompression bomb rather than decoded.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
# load_rgb checks the size itself and records a bomb as a failed image;
# Pillow's warning on top of that would only be noise on stderr.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


# Decoded pixels a process holds at once, over all its decode threads: 32 MP is about
# 100 MB of RGB (a 12 MP camera photo is 36 MB, and resizing copies it once). ImageNet-sized
# images (0.2 MP) never wait; camera-sized ones decode a few at a time.
DECODE_PIXEL_BUDGET = 32_000_000


class PixelBudget:
    """At most ``capacity`` decoded pixels alive at once across threads (bounded memory).

    ``with budget.hold() as reserve:`` then ``reserve(pixels)`` (what :func:`load_rgb`
    calls before decoding) waits until the pixels fit; they are given back when the
    ``with`` ends, after the caller has resized the image. An image larger than the
    whole budget still decodes, alone.
    """

    def __init__(self, capacity: int = DECODE_PIXEL_BUDGET):
        self.capacity = capacity
        self.used = 0
        self.peak = 0  # most pixels held at once (tests and benchmarks read it)
        self._cond = threading.Condition()

    def _take(self, pixels: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.used == 0 or self.used + pixels <= self.capacity)
            self.used += pixels
            self.peak = max(self.peak, self.used)

    def _give(self, pixels: int) -> None:
        with self._cond:
            self.used -= pixels
            self._cond.notify_all()

    @contextlib.contextmanager
    def hold(self) -> Iterator[Callable[[int], None]]:
        taken = 0

        def reserve(pixels: int) -> None:
            nonlocal taken
            self._take(pixels)
            taken += pixels

        try:
            yield reserve
        finally:
            if taken:
                self._give(taken)


class BadImage(Exception):
    """An image that cannot be used; ``str()`` is the reason stored in /errors."""


def _gray_to_rgb(a: np.ndarray, top: float) -> Image.Image:
    a = np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)
    return Image.fromarray(a, "L").convert("RGB")


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I;16"):
        # Pillow's convert() clips 16-bit values at 255; scale the 16-bit range instead.
        return _gray_to_rgb(np.asarray(im, dtype=np.float64), 65535.0)
    if im.mode in ("I", "F"):
        # 32-bit modes carry no range: guess it from the largest value (float
        # images are usually [0, 1]; integer ones 8- or 16-bit).
        a = np.asarray(im, dtype=np.float64)
        top = float(a.max(initial=0.0))
        if im.mode == "F" and top <= 1.0:
            return _gray_to_rgb(a, 1.0)
        return _gray_to_rgb(a, 65535.0 if top > 255 else 255.0)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # palette transparency needs RGBA first to keep colours right
    return im.convert("RGB")


# EXIF orientations that turn the picture by 90 degrees (width and height swap).
_TRANSPOSING = (5, 6, 7, 8)


def draft_request(size: tuple[int, int], at_least: int | tuple[int, int], transposed: bool = False) -> tuple[int, int]:
    """The (width, height) to ask ``Image.draft`` for, in the file's own orientation.

    ``at_least`` is what the resize after decoding needs, upright: an int is the short
    side (aspect kept: 'center' crops), a pair (height, width) both sides ('squash').
    Pillow picks the largest scale 1/s (s in 8, 4, 2, 1) with ``size // s`` at least the
    request on both sides, so the decoded image never has fewer pixels than the resize
    target: the resize still shrinks (from less than twice the target), never enlarges.
    """
    w, h = size
    if isinstance(at_least, int):
        # Scale both sides alike so the short side lands on at_least (orientation does not matter).
        f = at_least / min(w, h)
        want = (math.ceil(w * f), math.ceil(h * f))
    else:
        th, tw = at_least
        want = (th, tw) if transposed else (tw, th)
    return max(1, min(w, want[0])), max(1, min(h, want[1]))


def load_rgb(path: str | os.PathLike | BinaryIO, max_pixels: int = MAX_PIXELS,
             at_least: int | tuple[int, int] | None = None, reserve: Callable[[int], None] | None = None) -> Image.Image:
    """Open, check and decode ``path`` as an 8-bit RGB image, EXIF-rotated.

    ``path`` is a local file, or a binary file object already opened on the bytes (a remote file, a tar
    member: see extraction/inputs.py, which also reports missing and empty ones).

    ``at_least``: decode a JPEG at a reduced scale that keeps this size (see
    :func:`draft_request`); other formats decode in full. ``reserve(pixels)`` is
    called with the number of pixels about to be decoded, before decoding: a
    caller bounds the memory of decodes in flight with it (it may block).

    Raises:
        BadImage: with the reason the file cannot be used.
    """
    if isinstance(path, (str, os.PathLike)):
        path = Path(path)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise BadImage(f"unreadable: {exc.strerror or exc}") from None
        if size == 0:
            raise BadImage("empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise BadImage(f"decompression bomb: {w}x{h} pixels exceeds the limit of {max_pixels}")
            im.seek(0)  # first frame of animations
            if at_least is not None and im.format == "JPEG":
                transposed = im.getexif().get(ExifTags.Base.Orientation) in _TRANSPOSING
                im.draft(im.mode, draft_request((w, h), at_least, transposed))
            if reserve is not None:
                reserve(im.size[0] * im.size[1])
            im.load()
            ImageOps.exif_transpose(im, in_place=True)  # no copy when there is nothing to turn
            return _to_rgb(im)
    except BadImage:
        raise
    except Image.DecompressionBombError as exc:
        raise BadImage(f"decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise BadImage("not an image (format not recognised)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        text = str(exc) or type(exc).__name__
        if "truncated" in text.lower():
            raise BadImage(f"truncated file: {text}") from None
        raise BadImage(f"cannot decode: {text}") from None
