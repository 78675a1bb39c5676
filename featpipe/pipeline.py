"""Pipelines: a whole job (the guide, extract, then fit) from one TOML file.

    [guide]                        # the settings of `featpipe guide` (optional; see pipeline_guide.py)
    output = "../out/guide.json"

    [extract]                      # the settings of `featpipe extract`
    input = "../data/digits"       # paths are relative to the TOML file
    output = "../out/digits.h5"
    model = "tf_efficientnet_lite0"
    layers = ["guide"]             # the guide's recommended layer (the fit learns from it too)

    [fit]                          # the settings of `featpipe fit` (optional)
    output = "../out/digits.skops"
    classifiers = ["logreg", "svm"]

A stage whose output is already complete is skipped: the guide when its result
file was measured on these very images with these very settings, extraction by
its own resume logic, fitting when the model file was trained on these very
features with these very settings. The fit's ``report`` folder gets the HTML report
(``index.html``) whenever the fit runs, and when the fit is skipped but the
folder has no report yet (no refit: the saved model is judged). A bad key or
value is reported with its line.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import identity, pipeline_guide, remote
from .classify import FitConfig, FitResult, fit, load_model
from .classify.fit import HeadSettings
from .errors import FeatpipeError, RunConflictError, UsageError
from .extraction import ExtractConfig, ExtractSummary, extract
from .settings import SettingError
from .store import load

# key: (accepted types, is a path)
_EXTRACT_KEYS = {
    "input": (str, True), "output": (str, True), "model": (str, False), "weights": (str, False),
    "layers": (list, False), "pool": (str, False), "batch_size": ((int, str), False), "device": (str, False),
    "precision": (str, False), "backend": (str, False), "dtype": (str, False), "resampler": (str, False), "decode": (str, False), "seed": (int, False), "max_failures": ((int, float), False),
    "partition_size": (int, False), "streams": (int, False), "decode_threads": (int, False), "devices": (str, False),
    "scheduler": (str, False), "overwrite": (bool, False), "verify_content": (bool, False),
    "retry_failed": (bool, False), "tta": (str, False), "augment": (int, False), "augment_strength": (str, False),
    "flip": (bool, False), "label_key": (str, False),
}
_FIT_KEYS = {
    "output": (str, True), "classifiers": (list, False), "layer": (str, False), "test_size": (float, False),
    "test": (str, True), "seed": (int, False), "keep_all": (bool, False), "report": (str, True),
    "cv": (int, False), "search": (int, False), "stream": (bool, False), "validation_size": (float, False),
    "use_augmented": (bool, False),
    # the PyTorch heads' training, as `fit --lr --optimizer --schedule --epochs --batch-size --weight-decay`
    "lr": (float, False), "optimizer": (str, False), "schedule": (str, False), "epochs": (int, False),
    "batch_size": (int, False), "weight_decay": (float, False),
}
_HEAD_KEYS = ("lr", "optimizer", "schedule", "epochs", "batch_size", "weight_decay")
_REQUIRED = {"extract": ("input", "output", "model"), "fit": ("output",), "guide": ("output",)}
_SECTIONS = ("guide", "extract", "fit")


@dataclass(frozen=True)
class Pipeline:
    path: Path
    extract: ExtractConfig  # its layers may name pipeline_guide.ADVISED, resolved when the guide has run
    fit: FitConfig | None
    guide: pipeline_guide.GuideStage | None = None
    text: str = field(default="", repr=False)  # the file's source, for errors found while running, at their line


def _line_of(text: str, section: str, key: str | None) -> int:
    """The line of ``key`` in ``[section]`` (or of the section header). tomllib gives no positions, so
    the source is scanned: the first ``key =`` after the ``[section]`` header, before the next header."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(rf"\s*\[{re.escape(section)}\]", line)), None)
    if start is None or key is None:
        return (start or 0) + 1
    for i in range(start + 1, len(lines)):
        if re.match(r"\s*\[", lines[i]):
            break
        if re.match(rf"\s*[\"']?{re.escape(key)}[\"']?\s*=", lines[i]):
            return i + 1
    return start + 1


def _error_at(where: Path, text: str, section: str, key: str | None, message: str,
              error: type[FeatpipeError] = UsageError) -> FeatpipeError:
    """Every error of a pipeline file, placed at its line: 'x.toml:12: fit.epochs must be an integer ...'.
    The one place that turns a key (or a section, ``key=None``) into a line, for bad keys and bad values."""
    return error(f"{where}:{_line_of(text, section, key)}: {message}")


# A key whose command-line option is not --<key> (the guide's checks name the option).
_OPTION = {"layers": "--layer", "classifiers": "--classifier", "models": "--model"}


def _value_error(where: Path, text: str, section: str, keys, exc: UsageError) -> UsageError:
    """A library check's message told as the pipeline spells each setting (``extract.batch_size``), at the line
    of the setting it is about. A SettingError (featpipe/settings.py) names its fields itself; a message that
    names command-line options instead (the guide's, until its settings are declared there) has the option of
    one of ``keys`` rewritten into its key."""
    if isinstance(exc, SettingError):
        return _error_at(where, text, section, exc.field, exc.told_as(lambda name: f"{section}.{name}"))
    message = str(exc)
    for key in sorted(keys, key=len, reverse=True):  # --test-size before --test
        option = _OPTION.get(key, f"--{key.replace('_', '-')}")
        if re.search(rf"{re.escape(option)}(?![\w-])", message):
            message = re.sub(rf"{re.escape(option)}(?![\w-])", f"{section}.{key}", message)
            return _error_at(where, text, section, key, message)
    return _error_at(where, text, section, None, message)


_TYPE_WORDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list of strings"}


def _section(doc: dict, text: str, where: Path, name: str, schema: dict) -> dict:
    table = doc.get(name)
    if not isinstance(table, dict):
        raise _error_at(where, text, name, None, f"[{name}] must be a table of settings")
    out = {}
    for key, value in table.items():
        if key not in schema:
            raise _error_at(where, text, name, key, f"unknown key {key!r} in [{name}]; known: {', '.join(schema)}")
        types, is_path = schema[key]
        if isinstance(value, bool) and types is not bool:
            ok = False
        else:
            ok = isinstance(value, types) or (types is float and isinstance(value, int))
        if ok and isinstance(value, list):
            ok = all(isinstance(v, str) for v in value)
        if not ok:
            want = " or ".join(_TYPE_WORDS[t] for t in (types if isinstance(types, tuple) else (types,)))
            raise _error_at(where, text, name, key, f"{name}.{key} must be {want}, got {value!r}")
        # URLs (s3://bucket/images, shards/{0..9}.tar at a URL) stay as they are.
        out[key] = Path(os.path.normpath(where.parent / value)) if is_path and not remote.is_url(value) else value
    missing = [k for k in _REQUIRED[name] if k not in out]
    if missing:
        raise _error_at(where, text, name, None, f"[{name}] needs {', '.join(missing)}")
    return out


def load_pipeline(path: str | os.PathLike) -> Pipeline:
    """Read and check a pipeline file: its keys, their types and their values (with the checks `extract`
    and `fit` make of their options), before any work starts.

    Raises:
        UsageError: a missing file, invalid TOML, or a bad key or value (with its line).
    """
    from .classify.fit import check_config as check_fit
    from .extraction.config import check_config as check_extract

    where = Path(path)
    if not where.is_file():
        raise UsageError(f"pipeline {str(where)!r} does not exist; see pipelines/ for ready-made ones")
    text = where.read_text()
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{where}: invalid TOML: {exc}") from None
    unknown = [k for k in doc if k not in _SECTIONS]
    if unknown:
        raise _error_at(where, text, unknown[0], None,
                        f"unknown section [{unknown[0]}]; use [guide], [extract] and [fit]")
    ex = _section(doc, text, where, "extract", _EXTRACT_KEYS)
    if "layers" in ex:
        ex["layers"] = tuple(ex["layers"])
    extract_config = ExtractConfig(**ex)
    try:
        check_extract(extract_config)
    except UsageError as exc:
        raise _value_error(where, text, "extract", ex, exc) from None
    fit_config = None
    if "fit" in doc:
        ft = _section(doc, text, where, "fit", _FIT_KEYS)
        keys = list(ft)
        if "classifiers" in ft:
            ft["classifiers"] = tuple(ft["classifiers"])
        head = HeadSettings(**{k: ft.pop(k) for k in _HEAD_KEYS if k in ft})
        fit_config = FitConfig(features=extract_config.output, **ft, head=head)
        try:
            check_fit(fit_config)
        except UsageError as exc:
            raise _value_error(where, text, "fit", keys, exc) from None
    guide_stage = None
    if "guide" in doc:
        guide_stage = pipeline_guide.guide_stage(_section(doc, text, where, "guide", pipeline_guide.guide_keys()),
                                                 extract_config)
    for section, key, asks in (("extract", "layers", pipeline_guide.ADVISED in extract_config.layers),
                               ("fit", "layer", fit_config is not None and fit_config.layer == pipeline_guide.ADVISED)):
        if asks and guide_stage is None:
            raise _error_at(where, text, section, key,
                            f'{section}.{key} names "{pipeline_guide.ADVISED}", the guide\'s advice, but the pipeline '
                            'has no [guide] table to advise it; add one (output = "guide.json"), or name the layer')
    return Pipeline(where, extract_config, fit_config, guide_stage, text)


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
        mf = load_model(config.output)
    except FeatpipeError:
        return False
    return mf.fit_fingerprint == fit_fingerprint(config, config.features)


@dataclass
class PipelineResult:
    extract: ExtractSummary
    fit: FitResult | None
    fit_skipped: bool
    report: object | None = None  # featpipe.report.build.Report, where one was written
    guide: pipeline_guide.GuideOutcome | None = None  # where the pipeline has a [guide] table
    advised: tuple[str, ...] = ()  # what "guide" in [extract] layers stood for: the recommended layer(s)
    replaced: tuple[str, ...] = ()  # the layers of the guide's earlier advice, which the feature file held


def _prepare_outputs(pipeline: Pipeline) -> None:
    """Every output's folder exists (created if need be) and is writable, before any work starts."""
    outputs = [("extract.output", pipeline.extract.output, False)]  # (key, path, is a folder)
    if pipeline.guide is not None:
        outputs += [("guide.output", pipeline.guide.output, False)]
    if pipeline.fit is not None:
        outputs += [("fit.output", pipeline.fit.output, False)]
        if pipeline.fit.report is not None:
            outputs += [("fit.report", Path(pipeline.fit.report), True)]
    for key, path, folder in outputs:
        if path.is_dir() and not folder:
            raise UsageError(f"{pipeline.path}: {key} {str(path)!r} is a folder; give a file name")
        if path.is_file() and folder:
            raise UsageError(f"{pipeline.path}: {key} {str(path)!r} is a file; give a folder")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"{pipeline.path}: cannot create the folder of {key} {str(path)!r} "
                             f"({exc.strerror or exc}); choose another path") from None
        if not os.access(path.parent, os.W_OK):
            raise UsageError(f"{pipeline.path}: the folder of {key} {str(path)!r} is not writable; choose another path")


def run_pipeline(pipeline: Pipeline, progress: Callable[..., None] | None = None) -> PipelineResult:
    """Run the stages of ``pipeline`` whose outputs are not complete yet; every output path is checked
    (and its folder created) first, so a bad model path fails before a long extraction, not after it.

    ``progress(done, total)`` reports extraction; with a [guide] table, each stage's counts come with
    ``description=`` (the guide's model or phase, then "extract"), as the CLI's progress bar takes them.
    """
    _prepare_outputs(pipeline)
    outcome = None
    extract_config, fit_config = pipeline.extract, pipeline.fit
    if pipeline.guide is not None:
        outcome = _run_guide(pipeline, progress)
        extract_config, fit_config = _follow_advice(pipeline, outcome)
        if progress is not None:
            progress = functools.partial(progress, description="extract")
    advised = outcome.layers if outcome is not None and pipeline_guide.ADVISED in pipeline.extract.layers else ()
    summary, replaced = _extract(extract_config, bool(advised), progress)
    guided = {"guide": outcome, "advised": advised, "replaced": replaced}
    if fit_config is None:
        return PipelineResult(summary, None, False, **guided)
    if _fit_is_current(fit_config):
        return PipelineResult(summary, None, True, _report(fit_config, fit_ran=False), **guided)
    result = fit(fit_config, fingerprint=fit_fingerprint(fit_config, fit_config.features))
    return PipelineResult(summary, result, False, _report(fit_config, fit_ran=True), **guided)


def _run_guide(pipeline: Pipeline, progress) -> pipeline_guide.GuideOutcome:
    """The [guide] stage; a bad setting that only the guide checks gets its line in [guide]."""
    try:
        return pipeline_guide.run_guide(
            pipeline.guide, (lambda what, done, total: progress(done, total, description=what)) if progress else None)
    except UsageError as exc:
        raise _value_error(pipeline.path, pipeline.text, "guide", pipeline_guide.guide_keys(), exc) from None


def _follow_advice(pipeline: Pipeline, outcome: pipeline_guide.GuideOutcome) -> tuple[ExtractConfig, FitConfig | None]:
    """[extract] and [fit] with "guide" replaced by the guide's layer(s): the feature file stores the real
    names, and the fit learns from the advised layer (a combination is extracted whole; a fit learns from one
    layer, which [fit] then names)."""
    where, text, ex, ft = pipeline.path, pipeline.text, pipeline.extract, pipeline.fit
    if pipeline_guide.ADVISED in ex.layers:
        if not pipeline_guide.same_model(ex, outcome):
            raise _error_at(where, text, "extract", "model",
                            f"the guide chose {outcome.doc['model']}, and its layers are that model's; set "
                            f"extract.model to it, or [guide] models = [\"{ex.model}\"]")
        ex = replace(ex, layers=pipeline_guide.advised_layers(ex.layers, outcome))
    if ft is not None and pipeline_guide.fit_follows(pipeline.extract.layers, ft.layer):
        if len(outcome.layers) > 1:
            raise _error_at(where, text, "fit", "layer" if ft.layer else None,
                            f"the guide advises {'+'.join(outcome.layers)}, layers side by side, and a fit learns "
                            f"from one: name it with fit.layer ({' or '.join(outcome.layers)})")
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
    from . import models

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
    from .report import from_fit
    from .report.page import PAGE

    if not fit_ran and (Path(config.report) / PAGE).is_file():
        return None
    return from_fit(config)
