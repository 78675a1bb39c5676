"""Every setting's allowed values, declared once: the choice lists, the numeric ranges, one checker, one message.

A *group* is the settings of one config dataclass (``ExtractConfig``) or one library function (``lr_find``):
for each field, the constraints it must meet (any one of them will do, as in scikit-learn's
``_parameter_constraints``). ``Group.check`` is the one checker, and :class:`SettingError` carries the one
message template, ``{name} must be {requirement}, got {value!r}``, where the name is the field as its caller
knows it:

* from Python: ``ExtractConfig.batch_size must be at least 1 or auto, got 0`` (``str(error)``);
* from the command line: ``--batch-size must be at least 1 or auto, got 0`` (``cli/__init__.py``);
* from a pipeline: ``x.toml:12: extract.batch_size must be ...`` (``pipeline/load.py``).

The library raises with the Python name; the CLI and the pipeline tell the same error with theirs
(``SettingError.told_as``). Settings that contradict each other are refused the same way, with a message
of their own whose placeholders name the fields (``Group.refuse``). The CLI's choices are generated from
the lists here (``cli/_common.py``), and ``tests/test_settings.py`` fails when a command's choices differ.

Pure data and the standard library only: the CLI reads this before deciding whether to load torch.
This module holds what one value alone must be; relations between settings (devices with scheduler,
use_augmented with cv) stay with the code that knows why, and are told through ``Group.refuse``.
"""
from __future__ import annotations

import math
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from numbers import Integral, Real

from .errors import UsageError

# The choice lists. Where a module keeps data per choice (views.STRENGTHS, extractor.AUTOCAST, heads'
# optimizers), its table follows the list here, and tests/test_settings.py checks that it covers it.
POOLS = ("avg", "max")  # how an intermediate layer becomes a vector
PRECISIONS = ("fp32", "bf16", "fp16")
BACKENDS = ("auto", "torch", "openvino")  # what runs the CPU's forward pass (extraction/backends.py)
RESAMPLERS = ("auto", "torch", "pil")  # extraction/preprocess.py
DECODES = ("exact", "fast", "gpu", "auto")  # models/data_config.py
DTYPES = ("float32", "float16")  # the features as stored
TTAS = {"none": 1, "flip": 2, "crops": 5}  # test-time augmentation -> views averaged per image (extraction/views.py)
AUGMENTS = ("none", "light", "standard", "strong")  # augmentation strengths; none: no augmented views
STRENGTHS = AUGMENTS[1:]  # the strengths that make views (extract --augment-views K)
OPTIMIZERS = ("sgd", "momentum", "nesterov", "rmsprop", "adam")  # classify/heads.py
SCHEDULES = ("constant", "step", "cyclic", "sgdr", "cosine")
CLASSIFIERS = {  # classify/estimators.py builds them
    "logreg": "multinomial logistic regression, L2 (lbfgs)",
    "rf": "random forest",
    "nb": "Gaussian naive Bayes, probabilities calibrated (sigmoid)",
    "svm": "linear SVM with calibrated probabilities",
    "knn": "k nearest neighbours, cosine distance",
    "linear": "PyTorch linear softmax head (the new last layer)",
    "mlp": "PyTorch MLP head: one hidden layer, batch norm or SELU, dropout",
}
HEADS = ("linear", "mlp")  # the classifiers that are PyTorch heads (lr-find, streaming)
BN_POLICIES = ("frozen", "train")  # finetune: BatchNorm keeps its statistics, or unfrozen stages update them
FINETUNE_PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 on a GPU, fp32 on the CPU (docs/finetune.md)


class SettingError(UsageError):
    """A message about settings, each named the way its caller knows it. ``template`` has a placeholder per
    field (``'{batch_size} must be at least 1 or auto, got 0'``); ``str()`` fills them with Python's names
    (``ExtractConfig.batch_size``), ``told_as`` with another caller's. ``options``: each field, in the order
    the message names them, with its command-line option; ``value``: the value refused, if one was."""

    def __init__(self, group: str, template: str, options: Mapping[str, str], value=None):
        self.group, self.template, self.options, self.value = group, template, dict(options), value
        super().__init__(self.told_as(lambda name: f"{group}.{name}"))

    def __reduce__(self):  # raised on a Dask worker, it travels back to the client whole
        return type(self), (self.group, self.template, self.options, self.value)

    @property
    def field(self) -> str:
        """The field the message is about (the first it names)."""
        return next(iter(self.options))

    def told_as(self, name: Callable[[str], str]) -> str:
        """The message with each field called ``name(field)``: ``lambda f: f"extract.{f}"`` in a pipeline."""
        return self.template.format_map({f: name(f) for f in self.options})

    def told_by_option(self) -> str:
        """The message as the command line says it (``--batch-size``)."""
        return self.told_as(self.options.__getitem__)


def renamed_note(old: str, new: str) -> str:
    """What is said when a setting's old spelling is used (an option, a pipeline key): one wording for both."""
    return f"{old} is deprecated; use {new} (the old spelling goes in the next release)"


def literal(text: str) -> str:
    """``text`` in a SettingError's template, as it is: its braces are not placeholders."""
    return text.replace("{", "{{").replace("}", "}}")


def shown(value) -> str:
    """``repr(value)`` in a SettingError's template."""
    return literal(repr(value))


# Constraints: each says whether it accepts a value, and in words what it asks for.

@dataclass(frozen=True)
class OneOf:
    choices: tuple[str, ...]

    def accepts(self, value) -> bool:
        return isinstance(value, str) and value in self.choices

    def __str__(self) -> str:
        return self.choices[0] if len(self.choices) == 1 else f"one of {', '.join(self.choices)}"


@dataclass(frozen=True)
class Number:
    """A number within bounds: ``low``/``high`` included unless ``open`` names that side ("low", "high",
    "both"); ``integer`` for whole numbers. Booleans and non-finite numbers are never accepted."""

    low: float | None = None
    high: float | None = None
    open: str = ""
    integer: bool = False

    def accepts(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, Integral if self.integer else Real):
            return False
        if not math.isfinite(value):
            return False
        low_open, high_open = self.open in ("low", "both"), self.open in ("high", "both")
        if self.low is not None and (value <= self.low if low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if high_open else value > self.high))

    def __str__(self) -> str:
        low_open, high_open = self.open in ("low", "both"), self.open in ("high", "both")
        if self.low is not None and self.high is not None:
            if not low_open and not high_open:
                return f"between {self.low} and {self.high}"
            return f"{'greater than' if low_open else 'at least'} {self.low} and " \
                   f"{'less than' if high_open else 'at most'} {self.high}"
        if self.low is not None:
            return f"{'greater than' if low_open else 'at least'} {self.low}"
        if self.high is not None:
            return f"{'less than' if high_open else 'at most'} {self.high}"
        return "a whole number" if self.integer else "a number"


@dataclass(frozen=True)
class Each:
    """A list whose every item meets ``item``; the error names the first item that does not."""

    item: OneOf | Number

    def accepts(self, value) -> bool:
        return isinstance(value, (list, tuple)) and all(self.item.accepts(v) for v in value)

    def culprit(self, value):
        if not isinstance(value, (list, tuple)):
            return value
        return next(v for v in value if not self.item.accepts(v))

    def __str__(self) -> str:
        return str(self.item)


@dataclass(frozen=True)
class Setting:
    """What one field must be: any of ``constraints``; None too when ``optional``. ``words`` replaces the
    generated requirement where that reads badly."""

    constraints: tuple
    optional: bool = False
    words: str | None = None

    def requirement(self) -> str:
        return self.words or " or ".join(str(c) for c in self.constraints)


def one_of(choices, **kw) -> Setting:
    return Setting((OneOf(tuple(choices)),), **kw)


def at_least(low, *, optional: bool = False, integer: bool = True, **kw) -> Setting:
    return Setting((Number(low, integer=integer),), optional=optional, **kw)


def greater_than(low, *, optional: bool = False, **kw) -> Setting:
    return Setting((Number(low, open="low"),), optional=optional, **kw)


def fraction(**kw) -> Setting:
    """Strictly between 0 and 1: a share of the rows held out, where neither none nor all makes sense."""
    return Setting((Number(0, 1, open="both"),), **kw)


@dataclass(frozen=True)
class Group:
    """The constrained fields of one config dataclass or library function, named as Python knows it;
    ``options``: the command line's spelling of a field where it is not ``--field-name``."""

    name: str
    settings: Mapping[str, Setting] = field(default_factory=dict)
    options: Mapping[str, str] = field(default_factory=dict)

    def option(self, name: str) -> str:
        """``name``'s command-line option."""
        return self.options.get(name, f"--{name.replace('_', '-')}")

    def refuse(self, template: str, value=None) -> SettingError:
        """The error for ``template``, whose ``{field}`` placeholders name fields of this group, constrained or
        not: for settings that contradict each other (``'{devices} and {scheduler} ...'``). Values go in
        through :func:`shown`."""
        names = dict.fromkeys(f for _, f, _, _ in string.Formatter().parse(template) if f)
        return SettingError(self.name, template, {f: self.option(f) for f in names}, value)

    def check_value(self, name: str, value) -> None:
        """``value`` as the field ``name``.

        Raises:
            SettingError: the one message, naming ``{group}.{name}``.
        """
        setting = self.settings[name]
        if value is None and setting.optional:
            return
        if any(c.accepts(value) for c in setting.constraints):
            return
        culprit = next((c.culprit(value) for c in setting.constraints if isinstance(c, Each)), value)
        raise self.refuse(f"{{{name}}} must be {setting.requirement()}, got {shown(culprit)}", culprit)

    def check(self, config=None, skip: tuple[str, ...] = (), **values) -> None:
        """Every constrained field of ``config`` (an object with these attributes), or the ``values`` given,
        in the order they are declared; ``skip`` leaves out fields that do not apply to this call.

        Raises:
            SettingError: the first field whose value breaks its constraint.
        """
        for name in self.settings:
            if name in skip:
                continue
            if config is not None:
                self.check_value(name, getattr(config, name))
            elif name in values:
                self.check_value(name, values[name])


# --batch-size: a number of images, or 'auto': the largest that fits, halved on out-of-memory.
BATCH_SIZE = Setting((Number(1, integer=True), OneOf(("auto",))))

EXTRACT = Group("ExtractConfig", {
    "pool": one_of(POOLS),
    "batch_size": BATCH_SIZE,
    "precision": one_of(PRECISIONS),
    "backend": one_of(BACKENDS),
    "resampler": one_of(RESAMPLERS),
    "decode": one_of(DECODES),
    "dtype": one_of(DTYPES),
    "tta": one_of(TTAS),
    "augment": at_least(0),
    "augment_strength": one_of(STRENGTHS),  # checked only with augment > 0, as only then is it used
    "partition_size": at_least(1, optional=True),
    "streams": at_least(1, optional=True),
    "decode_threads": at_least(1, optional=True),
    # A count of images, or a fraction of all images (the command line also takes '5%').
    "max_failures": Setting((Number(0, integer=True), Number(0, 1)), optional=True,
                            words="a count (10), a fraction (0.05) or a percentage (5%)"),
}, options={"layers": "--layer", "augment": "--augment-views", "storage_options": "--storage-option"})

FIT = Group("FitConfig", {
    "classifiers": Setting((Each(OneOf(tuple(CLASSIFIERS))),)),
    "test_size": fraction(),  # not checked with a test file, which replaces the split
    "validation_size": fraction(),
    "cv": at_least(2, optional=True),
    "search": at_least(1, optional=True),
}, options={"classifiers": "--classifier"})

# The PyTorch heads' training within a fit (FitConfig.head); None keeps each head's default.
HEAD = Group("HeadSettings", {
    "lr": greater_than(0, optional=True),
    "optimizer": Setting((OneOf(OPTIMIZERS),), optional=True),
    "schedule": Setting((OneOf(SCHEDULES),), optional=True),
    "epochs": at_least(1, optional=True),
    "batch_size": at_least(1, optional=True),
    "weight_decay": at_least(0, optional=True, integer=False),
})

LR_FIND = Group("lr_find", {
    "head": one_of(HEADS),
    "optimizer": one_of(OPTIMIZERS),
    "steps": at_least(10),  # fewer makes no curve to read a rate from
    "batch_size": at_least(1),
}, options={"head": "--classifier"})

PREDICT = Group("predict", {"batch_size": BATCH_SIZE})

AUTO = OneOf(("auto",))  # measured on the images (featpipe/finetune/recipe.py)

# Checked when a FinetuneConfig is made, after "auto" and the command line's text are parsed (finetune/config.py).
FINETUNE = Group("FinetuneConfig", {
    "epochs": Setting((Number(0, integer=True), AUTO)),
    "lr": Setting((Number(0, open="low"), AUTO)),
    "lr_decay": Setting((Number(0, 1, open="low"),)),
    "optimizer": one_of(OPTIMIZERS),
    "schedule": one_of(SCHEDULES),
    "warmup": at_least(0, integer=False),
    "weight_decay": at_least(0, integer=False),
    "augment": one_of(("auto", *AUGMENTS)),
    "bn": one_of(BN_POLICIES),
    "image_size": Setting((Number(32, integer=True), AUTO), optional=True),  # None: the model's own
    "crop_pct": Setting((Number(0.5, 2), AUTO), optional=True),  # crop / resize, as in timm; None: the model's
    "val_size": Setting((Number(0, 1, open="high"),),
                        words="a fraction from 0 (no validation: keep the last epoch) to below 1"),
    "batch_size": at_least(2, words="at least 2 (BatchNorm and a mean loss need two)"),
    "precision": one_of(FINETUNE_PRECISIONS),
}, options={"val_size": "--validation-size"})

# Checked when a GuideConfig is made (guide/config.py), with the relation of sample to cv.
GUIDE = Group("GuideConfig", {
    "sample": at_least(4),  # twice the fewest folds: a test row of each class in each fold, and more to train on
    "cv": at_least(2),
    "backend": one_of(BACKENDS),
    "batch_size": at_least(1),
}, options={"cv": "--folds", "layers": "--layer", "models": "--model"})

PREDICTIONS_CSV = Group("Predictions.write_csv", {"top_k": at_least(1)})

# Each group with the command whose options set its fields (tests/test_settings.py checks the two agree).
COMMANDS = {"extract": (EXTRACT,), "fit": (FIT, HEAD), "lr-find": (LR_FIND,), "predict": (PREDICT, PREDICTIONS_CSV),
            "finetune": (FINETUNE,), "guide": (GUIDE,)}
