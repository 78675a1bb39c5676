"""`featpipe finetune`'s settings as one typed object, and their checks (ranges in featpipe/settings.py)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from .. import settings
from ..errors import UsageError
from . import recipe as recipe_rules


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of one fine-tuning run (the CLI's options, as one typed object).

    ``"auto"`` settings are measured on the data (featpipe/finetune/recipe.py says how); the others are used
    as given. The defaults are the measured recipe."""

    input: Path
    output: Path
    model: str
    weights: str = "pretrained"
    unfreeze: str = recipe_rules.UNFREEZE  # head, a number of stages from the top, or all
    epochs: int | str = "auto"
    lr: float | str = "auto"  # auto: a range test of the network with a fresh head (recipe.py)
    lr_decay: float = recipe_rules.LR_DECAY  # each stage below the top trains at this times its upper neighbour's rate
    optimizer: str = "adam"
    schedule: str = "cosine"
    warmup: float = 1.0  # epochs over which every rate rises linearly from ~0 to its own (0: none)
    weight_decay: float = 1e-4
    augment: str = "auto"
    flip: bool | str = "auto"
    bn: str = "frozen"
    image_size: int | str | None = "auto"  # square input crop; None: the model's own
    crop_pct: float | str | None = "auto"  # crop / resize, as in timm (above 1 pads with black); None: the model's
    val_size: float = recipe_rules.VAL_SIZE  # 0: train on every image for --epochs and keep the last (a refit, epochs chosen before)
    batch_size: int = 32
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 on a GPU, fp32 on the CPU
    seed: int = 0
    resume: bool = False


def _auto(config: FinetuneConfig, name: str, kind: type):
    """The field ``name`` as "auto" or a ``kind``; None stays None where the field may be None."""
    value, setting = getattr(config, name), settings.FINETUNE.settings.get(name)
    if value is None and setting is not None and setting.optional:
        return None
    try:
        return recipe_rules.parse_auto(value, name, kind)
    except UsageError:
        what = {int: "a whole number", float: "a number", bool: "true or false"}[kind]
        raise settings.FINETUNE.refuse(f"{{{name}}} must be auto or {what}, got {settings.shown(value)}",
                                       value) from None


def check_values(config: FinetuneConfig) -> FinetuneConfig:
    """The config with every ``auto`` spelled as "auto" and every number as a number, each in its range.

    Raises:
        SettingError: a value that is not auto or a number, or out of its range (settings.FINETUNE).
    """
    config = replace(config, epochs=_auto(config, "epochs", int), lr=_auto(config, "lr", float),
                     flip=_auto(config, "flip", bool), image_size=_auto(config, "image_size", int),
                     crop_pct=_auto(config, "crop_pct", float))
    settings.FINETUNE.check(config)
    return config


def checked(config: FinetuneConfig) -> FinetuneConfig:
    """check_values, and the output's folder exists, or a one-line error."""
    config = check_values(config)
    out = Path(config.output)
    if not out.parent.is_dir():
        raise UsageError(f"output folder {str(out.parent)!r} does not exist; create it or choose another -o")
    return config
