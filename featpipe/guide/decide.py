"""The lecture's 2x2 table, decided from measurements, and the commands that follow.

              similar to ImageNet                 different from ImageNet
 little data  classifier on last-layer features   classifier on an earlier layer
 much data    fine-tune the top blocks            fine-tune the whole network

Data size is measured: on the sweep's folds the guide fine-tunes the network
(featpipe/guide/tuning.py) and compares it, paired, with the best frozen layer.
Fine-tuning that beats it by more than the noise (and by MIN_GAIN) means there is
enough data to fine-tune ("much data"); otherwise frozen features serve ("little").
Ahead by more than MIN_GAIN but inside the noise is "can't tell": the frozen route
stays the advice, and the measured `featpipe finetune` command is printed after it
as the way to settle it (its validation accuracy against the frozen route's).
The rule of thumb of the tutorials, LITTLE_DATA_PER_CLASS labelled images per
class, is shown beside it as a reason, and decides only where fine-tuning could
not be measured (--no-finetune, a feature file, too few images per class), with
that label.

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
    finetune: object | None = None  # guide.tuning.FinetuneMeasurement: measured, or why not


@dataclass
class Decision:
    data_size: str  # "little" or "much"
    similarity: str  # "similar", "different" or "can't tell"
    strategy: str  # a key of STRATEGIES
    recommended_layer: str
    features_help: bool
    curve: str  # "climbing", "flat" or "can't tell"
    reasons: list[str] = field(default_factory=list)
    settle: str | None = None  # what would settle a "can't tell"
    finetune: str | None = None  # "pays", "does not pay" or "can't tell" where measured

    @property
    def quadrant(self) -> str:
        where = {"similar": "similar to ImageNet", "different": "different from ImageNet",
                 "can't tell": "closeness to ImageNet can't be told"}[self.similarity]
        return f"{self.data_size} data, {where}"


def _pts(x: float) -> str:
    return f"{100 * x:.1f} points"


def decide(c: Comparison) -> Decision:
    """Place the data in the 2x2 table and choose one strategy, with the reasons in words: its size (measured
    fine-tuning, or the rule of thumb), its similarity to ImageNet (the layer sweep), then what the head and the
    learning curve add, and the strategy the table's cell gives."""
    reasons: list[str] = []
    ft = c.finetune
    measured = ft is not None and ft.measured
    tuned = finetune_verdict(ft.gain, ft.noise) if measured else None
    data_size = _data_size(c, tuned, reasons)
    features_help = c.pixels_gap is None or c.pixels_gap > c.pixels_noise
    similarity = _similarity(c, features_help, reasons)
    _head_reasons(c, reasons)
    curve = _curve(c, measured, reasons)
    settle = None
    if data_size == "much":
        # Fine-tuning measured to pay wins over the table's similarity cell; otherwise the rule's cell.
        strategy = "fine-tune-all" if (ft.recipe.get("unfreeze") == "all" if measured else similarity != "similar") \
            else "fine-tune-top"
        layer = c.best if c.gain > 0 else c.last  # for the frozen-feature baseline
    elif similarity == "can't tell":
        strategy, layer = "can't tell", c.last
        settle = ("a larger sample (--sample 2000) narrows the noise; another model (--model a,b) may separate "
                  "the layers more clearly. Meanwhile the last layer is the safe default")
    else:
        # Far from ImageNet, the lecture's advice is an earlier layer; where the last one still
        # measures best (pixels alone did the telling), the measurement wins.
        earlier = similarity == "different" and c.gain > 0
        strategy = "earlier-layer" if earlier else "last-layer"
        layer = c.best if earlier else c.last
    return Decision(data_size, similarity, strategy, layer, features_help, curve, reasons, settle, tuned)


def _data_size(c: Comparison, tuned: str | None, reasons: list[str]) -> str:
    """"little" or "much": measured fine-tuning decides where it was measured (``tuned``), else the rule of thumb."""
    rule = "little" if c.per_class_median < LITTLE_DATA_PER_CLASS else "much"
    ft = c.finetune
    if tuned is None:
        why = f" ({ft.why_not})" if ft is not None and ft.why_not else ""
        reasons.append(
            f"{c.per_class_median:g} labelled images per class (median) is "
            f"{'fewer' if rule == 'little' else 'at least'} than the {LITTLE_DATA_PER_CLASS} where fine-tuning "
            f"starts to pay, by the rule of thumb: fine-tuning was not measured{why}"
        )
        return rule
    reasons.append(
        f"fine-tuning reached {ft.mean:.3f} +- {ft.std:.3f} against {ft.frozen_mean:.3f} +- {ft.frozen_std:.3f} for "
        f"{ft.layer} on the same {len(ft.folds)} folds (noise {_pts(ft.noise)}): " + {
            "pays": "it pays",
            "can't tell": f"ahead by {_pts(ft.gain)}, inside the noise: can't tell; the `featpipe finetune` "
                          "command below settles it (its validation accuracy against the frozen route's)",
            "does not pay": "it does not pay" if ft.gain <= 0 else f"ahead by {_pts(ft.gain)}, under {_pts(MIN_GAIN)}: "
                                                              "it does not pay",
        }[tuned]
    )
    reasons.append(
        f"{c.per_class_median:g} labelled images per class (median); the tutorials' rule of thumb "
        f"({LITTLE_DATA_PER_CLASS} per class) would say {rule} data: the measurement decides"
    )
    return "much" if tuned == "pays" else "little"


def _similarity(c: Comparison, features_help: bool, reasons: list[str]) -> str:
    """"similar", "different" or "can't tell": from whether an earlier layer beats the last, and pixels the layers."""
    if not features_help:
        reasons.append(
            f"raw pixels ({c.pixels_mean:.3f}) {'beat' if c.pixels_gap < 0 else 'match, within the noise,'} the "
            f"best layer ({c.pixels_mean + c.pixels_gap:.3f}): this "
            "model's features do not help this data; the images are far from ImageNet photos"
        )
    if c.gain > max(c.gain_noise, MIN_GAIN):
        reasons.append(
            f"an earlier layer, {c.best}, beats the last one, {c.last}, by {_pts(c.gain)} (noise: "
            f"{_pts(c.gain_noise)}): the last layer is specialised to ImageNet's classes, and these images are "
            "far from ImageNet photos"
        )
        return "different"
    if not features_help:
        return "different"
    if c.gain < MIN_GAIN:
        reasons.append(
            f"no earlier layer beats the last one, {c.last} ({c.last_mean:.3f}), by {_pts(MIN_GAIN)} or more: "
            "its features suit these images, as they do images close to ImageNet"
        )
        return "similar"
    reasons.append(
        f"{c.best} is ahead of the last layer, {c.last}, by {_pts(c.gain)}, inside the noise of "
        f"{_pts(c.gain_noise)}"
    )
    return "can't tell"


def _head_reasons(c: Comparison, reasons: list[str]) -> None:
    """What the ImageNet head makes of the images. Evidence, not a vote: a head can be sure of the wrong thing
    (digits taken for envelopes)."""
    if c.head_top1 is None:
        return
    verdict = ("confident" if c.head_top1 >= HEAD_CONFIDENT else "unsure" if c.head_top1 < HEAD_UNSURE
               else "neither confident nor lost")
    seen = ", ".join(f"{t['class']} {100 * t['share']:.0f}%" for t in c.head_top_classes)
    reasons.append(f"the ImageNet head is {verdict} on these images (mean top-1 probability {c.head_top1:.2f})"
                   + (f" and mostly takes them for: {seen}" if seen else ""))
    if c.head_top_classes and c.head_top_classes[0]["share"] >= HEAD_ONE_CLASS:
        reasons.append(f"it puts {100 * c.head_top_classes[0]['share']:.0f}% of the images in one ImageNet "
                       "class: to ImageNet's eyes they all look alike")


def _curve(c: Comparison, measured: bool, reasons: list[str]) -> str:
    """The learning curve in words: "climbing", "flat" or "can't tell" ("flat" when it was not drawn)."""
    if c.curve_gain is None:
        return "flat"
    curve = curve_verdict(c.curve_gain, c.curve_noise)
    reasons.append(f"from 50% to 100% of the sample the best layer gains {_pts(c.curve_gain)} (noise "
                   f"{_pts(c.curve_noise or 0.0)}): " + {
                       "climbing": "still climbing, so more labelled images (or fine-tuning) may pay",
                       "flat": "flat, so frozen features have saturated on this data",
                       "can't tell": "can't tell whether it still climbs; more labelled images (or fine-tuning) "
                                     "may pay",
                   }[curve] + (" (the fine-tuning measurement above settles that one)"
                               if measured and curve != "flat" else ""))
    return curve


def gained(gain: float, noise: float | None) -> str:
    """The one reading of a measured gain: "more" (above the noise and MIN_GAIN), "same" (MIN_GAIN or less),
    or "can't tell" (above MIN_GAIN, inside the noise). The learning curve and fine-tuning both read it."""
    if gain > max(noise or 0.0, MIN_GAIN):
        return "more"
    return "same" if gain <= MIN_GAIN else "can't tell"


def finetune_verdict(gain: float, noise: float) -> str:
    """Fine-tuning against the best frozen layer: pays, does not pay, or can't tell."""
    return {"more": "pays", "same": "does not pay", "can't tell": "can't tell"}[gained(gain, noise)]


def curve_verdict(gain: float, noise: float | None) -> str:
    """The learning curve from 50% to 100% of the sample: climbing, flat, or can't tell."""
    return {"more": "climbing", "same": "flat", "can't tell": "can't tell"}[gained(gain, noise)]


def commands(input: str, model: str, weights: str, decision: Decision, from_features: bool,
             recipe: dict | None = None) -> list[str]:
    """The exact next commands: the frozen-feature route always, fine-tuning where it is the advice, with the
    recipe the guide measured (``recipe``: option name -> value) where it measured one."""
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
    if (decision.strategy.startswith("fine-tune") or decision.finetune == "can't tell") and not from_features:
        if recipe:
            from ..finetune.recipe import Choice, Recipe

            options = " ".join(Recipe({k: Choice(v, False, "") for k, v in recipe.items()}).options())
        else:
            options = f"--unfreeze {'2' if decision.strategy == 'fine-tune-top' else 'all'}"
        steps.append(f"featpipe finetune {q(input)} -o finetuned.pt --model {q(model)}{weights_opt} {options}")
    return steps
