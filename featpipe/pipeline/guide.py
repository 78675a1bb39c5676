"""A pipeline's ``[guide]`` table: `featpipe guide` as a stage, its result kept, and the layer it advises.

    [guide]
    output = "../out/guide.json"   # the guide's result: the `featpipe guide --json` output
    sample = 500                   # any option of `featpipe guide` (featpipe.guide.GuideConfig)

    [extract]
    layer = ["guide"]             # the guide's recommended layer, stored under its real name

The table's keys are the options of `featpipe guide` (GuideConfig's fields, named as settings.GUIDE
spells them: ``folds``, ``layer``, ``model``), so a setting the guide gains is a key here too, and its
defaults (``finetune`` among them) are the guide's own.
``input``, ``model`` and ``weights`` default to ``[extract]``'s, so that the
advice is about the network that is extracted. The result file also records
the pipeline's fingerprint of what was measured (the settings and every input
image's identity): a rerun with the same images and settings reuses the file
instead of running the guide again; anything else runs it again (the guide's own
feature cache still spares the forward pass where the sample is unchanged).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .._util import atomic_write
from .fingerprint import of_run

if TYPE_CHECKING:
    from ..extraction import ExtractConfig
    from ..guide import GuideConfig, GuideResult

ADVISED = "guide"  # in [extract] layer (or as [fit] layer): the layer the guide recommends
FINGERPRINT_KEY = "pipeline_fingerprint"  # the one key the pipeline adds to the guide's --json output
_NOT_MEASURED = ("cache_dir", "device", "batch_size")  # where and how fast the guide runs, not what it measures


@dataclass(frozen=True)
class GuideStage:
    """The ``[guide]`` table, read: where its result goes, and the guide's settings."""

    output: Path
    config: GuideConfig
    report: Path | None = None  # the guide's HTML report, written whenever it runs


def guide_stage(table: dict[str, dict], extract: ExtractConfig) -> GuideStage:
    """``table`` (as schema.read gives it) as a stage; what it leaves out of input, models and weights is
    ``extract``'s.

    Raises:
        SettingError: a value out of its range (GuideConfig checks itself).
    """
    from ..guide import GuideConfig

    settings = dict(table["config"])
    settings.setdefault("input", extract.input)
    if extract.model:  # "" is a checkpoint's own model: the guide's default then
        settings.setdefault("models", (extract.model,))
    settings.setdefault("weights", extract.weights)
    return GuideStage(table["stage"]["output"], GuideConfig(**settings), table["stage"].get("report"))


@dataclass
class GuideOutcome:
    """The guide's result as its JSON (``doc``), and the result itself where the guide ran (None: reused)."""

    output: Path
    doc: dict
    result: GuideResult | None

    @property
    def reused(self) -> bool:
        return self.result is None

    @property
    def layers(self) -> tuple[str, ...]:
        """The recommended layer's real names: one, or each of a combination ("blocks.4+blocks.6")."""
        return tuple(self.doc["recommended_layer"].split("+"))

    @property
    def finetune_commands(self) -> list[str]:
        """The `featpipe finetune` command the guide printed, where its advice is to fine-tune."""
        return [c for c in self.doc.get("commands", []) if c.startswith("featpipe finetune ")]


def fingerprint(config: GuideConfig) -> str:
    """Identifies what a guide run measures: its settings and the identity of every input image (or the
    feature file's rows), so a changed image, label or setting makes a kept result stale."""
    return of_run(config, _NOT_MEASURED)


def _kept(output: Path, wanted: str) -> dict | None:
    """The result at ``output`` when it was measured with these settings on these images; else None."""
    try:
        doc = json.loads(output.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get(FINGERPRINT_KEY) == wanted else None


def run_guide(stage: GuideStage, progress: Callable[[str, int, int], None] | None = None) -> GuideOutcome:
    """The guide's result: the kept one where it is current, else a new run, written whole to ``stage.output``.

    Raises:
        As featpipe.guide.guide: UsageError (bad settings or input), WeightsError, RunConflictError.
    """
    from ..guide import guide

    wanted = fingerprint(stage.config)
    kept = _kept(stage.output, wanted)
    if kept is not None:
        return GuideOutcome(stage.output, kept, None)
    result = guide(stage.config, progress=progress)
    doc = {**result.to_dict(), FINGERPRINT_KEY: wanted}
    with atomic_write(stage.output) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
    if stage.report is not None:
        from ..guide.report import write_report
        from ..report import from_guide

        write_report(result, stage.report)
        from_guide(result, stage.report)
    return GuideOutcome(stage.output, doc, result)


def advised_layers(layers: tuple[str, ...], outcome: GuideOutcome) -> tuple[str, ...]:
    """``layers`` with ``"guide"`` replaced by the guide's layer(s), in order, each once."""
    named = [name for layer in layers for name in (outcome.layers if layer == ADVISED else (layer,))]
    return tuple(dict.fromkeys(named))


def fit_follows(extract_layers: tuple[str, ...], fit_layer: str | None) -> bool:
    """Whether the fit learns from the guide's layer: ``layer = "guide"``, or no layer named where the features
    were extracted on the guide's advice."""
    return fit_layer == ADVISED or (fit_layer is None and ADVISED in extract_layers)


def same_model(extract: ExtractConfig, outcome: GuideOutcome) -> bool:
    """Whether the guide's chosen model is the one ``extract`` runs (its layer names are that model's)."""
    from .. import models

    return not extract.model or models.resolve(extract.model).name == outcome.doc["model"]

