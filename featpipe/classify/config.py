"""`featpipe fit`'s settings as typed objects, checked when they are made (ranges in featpipe/settings.py):
``FitConfig``, and ``HeadSettings`` for the PyTorch heads it trains."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..settings import FIT, HEAD, shown
from ..settings import HEADS as STREAMING  # the heads, which stream (estimators.STREAMING)


@dataclass(frozen=True)
class HeadSettings:
    """Training settings of the PyTorch heads (`linear`, `mlp`); None keeps each head's default.

    Raises SettingError when made with a value out of its range, naming the field (``HeadSettings.lr``)."""

    lr: float | None = None
    optimizer: str | None = None  # settings.OPTIMIZERS
    schedule: str | None = None  # settings.SCHEDULES
    epochs: int | None = None
    batch_size: int | None = None
    weight_decay: float | None = None

    def __post_init__(self):
        self.check()

    def params(self) -> dict:
        """The set values, as head parameters."""
        names = {"epochs": "max_epochs"}
        return {names.get(k, k): v for k, v in vars(self).items() if v is not None}

    def check(self) -> None:
        """Raises SettingError naming the field (``HeadSettings.lr``), its allowed values and the value given."""
        HEAD.check(self)


@dataclass(frozen=True)
class FitConfig:
    """Settings of `featpipe fit`.

    Made, it holds every path as a Path (strings are fine from a notebook) and ``head`` as HeadSettings (a dict
    is fine too), and each value within its range, or it raises SettingError naming the field
    (``FitConfig.test_size``); see :func:`check_config`."""

    features: Path
    output: Path | None
    classifiers: tuple[str, ...] = ("logreg",)
    layer: str | None = None
    test_size: float = 0.2
    test: Path | None = None  # a second feature file as the test set, instead of a split
    seed: int = 0
    keep_all: bool = False
    report: Path | None = None
    cv: int | None = None  # compare by stratified K-fold CV accuracy on the training rows
    search: int | None = None  # random-search trials (with --cv folds, default 5), best refitted on all training rows
    # The PyTorch heads read mini-batches from the file (memory bounded by the batch size). None:
    # only when the features would not fit in memory.
    stream: bool | None = None
    validation_size: float = 0.2  # without --cv: fraction of the training rows the classifiers are compared on
    head: HeadSettings = HeadSettings()
    # Train on the training images' augmented views too (extract --augment); validation and test rows stay
    # originals, and the split is by image, so no view of a held-out image is trained on.
    use_augmented: bool = False

    def __post_init__(self):
        for name in ("features", "output", "test", "report"):
            if (value := getattr(self, name)) is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if isinstance(self.head, dict):
            object.__setattr__(self, "head", HeadSettings(**self.head))
        check_config(self)


def check_config(config: FitConfig) -> None:
    """The settings' own values (a FitConfig checks itself when it is made): each field against its constraint
    (settings.FIT, and settings.HEAD for ``config.head``), then whether the head settings apply.

    Raises:
        SettingError: an unknown classifier, a size outside (0, 1), cv below 2, search below 1, bad head settings,
            head settings without a head to train; named ``FitConfig.<field>`` or ``HeadSettings.<field>``.
    """
    FIT.check(config, skip=("test_size",) if config.test is not None else ())  # a test file replaces the split
    head_params(config)


def head_params(config: FitConfig) -> dict:
    """The heads' settings from ``config.head``, checked; refused when no head is fitted."""
    config.head.check()
    params = config.head.params()
    if params and not any(name in STREAMING for name in config.classifiers):
        given = ", ".join(k for k, v in vars(config.head).items() if v is not None)
        raise FIT.refuse(f"{{classifiers}} {shown(','.join(config.classifiers))} has no linear or mlp head for the "
                         f"heads' settings ({given}) to train; add linear or mlp, or drop those settings")
    return params
