"""Decode one image file to an RGB picture, or say in a few words why not.

Everything a folder of real-world images holds is handled: EXIF orientation,
grayscale, RGBA, CMYK, palette and 16-bit images (converted to 8-bit RGB, alpha
dropped as torchvision's loader does), the first frame of a GIF. A file that
cannot be used raises :class:`BadImage` with a short reason; the caller keeps
the row and records the reason.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow's own default: above this many pixels a file is treated as a
# decompression bomb rather than decoded.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
# load_rgb checks the size itself and records a bomb as a failed image;
# Pillow's warning on top of that would only be noise on stderr.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


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


def load_rgb(path: str | os.PathLike | BinaryIO, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open, check and decode ``path`` as an 8-bit RGB image, EXIF-rotated.

    ``path`` is a local file, or a binary file object already opened on the bytes (a remote file, a tar
    member: see extraction/inputs.py, which also reports missing and empty ones).

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
