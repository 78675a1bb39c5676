"""Preprocess: the model's own eval transform, split where it is cheapest.

Per image, on decode threads: resize and centre crop to an 8-bit array, with
one of two resamplers:

* ``torch``: torchvision's antialiased uint8 tensor resize (its v2 transforms on
  a tensor, exactly). About 4x faster than Pillow's, and within 2/255 of it on
  a few pixels in a thousand for aspect-preserving resizes. On a small CPU,
  resizing is a large share of the per-image work besides the forward pass, so
  this is the default where it can do the model's interpolation (bilinear,
  bicubic) and the model keeps the aspect ratio (crop_mode 'center').
* ``pil``: Pillow, bit for bit what timm's and torchvision's PIL transforms do.

Per batch, on the compute device: scale to [0, 1] and normalise, in the same
float32 operations as ``ToTensor`` + ``Normalize``. Moving uint8 to the device
is four times less traffic than float32, and the batch comes out channels-last
without a copy, the layout convolutions run fastest in.
"""
from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.functional as TF
import torchvision.transforms.v2.functional as TF2
from PIL import Image
from torchvision.transforms import InterpolationMode

from ..errors import UsageError
from ..models import DataConfig
from ..models.data_config import check_resampler
from ..settings import EXTRACT, shown
from .decode import MAX_PIXELS, load_rgb

# Interpolations torchvision resizes uint8 tensors with natively (antialiased).
TORCH_INTERPOLATIONS = ("bilinear", "bicubic")


def resolve_resampler(choice: str, interpolation: str, crop_mode: str = "center") -> str:
    """'auto' -> 'torch' where torch can do ``interpolation`` and stays within 2/255 of Pillow, else 'pil'.

    That closeness holds for aspect-preserving resizes ('center'); a 'squash'
    that enlarges one side and shrinks the other differs by up to ~18/255,
    because Pillow and torch resample the two axes in a different order.
    """
    check_resampler(choice)
    if choice == "auto":
        return "torch" if interpolation in TORCH_INTERPOLATIONS and crop_mode == "center" else "pil"
    if choice == "torch" and interpolation not in TORCH_INTERPOLATIONS:
        raise EXTRACT.refuse(f"{{resampler}} torch cannot do this model's {shown(interpolation)} interpolation; "
                             "use {resampler} pil")
    return choice


class Preprocessor:
    """``image(pil) -> uint8 (H, W, 3)``; ``batch(uint8 (B, H, W, 3)) -> normalised (B, 3, H, W)``."""

    def __init__(self, config: DataConfig):
        if config.resampler not in ("torch", "pil"):
            raise UsageError(f"a data config's resampler must be resolved to 'torch' or 'pil', got {config.resampler!r}")
        resolve_resampler(config.resampler, config.interpolation)  # torch must handle the interpolation
        self.config = config
        self._interp = InterpolationMode(config.interpolation)
        resize = config.resize
        self._resize = [resize] if isinstance(resize, int) else list(resize)
        self._crop = list(config.crop)
        self._mean = torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.image = self._torch_image if config.resampler == "torch" else self._pil_image
        # --decode fast: JPEGs decode scaled down by libjpeg, to no less than the resize target.
        self.at_least: int | tuple[int, int] | None = resize if config.decode == "fast" else None

    def decode(self, path, max_pixels: int = MAX_PIXELS, reserve=None) -> Image.Image:
        """Decode ``path`` as this config decodes on the CPU (``--decode fast``: scaled, to no less than
        the resize target). ``reserve``: see :func:`load_rgb`.

        Raises:
            BadImage: the file cannot be used.
        """
        return load_rgb(path, max_pixels, at_least=self.at_least, reserve=reserve)

    def load(self, path, max_pixels: int = MAX_PIXELS, reserve=None) -> np.ndarray:
        """:meth:`decode`, then resize and crop: uint8 (H, W, 3)."""
        return self.image(self.decode(path, max_pixels, reserve))

    def _pil_image(self, img: Image.Image) -> np.ndarray:
        img = TF.resize(img, self._resize, interpolation=self._interp)
        img = TF.center_crop(img, self._crop)
        return np.asarray(img, dtype=np.uint8)

    def _torch_resize(self, img: Image.Image) -> torch.Tensor:
        # (H, W, 3) viewed as (3, H, W): channels-last, the layout of the uint8 kernel.
        chw = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
        return TF2.resize(chw, self._resize, interpolation=self._interp, antialias=True)

    def _torch_image(self, img: Image.Image) -> np.ndarray:
        out = TF2.center_crop(self._torch_resize(img), self._crop)
        return np.ascontiguousarray(out.permute(1, 2, 0).numpy())

    def resize(self, img: Image.Image) -> np.ndarray:
        """The resized image before the crop, uint8 (H', W', 3) (multi-crop views cut their crops from it)."""
        if self.config.resampler == "torch":
            return np.ascontiguousarray(self._torch_resize(img).permute(1, 2, 0).numpy())
        return np.asarray(TF.resize(img, self._resize, interpolation=self._interp), dtype=np.uint8)

    def batch(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float().div_(255)
        mean, std = self._mean.to(x.device), self._std.to(x.device)
        return x.sub_(mean).div_(std)
