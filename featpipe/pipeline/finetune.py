"""A pipeline's ``[finetune]`` table: `featpipe finetune` as a stage, run last, skipped while its checkpoint is
current.

    [finetune]
    output = "../out/finetuned.pt"  # the checkpoint (a `featpipe extract --weights` takes it)
    unfreeze = "2"                  # any option of `featpipe finetune` (featpipe.finetune.FinetuneConfig)

``input``, ``model`` and ``weights`` default to ``[extract]``'s: the network fine-tuned is the one whose frozen
features the fit learned from, and that fit is the baseline the fine-tuned network should beat. Beside the
checkpoint, ``<output>.pipeline.json`` records the fingerprint of what it was trained on (the settings and
every input image's identity) and the checkpoint's hash: a rerun with the same images and settings keeps the
checkpoint instead of training again.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .._util import atomic_write, sha256_file
from ..errors import UsageError
from .fingerprint import of_run

if TYPE_CHECKING:
    from ..extraction import ExtractConfig
    from ..finetune import FinetuneConfig, FinetuneResult

_NOT_MEASURED = ("device", "resume", "output")  # where it runs and how it got there, not what it trains


@dataclass(frozen=True)
class FinetuneStage:
    """The ``[finetune]`` table, read: the fine-tuning's settings, and where its HTML report goes (None: none)."""

    config: FinetuneConfig
    report: Path | None = None

    @property
    def record(self) -> Path:
        """Where the stage records what the checkpoint was trained on."""
        return self.config.output.with_name(self.config.output.name + ".pipeline.json")


def finetune_stage(table: dict[str, dict], extract: ExtractConfig) -> FinetuneStage:
    """``table`` (as schema.read gives it) as a stage, its settings checked; what it leaves out of input, model
    and weights is ``extract``'s.

    Raises:
        SettingError: a value out of its range.
        UsageError: no model, where [extract] names none either (a checkpoint's own model).
    """
    from ..finetune import FinetuneConfig

    settings = dict(table["config"])
    settings.setdefault("input", extract.input)
    settings.setdefault("model", extract.model)
    settings.setdefault("weights", extract.weights)
    if not settings["model"]:
        raise UsageError("[finetune] needs model: [extract] takes its model from a checkpoint, and fine-tuning "
                         "needs it named")
    return FinetuneStage(FinetuneConfig(**settings), table["stage"].get("report"))  # checked as it is made


def _current(stage: FinetuneStage, wanted: str) -> bool:
    """Whether the checkpoint was trained with these settings on these images, and is the one recorded."""
    try:
        record = json.loads(stage.record.read_text())
        return (isinstance(record, dict) and record.get("fingerprint") == wanted
                and record.get("checkpoint_sha256") == sha256_file(stage.config.output))
    except (OSError, ValueError):
        return False


def run_finetune(stage: FinetuneStage, progress: Callable[[str, int, int], None] | None = None,
                 on_epoch: Callable | None = None) -> FinetuneResult | None:
    """Fine-tune where the checkpoint is not current, and record it; None where it is (nothing ran).

    Raises:
        As featpipe.finetune.finetune: UsageError (bad settings or input), WeightsError.
    """
    from ..finetune import finetune

    config = stage.config
    wanted = of_run(config, _NOT_MEASURED)
    if _current(stage, wanted):
        return None
    # An interrupted run of these very settings continues (the pipeline's rerun is the user's "go on").
    result = finetune(replace(config, resume=config.resume or config.resume_path.exists()), progress=progress,
                      on_epoch=on_epoch)
    with atomic_write(stage.record) as tmp:
        tmp.write_text(json.dumps({"fingerprint": wanted, "checkpoint_sha256": sha256_file(config.output)}) + "\n")
    if stage.report is not None:
        from ..finetune.report import write_report
        from ..report import from_finetune

        write_report(result, stage.report)
        from_finetune(result, config, stage.report)
    return result
