"""The lecture's 2x2 table, decided from measurements, and the commands that follow.

              similar to ImageNet                 different from ImageNet
 little data  classifier on last-layer features   classifier on an earlier layer
 much data    fine-tune the top blocks            fine-tune the whole network

Data size: the median number of labelled images per class in the whole input.
Below LITTLE_DATA_PER_CLASS a fine-tuned network overfits more easily than a
linear classifier on frozen features does (the usual rule of thumb of the
transfer-learning literature and tutorials, which fine-tune from about a
thousand images per class).

Similarity is read off the layer sweep, on the user's own labels:
- "different" when an earlier layer beats the last one by more than the noise
  (and by at least MIN_GAIN), or when raw pixels do as well as every layer:
  the last layer's features are specialised to ImageNet's classes, and these
  images need more generic ones, or none;
- "similar" when no earlier layer beats the last one by MIN_GAIN or more: the
  last layer is as good as any, which is what features of similar data do;
- "can't tell" when an earlier layer is ahead by more than MIN_GAIN but within
  the noise: a larger sample, or another model, settles it.
The ImageNet head's confidence on the images is reported beside it as evidence
(a confident head sees ImageNet-like photos), but the sweep decides: it
measures the user's task, where the head measures ImageNet's.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field

LITTLE_DATA_PER_CLASS = 1000
MIN_GAIN = 0.01  # one point of accuracy: smaller gains are not worth another layer
HEAD_CONFIDENT = 0.5  # mean top-1 probability of the ImageNet head
HEAD_UNSURE = 0.2
HEAD_ONE_CLASS = 0.5  # share of the sample the head gives one ImageNet class
CURVE_FRACTIONS = (0.1, 0.25, 0.5, 1.0)

STRATEGIES = {
    "last-layer": "train a classifier on the last layer's features",
    "earlier-layer": "train a classifier on an earlier layer's features",
    "fine-tune-top": "fine-tune the top blocks of the network",
    "fine-tune-all": "fine-tune the whole network",
    "can't tell": "can't tell yet",
}


def thresholds() -> dict:
    """The numbers the decision uses, for the report."""
    return {
        "little_data_per_class": LITTLE_DATA_PER_CLASS,
        "min_gain": MIN_GAIN,
        "noise": "2 standard errors of the paired per-fold difference, Nadeau-Bengio corrected",
        "head_confident": HEAD_CONFIDENT,
        "head_unsure": HEAD_UNSURE,
        "head_one_class": HEAD_ONE_CLASS,
    }


@dataclass
class Comparison:
    """The measured differences the decision rests on (accuracies as fractions)."""

    last: str
    last_mean: float
    best: str
    best_mean: float
    gain: float  # best earlier layer's mean minus the last layer's (0 if the last is best)
    gain_noise: float
    pixels_mean: float | None
    pixels_gap: float | None  # best layer's mean minus pixels'
    pixels_noise: float | None
    head_top1: float | None
    head_top_classes: list[dict]  # [{"class": ImageNet name, "share": fraction of the sample}]
    per_class_median: float
    curve_gain: float | None  # accuracy at 100% of the sample minus at 50%
    curve_noise: float | None


@dataclass
class Decision:
    data_size: str  # "little" or "much"
    similarity: str  # "similar", "different" or "can't tell"
    strategy: str  # a key of STRATEGIES
    recommended_layer: str
    features_help: bool
    curve: str  # "climbing" or "flat"
    reasons: list[str] = field(default_factory=list)
    settle: str | None = None  # what would settle a "can't tell"

    @property
    def quadrant(self) -> str:
        where = {"similar": "similar to ImageNet", "different": "different from ImageNet",
                 "can't tell": "closeness to ImageNet can't be told"}[self.similarity]
        return f"{self.data_size} data, {where}"


def _pts(x: float) -> str:
    return f"{100 * x:.1f} points"


def decide(c: Comparison) -> Decision:
    """Place the data in the 2x2 table and choose one strategy, with the reasons in words."""
    reasons = []
    data_size = "little" if c.per_class_median < LITTLE_DATA_PER_CLASS else "much"
    reasons.append(
        f"{c.per_class_median:g} labelled images per class (median) is "
        f"{'fewer' if data_size == 'little' else 'at least'} than the {LITTLE_DATA_PER_CLASS} where fine-tuning "
        f"starts to pay: {data_size} data"
    )
    features_help = c.pixels_gap is None or c.pixels_gap > c.pixels_noise
    if not features_help:
        reasons.append(
            f"raw pixels ({c.pixels_mean:.3f}) {'beat' if c.pixels_gap < 0 else 'match, within the noise,'} the "
            f"best layer ({c.pixels_mean + c.pixels_gap:.3f}): this "
            "model's features do not help this data; the images are far from ImageNet photos"
        )
    if c.gain > max(c.gain_noise, MIN_GAIN):
        similarity = "different"
        reasons.append(
            f"an earlier layer, {c.best}, beats the last one, {c.last}, by {_pts(c.gain)} (noise: "
            f"{_pts(c.gain_noise)}): the last layer is specialised to ImageNet's classes, and these images are "
            "far from ImageNet photos"
        )
    elif not features_help:
        similarity = "different"
    elif c.gain < MIN_GAIN:
        similarity = "similar"
        reasons.append(
            f"no earlier layer beats the last one, {c.last} ({c.last_mean:.3f}), by {_pts(MIN_GAIN)} or more: "
            "its features suit these images, as they do images close to ImageNet"
        )
    else:
        similarity = "can't tell"
        reasons.append(
            f"{c.best} is ahead of the last layer, {c.last}, by {_pts(c.gain)}, inside the noise of "
            f"{_pts(c.gain_noise)}"
        )
    if c.head_top1 is not None:
        # Evidence, not a vote: a head can be sure of the wrong thing (digits taken for envelopes).
        verdict = ("confident" if c.head_top1 >= HEAD_CONFIDENT else "unsure" if c.head_top1 < HEAD_UNSURE
                   else "neither confident nor lost")
        seen = ", ".join(f"{t['class']} {100 * t['share']:.0f}%" for t in c.head_top_classes)
        reasons.append(f"the ImageNet head is {verdict} on these images (mean top-1 probability {c.head_top1:.2f})"
                       + (f" and mostly takes them for: {seen}" if seen else ""))
        if c.head_top_classes and c.head_top_classes[0]["share"] >= HEAD_ONE_CLASS:
            reasons.append(f"it puts {100 * c.head_top_classes[0]['share']:.0f}% of the images in one ImageNet "
                           "class: to ImageNet's eyes they all look alike")
    curve = "flat"
    if c.curve_gain is not None:
        climbing = c.curve_gain > max(c.curve_noise or 0.0, MIN_GAIN)
        curve = "climbing" if climbing else "flat"
        reasons.append(
            f"from 50% to 100% of the sample the best layer gains {_pts(c.curve_gain)}: "
            + ("still climbing, so more labelled images (or fine-tuning) will pay" if climbing else
               "flat, so frozen features have saturated on this data")
        )
    settle = None
    if similarity == "can't tell":
        strategy, layer = "can't tell", c.last
        settle = ("a larger sample (--sample 2000) narrows the noise; another model (--model a,b) may separate "
                  "the layers more clearly. Meanwhile the last layer is the safe default")
    elif data_size == "little":
        # Far from ImageNet, the lecture's advice is an earlier layer; where the last one still
        # measures best (pixels alone did the telling), the measurement wins.
        earlier = similarity == "different" and c.gain > 0
        strategy = "earlier-layer" if earlier else "last-layer"
        layer = c.best if earlier else c.last
    else:
        strategy = "fine-tune-top" if similarity == "similar" else "fine-tune-all"
        layer = c.best if c.gain > 0 else c.last  # for the frozen-feature baseline
    return Decision(data_size, similarity, strategy, layer, features_help, curve, reasons, settle)


def commands(input: str, model: str, weights: str, decision: Decision, from_features: bool) -> list[str]:
    """The exact next commands: the frozen-feature route always, fine-tuning where it is the advice."""
    q = shlex.quote
    layer = decision.recommended_layer
    weights_opt = "" if weights == "pretrained" else f" --weights {q(weights)}"
    if from_features:
        steps = [f"featpipe fit {q(input)} -o model.skops --layer {q(layer)} --classifier logreg,linear"]
    else:
        steps = [
            f"featpipe extract {q(input)} -o features.h5 --model {q(model)}{weights_opt} --layer {q(layer)}",
            f"featpipe fit features.h5 -o model.skops --layer {q(layer)} --classifier logreg,linear",
        ]
    if decision.strategy.startswith("fine-tune") and not from_features:
        unfreeze = "2" if decision.strategy == "fine-tune-top" else "all"
        steps.append(f"featpipe finetune {q(input)} -o finetuned.pt --model {q(model)}{weights_opt} --unfreeze {unfreeze}")
    return steps
