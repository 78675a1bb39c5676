"""Reading a pipeline file: its tables against the schema, each stage's settings checked, before any work starts."""
from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..classify import FitConfig, HeadSettings
from ..errors import UsageError
from ..extraction import ExtractConfig
from ..settings import EXTRACT, FIT, SettingError
from . import guide as guide_stage
from . import schema
from .finetune import FinetuneStage, finetune_stage


@dataclass(frozen=True)
class Pipeline:
    path: Path
    extract: ExtractConfig  # its layers may name guide.ADVISED, resolved when the guide has run
    fit: FitConfig | None
    guide: guide_stage.GuideStage | None = None
    finetune: FinetuneStage | None = None
    text: str = field(default="", repr=False)  # the file's source, for errors found while running, at their line

    @contextmanager
    def placed(self, section: str) -> Iterator[None]:
        """A UsageError raised inside, told at its line of ``[section]``."""
        with placed(self.path, self.text, section):
            yield


@contextmanager
def placed(where: Path, text: str, section: str) -> Iterator[None]:
    """A library error raised inside, told as the pipeline names it: a SettingError with each field called by its
    key (``extract.batch_size``), at the line of the first it names (the section's, where the file leaves it
    out); another UsageError at the section's line."""
    try:
        yield
    except SettingError as exc:
        table = schema.table(section)
        key = table.key_for(exc.group, exc.field)
        if key is None:  # a setting the stage passed on to another (the guide's extraction): its Python name
            raise schema.error_at(where, text, section, None, str(exc)) from None
        group = exc.group
        message = exc.told_as(lambda f: f"{section}.{table.key_for(group, f) or f}")
        raise schema.error_at(where, text, section, key, message) from None
    except UsageError as exc:
        if str(exc).startswith(f"{where}:"):  # placed already
            raise
        raise schema.error_at(where, text, section, None, str(exc), type(exc)) from None


def load_pipeline(path: str | os.PathLike) -> Pipeline:
    """Read and check a pipeline file: its keys, their types and their values (with the checks each stage makes
    of its settings), before any work starts. A key of the previous release warns (schema.DeprecatedKey).

    Raises:
        UsageError: a missing file, invalid TOML, or a bad key or value (with its line).
    """
    where = Path(path)
    if not where.is_file():
        raise UsageError(f"pipeline {str(where)!r} does not exist; see pipelines/ for ready-made ones")
    text = where.read_text()
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{where}: invalid TOML: {exc}") from None
    unknown = [k for k in doc if k not in schema.STAGES]
    if unknown:
        raise schema.error_at(where, text, unknown[0], None, f"unknown section [{unknown[0]}]; use "
                              f"{', '.join(f'[{s}]' for s in schema.STAGES)}")
    tables = {}
    for section in schema.STAGES:  # a loop, not a comprehension: a deprecation's stacklevel names the caller
        if section in doc or section == "extract":
            tables[section] = schema.read(doc, text, where, section)
    with placed(where, text, "extract"):
        extract_config = ExtractConfig(**tables["extract"]["config"])  # each config checks itself when made
    fit_config = None
    if "fit" in tables:
        with placed(where, text, "fit"):
            fit_config = FitConfig(features=extract_config.output, **tables["fit"]["config"],
                                   head=HeadSettings(**tables["fit"]["head"]))
    guide = finetune = None
    if "guide" in tables:
        with placed(where, text, "guide"):
            guide = guide_stage.guide_stage(tables["guide"], extract_config)
    if "finetune" in tables:
        with placed(where, text, "finetune"):
            finetune = finetune_stage(tables["finetune"], extract_config)
    _check_advice_asked(where, text, extract_config, fit_config, guide)
    return Pipeline(where, extract_config, fit_config, guide, finetune, text)


def _check_advice_asked(where: Path, text: str, extract: ExtractConfig, fit: FitConfig | None, guide) -> None:
    """Where [extract] layer or [fit] layer names the guide's advice, the pipeline has a [guide] to give it."""
    for section, key, asks in (("extract", schema.key_of(EXTRACT, "layers"), guide_stage.ADVISED in extract.layers),
                               ("fit", schema.key_of(FIT, "layer"), fit is not None and fit.layer == guide_stage.ADVISED)):
        if asks and guide is None:
            raise schema.error_at(where, text, section, key,
                                  f'{section}.{key} names "{guide_stage.ADVISED}", the guide\'s advice, but the '
                                  'pipeline has no [guide] table to advise it; add one (output = "guide.json"), or '
                                  'name the layer')
