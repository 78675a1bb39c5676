"""`featpipe finetune`'s settings as one typed object, checked when it is made (ranges in featpipe/settings.py)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..settings import FINETUNE, shown
from . import recipe as recipe_rules


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of one fine-tuning run (the CLI's options, as one typed object).

    ``"auto"`` settings are measured on the data (featpipe/finetune/recipe.py says how); the others are used
    as given. The defaults are the measured recipe. Made, it holds every ``auto`` as "auto" and every number as a
    number (the command line gives text: ``epochs="5"`` becomes 5), each within its range, or it raises
    SettingError naming the field (``FinetuneConfig.lr``)."""

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

    def __post_init__(self):
        for name, kind in (("epochs", int), ("lr", float), ("flip", bool), ("image_size", int), ("crop_pct", float)):
            value = getattr(self, name)
            if value is not None or name not in ("image_size", "crop_pct"):  # None there: the model's own
                object.__setattr__(self, name, parse_auto(value, name, kind))
        FINETUNE.check(self)

    @property
    def resume_path(self) -> Path:
        """Where an interrupted run of this output keeps its state (``--resume`` continues from it)."""
        output = Path(self.output)
        return output.with_name(output.name + ".resume")


def parse_auto(value, name: str, kind: type):
    """``auto`` or a value of ``kind`` (from the CLI's text or Python) for the field ``name``.

    Raises:
        SettingError: neither, naming ``FinetuneConfig.<name>``.
    """
    if value is None or value == recipe_rules.AUTO:
        return recipe_rules.AUTO
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise FINETUNE.refuse(f"{{{name}}} must be auto, true or false, got {shown(value)}", value)
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise FINETUNE.refuse(f"{{{name}}} must be auto or {_KIND_WORDS[kind]}, got {shown(value)}", value) from None


_KIND_WORDS = {int: "a whole number", float: "a number"}


def checked(config: FinetuneConfig) -> FinetuneConfig:
    """The config, checked where a run starts: its output's folder exists (its values were checked when it was made).

    Raises:
        UsageError: the folder is missing.
    """
    out = Path(config.output)
    if not out.parent.is_dir():
        raise UsageError(f"output folder {str(out.parent)!r} does not exist; create it or choose another -o")
    return config
