"""Views: more than one look at each image, made on the decode threads.

* **Augmented views** (``extract --augment-views K``): K random views per image, drawn
  from the training augmentation of ``featpipe finetune`` (one table of strengths,
  below). Each view's random numbers come from a generator seeded by (seed, image
  path, view number), never from a global RNG: the same seed gives the same views
  whichever worker, partition, thread or batch computes them, and a resumed or
  incrementally updated run gives the views of a fresh one.
* **Test-time augmentation** (``extract --tta flip|crops``): deterministic views
  whose features are averaged into the image's own row. ``flip``: the eval crop
  and its mirror image (2 views). ``crops``: the four corners and the centre of the
  resized image (5 views, torchvision's FiveCrop), the classic multi-crop evaluation.

The first views of :meth:`ViewMaker.crops` are the TTA views (one: the eval crop,
without TTA), the next K the augmented ones.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import UsageError
from ..settings import AUGMENTS, EXTRACT, TTAS

# torch and torchvision are imported by ViewMaker, on a worker: extraction/config.py reads ViewSpec, and a
# finished run is recognised without loading torch (identity.request).
if TYPE_CHECKING:
    import torch
    from PIL import Image

    from .preprocess import Preprocessor

# strength (settings.STRENGTHS) -> (random resized crop's area scale, rotation in degrees, colour jitter); the lecture's
# recipe, gentle to strong. `featpipe finetune --augment` trains with the same table.
STRENGTHS = {
    "light": ((0.6, 1.0), 0, 0.0),
    "standard": ((0.25, 1.0), 10, 0.2),
    "strong": ((0.08, 1.0), 20, 0.4),
}
GRAYSCALE_P = 0.1  # 'strong' also drops colour from one view in ten
RATIO = (3 / 4, 4 / 3)  # aspect ratios of a random resized crop (torchvision's default)


def check_augment(strength: str, option: str = "--augment") -> None:
    """finetune's --augment (none too); an extraction's strength is checked as ExtractConfig.augment_strength."""
    if strength not in AUGMENTS:
        raise UsageError(f"{option} must be one of {', '.join(AUGMENTS)}, got {strength!r}")


@dataclass(frozen=True)
class ViewSpec:
    """Which views an extraction makes besides the eval crop (picklable; part of the extractor identity)."""

    tta: str = "none"
    augment: int = 0  # augmented views per image
    strength: str = "standard"
    flip: bool = True  # augmented views may be mirror images (off for digits, text, left/right signs)
    seed: int = 0

    def check(self) -> None:
        """The extraction's settings these come from (settings.EXTRACT).

        Raises:
            SettingError: naming the ExtractConfig field.
        """
        EXTRACT.check(tta=self.tta, augment=self.augment, **({"augment_strength": self.strength} if self.augment else {}))

    @property
    def tta_views(self) -> int:
        return TTAS[self.tta]

    def identity(self) -> dict:
        """What of this changes the features ({} for the plain eval crop, so older files keep their identity)."""
        out: dict = {}
        if self.tta != "none":
            out["tta"] = self.tta
        if self.augment:
            out["augment"] = {"views": self.augment, "strength": self.strength, "flip": self.flip, "seed": self.seed}
        return out


def view_generator(seed: int, key: str, view: int) -> np.random.Generator:
    """The random numbers of one view: a function of (seed, image key, view number) only.
    (Python's hash() is salted per process; sha256 is the same on every worker.)"""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([seed, h, view]))


def crop_box(rng: np.random.Generator, height: int, width: int, scale: tuple[float, float]) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random resized crop: torchvision's RandomResizedCrop.get_params, on ``rng``."""
    area = height * width
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    # Fallback: the whole image, cut to the nearest allowed aspect ratio, centred.
    in_ratio = width / height
    if in_ratio < RATIO[0]:
        w, h = width, round(width / RATIO[0])
    elif in_ratio > RATIO[1]:
        h, w = height, round(height * RATIO[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class ViewMaker:
    """``crops(image, key) -> uint8 (tta_views + augment, H, W, 3)`` for one decoded image."""

    def __init__(self, spec: ViewSpec, preprocess: Preprocessor):
        spec.check()
        self.spec = spec
        self.preprocess = preprocess
        self.size = list(preprocess.config.crop)
        from torchvision.transforms import InterpolationMode

        self.interpolation = InterpolationMode(preprocess.config.interpolation)

    @property
    def count(self) -> int:
        return self.spec.tta_views + self.spec.augment

    def crops(self, img: Image.Image, key: str) -> np.ndarray:
        import torch
        import torchvision.transforms.v2.functional as TF2

        spec = self.spec
        if spec.tta == "crops":
            resized = self.preprocess.resize(img)
            views = [np.ascontiguousarray(v.permute(1, 2, 0).numpy())
                     for v in TF2.five_crop(torch.from_numpy(resized).permute(2, 0, 1), self.size)]
        else:
            eval_crop = self.preprocess.image(img)
            views = [eval_crop] if spec.tta == "none" else [eval_crop, np.ascontiguousarray(eval_crop[:, ::-1])]
        if spec.augment:
            chw = torch.from_numpy(np.array(img.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)
            views.extend(self._augmented(chw, key, k) for k in range(spec.augment))
        return np.stack(views)

    def _augmented(self, chw: torch.Tensor, key: str, view: int) -> np.ndarray:
        """One augmented view: random resized crop, flip, rotation, colour jitter (and grey), as in training."""
        import torchvision.transforms.v2.functional as TF2
        from torchvision.transforms import InterpolationMode

        scale, degrees, jitter = STRENGTHS[self.spec.strength]
        rng = view_generator(self.spec.seed, key, view)
        _, height, width = chw.shape
        top, left, h, w = crop_box(rng, height, width, scale)
        x = TF2.resized_crop(chw, top, left, h, w, self.size, interpolation=self.interpolation, antialias=True)
        # Every draw is made whether or not it is used, so one option never shifts another's random numbers.
        flip, angle = rng.random() < 0.5, rng.uniform(-degrees, degrees)
        factors = rng.uniform(1 - jitter, 1 + jitter, size=3)
        grey = rng.random() < GRAYSCALE_P
        if self.spec.flip and flip:
            x = TF2.horizontal_flip(x)
        if degrees:
            x = TF2.rotate(x, float(angle), interpolation=InterpolationMode.NEAREST)
        if jitter:
            x = TF2.adjust_brightness(x, float(factors[0]))
            x = TF2.adjust_contrast(x, float(factors[1]))
            x = TF2.adjust_saturation(x, float(factors[2]))
        if self.spec.strength == "strong" and grey:
            x = TF2.rgb_to_grayscale(x, num_output_channels=3)
        return np.ascontiguousarray(x.permute(1, 2, 0).numpy())
