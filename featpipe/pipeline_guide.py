"""A pipeline's ``[guide]`` table: `featpipe guide` as a stage, its result kept, and the layer it advises.

    [guide]
    output = "../out/guide.json"   # the guide's result: the `featpipe guide --json` output
    sample = 500                   # any field of featpipe.guide.GuideConfig (the options of `featpipe guide`)

    [extract]
    layers = ["guide"]             # the guide's recommended layer, stored under its real name

The table's keys are GuideConfig's fields, so a setting the guide gains is a key
here too, and its defaults (``finetune`` among them) are the guide's own.
``input``, ``models`` and ``weights`` default to ``[extract]``'s, so that the
advice is about the network that is extracted. The result file also records
the pipeline's fingerprint of what was measured (the settings and every input
image's identity): a rerun with the same images and settings reuses the file
instead of running the guide again; anything else runs it again (the guide's own
feature cache still spares the forward pass where the sample is unchanged).
"""
from __future__ import annotations

import hashlib
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from . import identity
from ._util import atomic_write

if TYPE_CHECKING:
    from .extraction import ExtractConfig
    from .guide import GuideConfig, GuideResult

ADVISED = "guide"  # in [extract] layers (or as [fit] layer): the layer the guide recommends
FINGERPRINT_KEY = "pipeline_fingerprint"  # the one key the pipeline adds to the guide's --json output
_NOT_MEASURED = ("cache_dir", "device", "batch_size")  # where and how fast the guide runs, not what it measures


def guide_keys() -> dict[str, tuple]:
    """The keys of ``[guide]`` as the pipeline's schema (key: (accepted types, is a path)): ``output``, and each
    field of GuideConfig with its TOML form (a tuple is a list of strings, a Path a path relative to the file).

    Raises:
        TypeError: a GuideConfig field whose type has no TOML form (a change to GuideConfig to follow up here).
    """
    from .guide import GuideConfig

    hints = typing.get_type_hints(GuideConfig)
    keys = {"output": (str, True)}
    for f in fields(GuideConfig):
        hint = hints[f.name]
        union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        members = [m for m in (typing.get_args(hint) if union else (hint,)) if m is not type(None)]
        if Path in members:
            keys[f.name] = (str, True)
            continue
        accepted = []
        for m in members:
            if typing.get_origin(m) is tuple:
                accepted.append(list)
            elif m in (str, int, float, bool):
                accepted.append(m)
            else:
                raise TypeError(f"GuideConfig.{f.name} ({hint}) has no form in a pipeline's [guide] table")
        keys[f.name] = (accepted[0] if len(accepted) == 1 else tuple(accepted), False)
    return keys


@dataclass(frozen=True)
class GuideStage:
    """The ``[guide]`` table, read: where its result goes, and the guide's settings."""

    output: Path
    config: GuideConfig


def guide_stage(table: dict, extract: ExtractConfig) -> GuideStage:
    """``table`` (checked against guide_keys(), paths resolved) as a stage; what it leaves out of input, models
    and weights is ``extract``'s."""
    from .guide import GuideConfig

    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in table.items() if k != "output"}
    settings.setdefault("input", extract.input)
    if extract.model:  # "" is a checkpoint's own model: the guide's default then
        settings.setdefault("models", (extract.model,))
    settings.setdefault("weights", extract.weights)
    return GuideStage(table["output"], GuideConfig(**settings))


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
    settings = {k: str(v) for k, v in vars(config).items() if k not in _NOT_MEASURED}
    return hashlib.sha256(json.dumps([settings, _input_identity(config.input)], sort_keys=True).encode()).hexdigest()


def _input_identity(input) -> str:
    from .extraction.sources import discover
    from .store import load

    path = Path(input)
    if path.suffix.lower() in (".h5", ".hdf5") and path.is_file():  # a feature file, as the guide tells one
        return identity.features_fingerprint(load(path).meta)
    samples = discover(input)
    return identity.images_digest(samples.paths, samples.labels, samples.classes, samples.image_stats())


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
    from .guide import guide

    wanted = fingerprint(stage.config)
    kept = _kept(stage.output, wanted)
    if kept is not None:
        return GuideOutcome(stage.output, kept, None)
    result = guide(stage.config, progress=progress)
    doc = {**result.to_dict(), FINGERPRINT_KEY: wanted}
    with atomic_write(stage.output) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
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
    from . import models

    return not extract.model or models.resolve(extract.model).name == outcome.doc["model"]

