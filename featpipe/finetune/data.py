"""Training and validation images: the split, decoding, augmentation (torchvision v2), batches.

Validation uses the model's own evaluation preprocessing, the very transform
``extract`` uses, so validation numbers describe the features a user will get.
Training views follow the lecture: a random resized crop, a horizontal flip
(off with --no-flip, for data where flipping changes the class: text, digits,
left/right signs), a small rotation and a colour shift, stronger with --augment.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import InterpolationMode, v2

from .. import models
from ..errors import UsageError
from ..extraction.decode import BadImage, load_rgb
from ..extraction.preprocess import Preprocessor, resolve_resampler
from ..extraction.views import AUGMENTS, GRAYSCALE_P, STRENGTHS, check_augment
from ..models.data_config import DataConfig

__all__ = ["AUGMENTS", "Images", "collate", "data_config", "make_loader", "model_crop_pct", "split_rows", "train_transform"]


def train_transform(config: DataConfig, strength: str, flip: bool) -> v2.Compose | None:
    """PIL image -> uint8 (3, H, W) crop of the model's input size; None for 'none' (the eval transform).
    The strengths are those of `extract --augment` (featpipe/extraction/views.py)."""
    check_augment(strength)
    if strength == "none":
        return None
    scale, degrees, jitter = STRENGTHS[strength]
    steps: list = [v2.PILToTensor()]
    resize = config.resize if isinstance(config.resize, int) else min(config.resize)
    if resize < min(config.crop):
        # --crop-pct above 1: the views are cut from the black-bordered frame evaluation sees, not from the
        # bare image (which would show the object larger in training than in validation).
        steps += [v2.Resize(config.resize, antialias=True, interpolation=InterpolationMode(config.interpolation)),
                  v2.CenterCrop(list(config.crop))]
    steps += [v2.RandomResizedCrop(list(config.crop), scale=scale, antialias=True,
                                   interpolation=InterpolationMode(config.interpolation))]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    if degrees:
        steps.append(v2.RandomRotation(degrees))
    if jitter:
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
    if strength == "strong":
        steps.append(v2.RandomGrayscale(GRAYSCALE_P))
    return v2.Compose(steps)


class Images(torch.utils.data.Dataset):
    """(uint8 (H, W, 3) crop, label) per image; an image that cannot be decoded yields None."""

    def __init__(self, paths: list[Path], labels: np.ndarray, preprocess: Preprocessor, augment=None):
        self.paths, self.labels, self.preprocess, self.augment = paths, labels, preprocess, augment

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            img = load_rgb(self.paths[i])
        except BadImage:
            return None
        if self.augment is None:
            pixels = torch.from_numpy(self.preprocess.image(img))
        else:
            pixels = self.augment(img).permute(1, 2, 0).contiguous()
        return pixels, int(self.labels[i])


def collate(items):
    """(pixels, labels, images that could not be decoded); pixels is None when none could."""
    good = [x for x in items if x is not None]
    if not good:
        return None, None, len(items)
    return torch.stack([x for x, _ in good]), torch.tensor([y for _, y in good]), len(items) - len(good)


def data_config(net: torch.nn.Module, spec, image_size: int | None, crop_pct: float | None = None):
    """The model's evaluation preprocessing at ``image_size``, resized to crop / ``crop_pct`` first.

    timm's meaning of crop_pct: below 1 the centre crop drops a border (0.875 cuts 1/16 of each edge,
    half a scan pixel of an 8x8 digit); 1 keeps the whole image; above 1 the image is resized smaller
    than the crop and padded with black (room for shifted views, as MNIST's 20 px digits sit in 28 px)."""
    cfg = models.eval_config(net, spec)
    crop = cfg.crop if image_size is None else (image_size, image_size)
    if crop_pct is not None:
        side = math.floor(crop[0] / crop_pct)  # timm's arithmetic (transforms_imagenet_eval)
        cfg = replace(cfg, crop=crop, resize=side if cfg.crop_mode == "center" else (side, side))
    elif image_size is not None:
        # Keep the model's resize-to-crop ratio (crop_pct) at the new size.
        ratio = (cfg.resize if isinstance(cfg.resize, int) else cfg.resize[0]) / cfg.crop[0]
        resize = round(image_size * ratio) if isinstance(cfg.resize, int) else (round(image_size * ratio),) * 2
        cfg = replace(cfg, crop=crop, resize=resize)
    return replace(cfg, resampler=resolve_resampler("auto", cfg.interpolation, cfg.crop_mode))


def model_crop_pct(cfg) -> float:
    resize = cfg.resize if isinstance(cfg.resize, int) else cfg.resize[0]
    return cfg.crop[0] / resize


def make_loader(dataset, batch_size: int, shuffle: bool, seed: int):
    """Batches of ``dataset`` in this process, shuffled by ``seed``: an epoch's order is the same in every run.

    No worker processes: a fork of a process that has loaded OpenVINO's thread pool (extract --backend) crashed
    the parent (tests/test_backends.py then tests/test_finetune.py, SIGSEGV)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen,
                                       collate_fn=collate, num_workers=0)


def split_rows(labels: np.ndarray, classes, val_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The training and the validation rows of a fine-tuning run: ``val_size`` of the labelled rows held out,
    stratified, at least one per class (none with 0); the report finds the run's validation images with it."""
    from sklearn.model_selection import train_test_split

    rows = np.flatnonzero(labels >= 0)
    counts = np.bincount(labels[rows], minlength=len(classes))
    if (counts > 0).sum() < 2:
        raise UsageError("fine-tuning needs labelled images of two or more classes; give class subfolders or a label column")
    if val_size == 0:
        return rows, rows[:0]
    small = [c for c, k in zip(classes, counts, strict=True) if 0 < k < 2]
    if small:
        raise UsageError(f"class {small[0]!r} has one image; each class needs two (one to train, one to validate)")
    n_val = max(int(round(val_size * len(rows))), int((counts > 0).sum()))
    train, val = train_test_split(rows, test_size=n_val, stratify=labels[rows], random_state=seed)
    return np.sort(train), np.sort(val)
