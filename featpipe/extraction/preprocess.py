"""Preprocess: the model's own eval transform, split where it is cheapest.

Per image, on decode threads: resize and centre crop (Pillow, exactly as
torchvision's ``Resize``/``CenterCrop`` on a PIL image) to an 8-bit array. Per
batch, on the compute device: scale to [0, 1] and normalise, in the same
float32 operations as ``ToTensor`` + ``Normalize``. Moving uint8 to the device
is four times less traffic than float32, and the batch comes out channels-last
without a copy, the layout convolutions run fastest in.
"""
from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from ..models import DataConfig


class Preprocessor:
    """``image(pil) -> uint8 (H, W, 3)``; ``batch(uint8 (B, H, W, 3)) -> normalised (B, 3, H, W)``."""

    def __init__(self, config: DataConfig):
        self.config = config
        self._interp = InterpolationMode(config.interpolation)
        resize = config.resize
        self._resize = [resize] if isinstance(resize, int) else list(resize)
        self._mean = torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1)

    def image(self, img: Image.Image) -> np.ndarray:
        img = TF.resize(img, self._resize, interpolation=self._interp)
        img = TF.center_crop(img, list(self.config.crop))
        return np.asarray(img, dtype=np.uint8)

    def batch(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float().div_(255)
        mean, std = self._mean.to(x.device), self._std.to(x.device)
        return x.sub_(mean).div_(std)
