"""The fine-tuning recipe, chosen from measurements of the user's data: each choice with its reason.

A run's settings are either given (a number, a strength, a flag) or ``auto``.
Each ``auto`` is decided here, at the point of the run where its evidence exists:

- from the images alone, before the network runs (:func:`frame`, :func:`epochs_for`):
  the input size and crop, and the number of epochs;
- from the linear probe (:func:`views_check`): whether mirrored or augmented
  views still look like their class to a probe trained on the originals;
- from a learning-rate range test of the trainable network with a fresh head
  (``classify.lr_find.range_test``, the rule of `featpipe lr-find`, which expects a
  loss that starts high: from the probe the training loss starts near its floor
  and only rises, so its lowest point says nothing of the rate).

The stages that train and their rates follow BiT (Kolesnikov et al., ECCV 2020),
whose one recipe (every layer, one rate, resolution and length from the data's
size) transferred unchanged across natural, specialised and structured tasks:
``--unfreeze all --lr-decay 1`` are the defaults, stated, not measured per run.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..settings import FINETUNE

AUTO = "auto"
VAL_SIZE = 0.2  # of the images, held out to choose the epoch and the views
UNFREEZE = "all"  # BiT: every layer trains
LR_DECAY = 1.0  # BiT: one rate for every layer
FRAMING_IMAGES = 100  # images decoded to measure sizes and borders
SMALL_SOURCE = 96  # BiT: images under 96x96 are upsampled (resize 160, crop 128, for its 224-px models)
SMALL_CROP_AT_224 = 128
CHEAPER_SIZE = 0.75  # the smaller size the probe weighs against BiT's (96 against 128): 0.56x the pixels
FILL_SHARE = 0.2  # at least this share of the images must be cut by the crop to stop cropping
FILL_LOST_INK = 0.005  # an image is "cut" when the crop removes this share of its object's pixels
PLAIN_TOLERANCE = 0.05  # grey levels (0-1) within which pixels count as the backdrop
INK_CONTRAST = 0.2  # and beyond which they count as the object
PAD_CROP_PCT = 1.2  # whole object in a black margin (as MNIST's 20 px digits sit in 28 px)
# Epochs by data size (BiT's tiers of steps by data size, in epochs a CPU can afford); the run keeps
# the epoch with the lowest validation loss. No early stop: fine-tuning from a probe often loses ground in
# its first epochs, at the peak of the rate, and wins it back as the schedule decays.
EPOCH_TIERS = ((20_000, 8), (500_000, 4))
EPOCHS_LARGE = 2
FLIP_MIN_DROP = 0.02  # mirrored views cost the probe at least this much accuracy (and more than the noise)
AUGMENT_KEEPS = 0.9  # views of a usable strength keep this share of the probe's accuracy on originals
AUGMENT_ORDER = ("standard", "light")  # tried strongest first; 'none' when neither keeps the probe
RANGE_START, RANGE_END, RANGE_STEPS = 1e-6, 1e-1, 60  # 12 steps a decade, as fastai's lr_find
RANGE_MAX = 1.0


@dataclass
class Choice:
    """One setting of the recipe: its value, whether it was measured (auto) or given, and why."""

    value: object
    auto: bool
    reason: str

    def line(self, name: str) -> str:
        shown = self.value if not isinstance(self.value, float) else f"{self.value:.3g}"
        if isinstance(self.value, bool):
            name, shown = (name if self.value else f"--no-{name[2:]}"), ""
        return f"{name}{' ' if shown != '' else ''}{shown}: {self.reason}" if self.reason else \
            f"{name}{' ' if shown != '' else ''}{shown} (given)"


@dataclass
class Recipe:
    """What a run trains with, as options of `featpipe finetune` (so a refit or the guide can repeat it)."""

    choices: dict[str, Choice] = field(default_factory=dict)
    size_candidates: list[int] = field(default_factory=list)  # input sizes the linear probe chooses between

    def set(self, name: str, value, auto: bool, reason: str = "") -> None:
        self.choices[name] = Choice(value, auto, reason)

    def __getitem__(self, name: str):
        return self.choices[name].value

    def lines(self) -> list[str]:
        return [c.line(f"--{n.replace('_', '-')}") for n, c in self.choices.items()]

    def options(self, **override) -> list[str]:
        """The command-line options that reproduce the recipe (every choice, measured or given), with
        ``override`` values in place of some."""
        out = []
        for name, c in self.choices.items():
            c = Choice(override[name], False, "") if name in override else c
            if name == "flip":
                out.append("--flip" if c.value else "--no-flip")
            elif name != "precision":  # a property of the machine, not of the recipe
                value = f"{c.value:.2g}" if isinstance(c.value, float) and name == "lr" else c.value
                out.append(f"--{name.replace('_', '-')} {value}")
        return out

    def to_dict(self) -> dict:
        return {n: {"value": c.value, "auto": c.auto, "reason": c.reason} for n, c in self.choices.items()}

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        return cls({n: Choice(c["value"], c["auto"], c["reason"]) for n, c in d.items()})


# --- parsing the options ---------------------------------------------------------------------------


# --- from the images ---------------------------------------------------------------------------------


@dataclass
class Framing:
    """What the images look like to the crop: sizes, and whether objects on a plain background fill the frame."""

    images: int
    median_short_side: float
    cut_share: float  # share of images whose object the model's crop would cut
    dark_background: bool

    @property
    def fills_frame(self) -> bool:
        return self.cut_share >= FILL_SHARE


def _gray_thumbnail(img, side: int = 128) -> np.ndarray:
    from PIL import Image

    small = img.convert("L")
    small.thumbnail((side, side), Image.BILINEAR)
    return np.asarray(small, dtype=np.float32) / 255.0


def _crop_cut(gray: np.ndarray, crop_pct: float) -> tuple[bool, float, float]:
    """(plain background, share of the object's pixels outside the centre crop, background level).

    The model's eval transform resizes the shorter side to crop / crop_pct and keeps the centre crop:
    on the shorter side it drops (1 - crop_pct) / 2 of each edge, on the longer side more."""
    h, w = gray.shape
    ring = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = float(np.median(ring))
    # A backdrop: most of the edge and a good part of the image at one level (an object touching the
    # edge breaks the edge's uniformity, so "most", not "all"); photographs' edges vary more than this.
    level = np.abs(gray - background) < PLAIN_TOLERANCE
    plain = float(np.mean(np.abs(ring - background) < PLAIN_TOLERANCE)) >= 0.6 and float(level.mean()) >= 0.4
    ink = np.abs(gray - background) > INK_CONTRAST
    if not plain or not ink.any():
        return plain, 0.0, background
    short = min(h, w)
    keep_h, keep_w = (min(n, crop_pct * short) for n in (h, w))
    top, left = int(round((h - keep_h) / 2)), int(round((w - keep_w) / 2))
    inside = np.zeros_like(ink)
    inside[top:top + int(round(keep_h)), left:left + int(round(keep_w))] = True
    return plain, float(ink[~inside].sum() / ink.sum()), background


def measure_framing(paths: Sequence[str | Path], crop_pct: float, seed: int = 0) -> Framing:
    """Decode up to FRAMING_IMAGES of ``paths`` (a seeded choice): their sizes and what the crop would cut."""
    from ..extraction.decode import BadImage, load_rgb

    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(paths), size=min(FRAMING_IMAGES, len(paths)), replace=False)
    sides, cut, backgrounds = [], [], []
    for i in sorted(chosen.tolist()):
        try:
            img = load_rgb(paths[i])
        except BadImage:
            continue
        sides.append(min(img.size))
        plain, lost, background = _crop_cut(_gray_thumbnail(img), crop_pct)
        cut.append(plain and lost >= FILL_LOST_INK)
        if plain:
            backgrounds.append(background)
    if not sides:
        raise FINETUNE.refuse("none of the images measured for {image_size} auto / {crop_pct} auto could be decoded; "
                              "check the input, or give {image_size} and {crop_pct}")
    return Framing(len(sides), float(np.median(sides)), float(np.mean(cut)),
                   bool(backgrounds) and float(np.median(backgrounds)) < 0.25)


def frame(framing: Framing, model_crop: int, model_crop_pct: float, image_size, crop_pct, recipe: Recipe) -> None:
    """--image-size and --crop-pct: given, or from the images' sizes and borders."""
    if image_size == AUTO:
        if framing.median_short_side < SMALL_SOURCE:
            bit = min(model_crop, max(32, int(round(model_crop * SMALL_CROP_AT_224 / 224 / 32)) * 32))
            cheaper = max(32, int(round(bit * CHEAPER_SIZE / 32)) * 32)
            recipe.set("image_size", bit, True,
                       f"small images (median shorter side {framing.median_short_side:g} px, under {SMALL_SOURCE}) "
                       f"are upsampled, BiT's rule (crop {SMALL_CROP_AT_224} for a 224-px model) scaled to this "
                       f"model's {model_crop} px")
            # A CPU pays for every pixel: a cheaper size too, and the probe chooses (train.py).
            recipe.size_candidates = sorted({bit, cheaper})
        else:
            recipe.set("image_size", model_crop, True,
                       f"the model's own size (median shorter side {framing.median_short_side:g} px)")
    else:
        recipe.set("image_size", int(image_size), False)
    if crop_pct == AUTO:
        share = f"{100 * framing.cut_share:.0f}% of {framing.images} measured images"
        if framing.fills_frame and framing.dark_background:
            recipe.set("crop_pct", PAD_CROP_PCT, True,
                       f"objects fill the frame ({share} lose part of the object to the model's "
                       f"{model_crop_pct:g} crop): the whole image, in a black margin like its dark background")
        elif framing.fills_frame:
            recipe.set("crop_pct", 1.0, True, f"objects fill the frame ({share} lose part of the object to the "
                       f"model's {model_crop_pct:g} crop): the whole image")
        else:
            recipe.set("crop_pct", round(model_crop_pct, 4), True,
                       f"the model's own (its crop cuts the object in {share})")
    else:
        recipe.set("crop_pct", float(crop_pct), False)


def epochs_for(train_images: int) -> tuple[int, str]:
    """Epochs from the data size: BiT's tiers, in the epochs a CPU can afford."""
    for limit, epochs in EPOCH_TIERS:
        if train_images < limit:
            return epochs, f"{train_images} training images (under {limit:,}); the epoch with the lowest " \
                           "validation loss is kept"
    return EPOCHS_LARGE, f"{train_images} training images; the epoch with the lowest validation loss is kept"


# --- from the linear probe -----------------------------------------------------------------------------


@dataclass
class ViewCheck:
    """The probe's accuracy on held-out originals and on views of them (the same rows, paired)."""

    original: float
    view: float
    drop: float  # mean paired loss of accuracy
    noise: float  # two standard errors of that mean
    images: int


def views_check(correct_original: np.ndarray, correct_view: np.ndarray) -> ViewCheck:
    """Paired comparison of per-image correctness on originals and on their views."""
    d = correct_original.astype(float) - correct_view.astype(float)
    noise = 2 * float(d.std(ddof=1)) / math.sqrt(len(d)) if len(d) > 1 else math.inf
    return ViewCheck(float(correct_original.mean()), float(correct_view.mean()), float(d.mean()), noise, len(d))


def flip_hurts(check: ViewCheck) -> bool:
    return check.drop > max(FLIP_MIN_DROP, check.noise)


def augment_keeps(check: ViewCheck) -> bool:
    return check.view >= AUGMENT_KEEPS * check.original


# --- from the range test -------------------------------------------------------------------------------


def _fell(finding) -> bool:
    """Whether the smoothed loss fell below where it started (by 2%) before it rose."""
    return min(finding.losses) < 0.98 * finding.losses[0]


def settle_rate(finding):
    """The range test's rate by `featpipe lr-find`'s rule; where the loss never fell, a tenth of the rate at which
    it began to rise (10% above its start) instead, since a tenth of the lowest would be a rate too small to move
    anything."""
    from dataclasses import replace

    if _fell(finding):
        return finding
    rising = next((lr for lr, loss in zip(finding.lrs, finding.losses, strict=True) if loss > 1.1 * finding.losses[0]),
                  finding.diverged_at or finding.lrs[-1])
    return replace(finding, suggestion=rising / 10)


def describe_rate(finding) -> str:
    from ..classify.lr_find import RULE

    where = (f"the loss diverged at {finding.diverged_at:.2g}" if finding.diverged_at is not None
             else f"the loss never diverged up to {finding.lrs[-1]:.2g}")
    if not _fell(finding):
        return (f"range test (the network with a fresh head): the loss never fell below its start "
                f"({finding.losses[0]:.3f}), {where}; a tenth of the rate where it began to rise")
    return f"range test (the network with a fresh head): {RULE} ({finding.lowest:.2g}); {where}"


def probe_kept_advice(recipe: Recipe, history) -> str:
    """What to try when no fine-tuned epoch beat the linear probe, from what the run measured."""
    probe = history[0]
    tuned = [e for e in history if e.epoch > 0]
    first = tuned[0] if tuned else None
    if first is not None and first.train_loss > 2 * max(first.val_loss, 1e-9) or \
            first is not None and first.val_loss > 1.5 * probe.val_loss:
        return (f"The first epoch's validation loss ({first.val_loss:.3f}) left the probe's ({probe.val_loss:.3f}) "
                f"far behind: the rate {recipe['lr']:.2g} moves the features too far; try --lr {recipe['lr'] / 3:.2g}, "
                "or --unfreeze 2")
    return (f"The validation loss stayed above the probe's ({probe.val_loss:.3f}): frozen features may serve this data "
            "as well (featpipe guide compares them); or try more images, or --unfreeze 2")
