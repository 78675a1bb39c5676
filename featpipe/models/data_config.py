"""Each model's own preprocessing, as data: never hard-coded ImageNet constants.

timm models carry it in their pretrained config (``resolve_model_data_config``);
torchvision models in their weights' ``transforms()``. Both are reduced to one
:class:`DataConfig` that is stored in every feature file.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..settings import EXTRACT, shown

# How JPEG bytes become pixels (--decode, settings.DECODES): 'exact' decodes every pixel (Pillow); 'fast' lets
# libjpeg scale by 1/2, 1/4 or 1/8 while decoding, never below the resize target; 'gpu'
# decodes batches with nvJPEG and resizes on the GPU; 'auto' is 'gpu' on a CUDA device, else 'exact'.


def check_resampler(choice: str) -> None:
    """--resampler: 'auto', 'torch' or 'pil' (see extraction/preprocess.py)."""
    EXTRACT.check_value("resampler", choice)


def check_decode(choice: str) -> None:
    """--decode: one of :data:`DECODES` (see extraction/decode.py)."""
    EXTRACT.check_value("decode", choice)


def resolve_decode(choice: str, device_type: str, resampler: str = "torch") -> str:
    """'auto' -> 'gpu' on a CUDA device where the GPU can resize as ``resampler`` does ('torch'), else 'exact';
    'gpu' needs both."""
    check_decode(choice)
    if choice == "auto":
        return "gpu" if device_type == "cuda" and resampler == "torch" else "exact"
    if choice == "gpu" and device_type != "cuda":
        raise EXTRACT.refuse(f"{{decode}} gpu needs a CUDA device, but the device is {shown(device_type)}; "
                             "use {decode} exact or fast, or {device} cuda")
    if choice == "gpu" and resampler != "torch":
        raise EXTRACT.refuse("{decode} gpu resizes with torch on the GPU, but this run resizes with Pillow "
                             "({resampler} pil, or a model torch cannot resize for); use {decode} exact")
    return choice


if TYPE_CHECKING:  # this module is read without torch (feature files store a DataConfig)
    from torch import nn

    from .registry import ModelSpec


@dataclass(frozen=True)
class DataConfig:
    """Eval preprocessing: resize, centre crop, scale to [0, 1], normalise.

    ``resize`` is the short side for ``crop_mode='center'`` (aspect kept) and
    both sides for ``'squash'``; ``crop`` is (height, width). ``resampler`` is
    the implementation that resizes: ``'pil'`` (Pillow, what timm's and
    torchvision's PIL transforms do, bit for bit) or ``'torch'`` (torchvision's
    antialiased uint8 tensor resize: its tensor transforms exactly, within 2/255
    of Pillow, several times faster). ``decode`` is how JPEGs became pixels
    (``'exact'``, ``'fast'`` or ``'gpu'``, resolved; see settings.DECODES): fast and GPU
    decoding change the pixels a little, so they are part of the extractor.
    """

    crop: tuple[int, int]
    resize: int | tuple[int, int]
    crop_mode: str
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resampler: str = "pil"
    decode: str = "exact"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DataConfig:
        d = json.loads(text)
        resize = d["resize"] if isinstance(d["resize"], int) else tuple(d["resize"])
        return cls(
            crop=tuple(d["crop"]),
            resize=resize,
            crop_mode=d["crop_mode"],
            interpolation=d["interpolation"],
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            resampler=d["resampler"],
            decode=d["decode"],
        )


def from_timm(model: nn.Module) -> DataConfig:
    """The eval preprocessing timm's ``create_transform`` builds for ``model``."""
    import timm.data

    cfg = timm.data.resolve_model_data_config(model)
    _, h, w = cfg["input_size"]
    crop_pct = cfg.get("crop_pct") or 0.875
    mode = cfg.get("crop_mode") or "center"
    # Same arithmetic as timm.data.transforms_imagenet_eval.
    sh, sw = math.floor(h / crop_pct), math.floor(w / crop_pct)
    if mode == "squash":
        resize: int | tuple[int, int] = (sh, sw)
    elif mode == "center" and sh == sw:
        resize = sh
    else:
        # 'border' pads, and non-square 'center' keeps the ratio to a box: no classic CNN does.
        raise UsageError(
            f"preprocessing crop_mode={mode!r} at {h}x{w} of this timm model is not supported; "
            "pick a model with a square input (most CNNs)"
        )
    return DataConfig(
        crop=(h, w),
        resize=resize,
        crop_mode=mode,
        interpolation=str(cfg["interpolation"]),
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
    )


def from_torchvision(spec: ModelSpec) -> DataConfig:
    """The eval preprocessing of the model's default torchvision weights."""
    import torchvision.models

    t = torchvision.models.get_model_weights(spec.arch).DEFAULT.transforms()
    crop = t.crop_size[0]
    return DataConfig(
        crop=(crop, crop),
        resize=int(t.resize_size[0]),
        crop_mode="center",
        interpolation=t.interpolation.value,
        mean=tuple(float(v) for v in t.mean),
        std=tuple(float(v) for v in t.std),
    )
