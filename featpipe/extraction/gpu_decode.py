"""--decode gpu: JPEGs decoded in batches by nvJPEG, resized and cropped on the GPU.

Which files the GPU decodes is decided per file, up front, from the header alone
(:func:`gpu_refusal`: Pillow reads the markers, not the pixels): baseline colour
JPEGs go to the GPU; everything else (PNG and other formats, grayscale, CMYK,
progressive, EXIF-rotated: torchvision applies EXIF orientation on the CPU only)
decodes on the CPU exactly as ``--decode exact`` does. A batch the GPU decoder
rejects as a whole (torchvision returns no partial results) is retried file by
file, and a file it still rejects decodes on the CPU, which records the reason
if it is really broken (:func:`decode_with_fallback`). Both decisions are plain
functions of their inputs, tested on CPU with a fake decoder.

The resize is torchvision's antialiased tensor resize, on the GPU in float and
rounded back to 8 bits: the ``torch`` resampler's arithmetic, within 1/255 of it
on the CPU (uint8 kernel) plus nvJPEG's own IDCT rounding.
"""
from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import torch
import torchvision.transforms.v2.functional as TF2
from PIL import ExifTags, Image
from torchvision.transforms import InterpolationMode

from ..models import DataConfig

# A decoder of JPEG byte tensors (uint8, 1-d, on the CPU) to (3, H, W) uint8 tensors on ``device``:
# torchvision.io.decode_jpeg's contract.
Decoder = Callable[..., list[torch.Tensor]]


def gpu_refusal(data: bytes, max_pixels: int) -> str | None:
    """Why the GPU decoder should not get these bytes (then the CPU decodes them), or None."""
    if data[:3] != b"\xff\xd8\xff":
        return "not a JPEG"
    try:
        with Image.open(io.BytesIO(data)) as im:  # parses the markers only
            if im.format != "JPEG":
                return "not a JPEG"
            if im.mode != "RGB":
                return f"{im.mode} JPEG"  # grayscale, CMYK, YCCK: the CPU converts them as it always has
            if im.info.get("progressive") or im.info.get("progression"):
                return "progressive JPEG"
            w, h = im.size
            if w * h > max_pixels:
                return "too many pixels"  # the CPU path records it as a decompression bomb
            if im.getexif().get(ExifTags.Base.Orientation, 1) not in (0, 1):
                return "EXIF-rotated"
    except Exception:  # noqa: BLE001 - any header Pillow cannot read: the CPU says why
        return "unreadable header"
    return None


def _torchvision_decoder(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)


def decode_with_fallback(datas: Sequence[torch.Tensor], decoder: Decoder, device: torch.device
                         ) -> list[torch.Tensor | None]:
    """Decode every byte tensor with ``decoder`` in one batch; when the batch fails, file by file.
    Returns one image per input, None where the decoder refused that file (the CPU takes it)."""
    if not datas:
        return []
    try:
        out = list(decoder(list(datas), device))
        if len(out) == len(datas):
            return out
    except Exception:  # noqa: BLE001 - one bad file fails the whole batch: find it below
        pass
    images: list[torch.Tensor | None] = []
    for data in datas:
        try:
            images.append(decoder([data], device)[0])
        except Exception:  # noqa: BLE001 - this file is the CPU's
            images.append(None)
    return images


class GpuDecoder:
    """JPEG bytes -> resized, centre-cropped uint8 (H, W, 3) images on the device, per a data config."""

    def __init__(self, config: DataConfig, device: torch.device, decoder: Decoder | None = None):
        self.device = device
        self.decoder = decoder or _torchvision_decoder
        self._interp = InterpolationMode(config.interpolation)
        self._resize = [config.resize] if isinstance(config.resize, int) else list(config.resize)
        self._crop = list(config.crop)

    def crop(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) uint8 on the device -> (h, w, 3) uint8: the ``torch`` resampler's resize and crop."""
        out = TF2.resize(image, self._resize, interpolation=self._interp, antialias=True)
        return TF2.center_crop(out, self._crop).permute(1, 2, 0)

    def __call__(self, datas: Sequence[bytes]) -> list[torch.Tensor | None]:
        """Crops of each file, None for the files the GPU refused (decode those on the CPU)."""
        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        return [None if im is None else self.crop(im)
                for im in decode_with_fallback(tensors, self.decoder, self.device)]
