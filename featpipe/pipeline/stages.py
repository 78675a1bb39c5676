"""Running a pipeline: the stages whose outputs are not complete yet, in order (see featpipe/pipeline/__init__.py)."""
from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

from .. import identity
from ..classify import FitConfig, FitResult, fit, load_classifier
from ..errors import FeatpipeError, RunConflictError, UsageError
from ..extraction import ExtractConfig, ExtractSummary, extract
from ..settings import FIT
from ..store import load
from . import guide as guide_stage
from .finetune import run_finetune
from .load import Pipeline
from .schema import error_at, key_of


def fit_fingerprint(config: FitConfig, features: Path) -> str:
    """Identifies a fit: its settings and the features it learns from (their extractor and images, so a
    re-extraction over changed images makes the fit stale)."""
    settings = {k: str(v) for k, v in vars(config).items() if k not in ("features", "output", "report")
                and not (k == "use_augmented" and not v)}  # as before the option existed: no needless refit
    feature_hash = identity.features_fingerprint(load(features).meta)
    return hashlib.sha256(json.dumps([settings, feature_hash], sort_keys=True).encode()).hexdigest()


def _fit_is_current(config: FitConfig) -> bool:
    if not config.output.exists():
        return False
    try:
        mf = load_classifier(config.output)
    except FeatpipeError:
        return False
    return mf.fit_fingerprint == fit_fingerprint(config, config.features)


@dataclass
class PipelineResult:
    extract: ExtractSummary
    fit: FitResult | None
    fit_skipped: bool
    report: object | None = None  # featpipe.report.build.Report, where one was written
    guide: guide_stage.GuideOutcome | None = None  # where the pipeline has a [guide] table
    finetune: object | None = None  # featpipe.finetune.FinetuneResult, where the [finetune] stage ran
    finetune_skipped: bool = False  # its checkpoint was current
    advised: tuple[str, ...] = ()  # what "guide" in [extract] layers stood for: the recommended layer(s)
    replaced: tuple[str, ...] = ()  # the layers of the guide's earlier advice, which the feature file held


def _prepare_outputs(pipeline: Pipeline) -> None:
    """Every output's folder exists (created if need be) and is writable, before any work starts."""
    outputs = [("extract", "output", pipeline.extract.output, False)]  # (section, key, path, is a folder)
    if pipeline.guide is not None:
        outputs += [("guide", "output", pipeline.guide.output, False)]
        if pipeline.guide.report is not None:
            outputs += [("guide", "report", pipeline.guide.report, True)]
    if pipeline.fit is not None:
        outputs += [("fit", "output", pipeline.fit.output, False)]
        if pipeline.fit.report is not None:
            outputs += [("fit", "report", Path(pipeline.fit.report), True)]
    if pipeline.finetune is not None:
        outputs += [("finetune", "output", pipeline.finetune.config.output, False)]
        if pipeline.finetune.report is not None:
            outputs += [("finetune", "report", pipeline.finetune.report, True)]
    for section, key, path, folder in outputs:
        def refused(why: str, section=section, key=key, path=path) -> UsageError:
            return error_at(pipeline.path, pipeline.text, section, key, f"{section}.{key} {str(path)!r} {why}")

        if path.is_dir() and not folder:
            raise refused("is a folder; give a file name")
        if path.is_file() and folder:
            raise refused("is a file; give a folder")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise refused(f"has a folder that cannot be created ({exc.strerror or exc}); choose another path") from None
        if not os.access(path.parent, os.W_OK):
            raise refused("is in a folder that is not writable; choose another path")


def run_pipeline(pipeline: Pipeline, progress: Callable[..., None] | None = None,
                 on_epoch: Callable | None = None,
                 during_extract: Callable[[ExtractConfig], AbstractContextManager] | None = None) -> PipelineResult:
    """Run the stages of ``pipeline`` whose outputs are not complete yet: the guide, extract, fit, then finetune.
    Every output path is checked (and its folder created) first, so a bad model path fails before a long
    extraction, not after it.

    ``progress(done, total)`` reports extraction; with a [guide] or [finetune] table, each stage's counts come
    with ``description=`` (the guide's model or phase, "extract", the fine-tuning's phase), as the CLI's progress
    bar takes them. ``on_epoch`` hears each fine-tuning epoch (featpipe.finetune.finetune's). The extraction
    runs inside ``during_extract(config)`` where given (the CLI's Ctrl-C note: which parts are kept).
    """
    _prepare_outputs(pipeline)
    outcome = None
    extract_config, fit_config = pipeline.extract, pipeline.fit
    staged = pipeline.guide is not None or pipeline.finetune is not None
    if pipeline.guide is not None:
        outcome = _run_guide(pipeline, progress)
        extract_config, fit_config = _follow_advice(pipeline, outcome)
    advised = outcome.layers if outcome is not None and guide_stage.ADVISED in pipeline.extract.layers else ()
    extract_progress = functools.partial(progress, description="extract") if progress and staged else progress
    with during_extract(extract_config) if during_extract is not None else nullcontext():
        summary, replaced = _extract(extract_config, bool(advised), extract_progress)
    result = PipelineResult(summary, None, False, guide=outcome, advised=advised, replaced=replaced)
    if fit_config is not None:
        if _fit_is_current(fit_config):
            result.fit_skipped, result.report = True, _report(fit_config, fit_ran=False)
        else:
            result.fit = fit(fit_config, fingerprint=fit_fingerprint(fit_config, fit_config.features))
            result.report = _report(fit_config, fit_ran=True)
    if pipeline.finetune is not None:
        with pipeline.placed("finetune"):
            result.finetune = run_finetune(
                pipeline.finetune, (lambda what, done, total: progress(done, total, description=what)) if progress
                else None, on_epoch)
        result.finetune_skipped = result.finetune is None
    return result


def _run_guide(pipeline: Pipeline, progress) -> guide_stage.GuideOutcome:
    """The [guide] stage; a bad setting that only the guide checks gets its line in [guide]."""
    with pipeline.placed("guide"):
        return guide_stage.run_guide(
            pipeline.guide, (lambda what, done, total: progress(done, total, description=what)) if progress else None)


def _follow_advice(pipeline: Pipeline, outcome: guide_stage.GuideOutcome) -> tuple[ExtractConfig, FitConfig | None]:
    """[extract] and [fit] with "guide" replaced by the guide's layer(s): the feature file stores the real
    names, and the fit learns from the advised layer (a combination is extracted whole; a fit learns from one
    layer, which [fit] then names)."""
    where, text, ex, ft = pipeline.path, pipeline.text, pipeline.extract, pipeline.fit
    if guide_stage.ADVISED in ex.layers:
        if not guide_stage.same_model(ex, outcome):
            raise error_at(where, text, "extract", "model",
                           f"the guide chose {outcome.doc['model']}, and its layers are that model's; set "
                           f"extract.model to it, or [guide] model = [\"{ex.model}\"]")
        ex = replace(ex, layers=guide_stage.advised_layers(ex.layers, outcome))
    if ft is not None and guide_stage.fit_follows(pipeline.extract.layers, ft.layer):
        if len(outcome.layers) > 1:
            key = key_of(FIT, "layer")
            raise error_at(where, text, "fit", key if ft.layer else None,
                           f"the guide advises {'+'.join(outcome.layers)}, layers side by side, and a fit learns "
                           f"from one: name it with fit.{key} ({' or '.join(outcome.layers)})")
        ft = replace(ft, layer=outcome.layers[0])
    return ex, ft


def _extract(config: ExtractConfig, advised: bool, progress) -> tuple[ExtractSummary, tuple[str, ...]]:
    """The extract stage, and the layers it replaced. Where the guide chose the layers and its advice has
    changed since the feature file was made (another layer, same model and weights), the file is stale, as a
    model file fitted on other settings is: it is extracted again, and the caller says so."""
    try:
        return extract(config, progress=progress), ()
    except RunConflictError:
        replaced = _earlier_advice(config) if advised else ()
        if not replaced:
            raise
    return extract(replace(config, overwrite=True), progress=progress), replaced


def _earlier_advice(config: ExtractConfig) -> tuple[str, ...]:
    """The layers a feature file at ``config.output`` holds beyond ``config.layers``, where it is of the same
    model and weights (an earlier run of this pipeline, on other advice); () for any other file."""
    from .. import models

    try:
        fs = load(config.output)
    except FeatpipeError:
        return ()
    if not config.model or (fs.meta.get("model"), fs.meta.get("weights")) != (models.resolve(config.model).name,
                                                                               config.weights):
        return ()
    return tuple(name for name in fs.layers if name not in config.layers)


def _report(config: FitConfig, fit_ran: bool):
    """The fit's HTML report, where the pipeline asks for one: after a fit, or where a skipped fit's folder has
    none yet (``report`` added to a finished pipeline, or the report deleted); else None."""
    if config.report is None:
        return None
    from ..report import from_fit
    from ..report.page import PAGE

    if not fit_ran and (Path(config.report) / PAGE).is_file():
        return None
    return from_fit(config)
