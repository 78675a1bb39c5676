"""A pipeline's keys, generated from the config dataclasses: each table's keys are its command's options.

A key is the field's command-line option as its settings group spells it (``Group.option``: ``layers`` is
``--layer``, so the key is ``layer``), without ``--`` and with ``-`` as ``_``; the types a key accepts come from
the field's annotation; a field whose annotation holds ``Path`` is a path, relative to the pipeline file
(``PATHS`` names the few paths typed as ``str``, because they may be URLs). A field with no key is in
``EXCLUDED``, with why. The field's own name, where it differs from its key (``layers``, ``classifiers``,
extract's ``augment``, guide's ``cv``), is the key of the previous release: still read, with one deprecation line.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
import types
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path

from .. import remote
from ..errors import FeatpipeError, UsageError
from ..settings import EXTRACT, FINETUNE, FIT, GUIDE, HEAD, Group, renamed_note

STAGES = ("guide", "extract", "fit", "finetune")  # the order they run in (see featpipe/pipeline/__init__.py)

# Fields with no key, and why (tests/test_pipeline_schema.py holds every field to a key or a line here).
EXCLUDED = {
    "extract": {
        "storage_options": "fsspec credentials do not belong in a file that is shared and kept: use fsspec's "
                           "configuration or the environment",
        "max_pixels": "no command-line option: the decompression-bomb limit is the library's",
    },
    "fit": {
        "features": "the features are [extract]'s output",
        "head": "its fields (HeadSettings: lr, optimizer, ...) are keys of [fit] themselves",
    },
    "guide": {},
    "finetune": {},
}
# Paths typed as str (they may be URLs or patterns, which stay as they are): resolved against the file too.
# ``weights`` is a checkpoint's path unless it names weights (models.load_model's "pretrained" or "random").
PATHS = {"extract": ("shard_dir", "weights"), "guide": ("weights",), "finetune": ("weights",)}
NOT_PATHS = ("pretrained", "random")
# Keys of a stage that are no config field: where the stage writes, beside its config.
STAGE_KEYS = {"guide": {"output": (str,), "report": (str,)}, "finetune": {"report": (str,)}}
# Command-line options with no key, and why (the test holds every other option of each command to a key).
OPTIONS_WITHOUT_KEY = {
    "--quiet": "`featpipe run --quiet` silences every stage",
    "--json": "[guide] output is the guide's JSON, written to a file",
    "--storage-option": "fsspec credentials (see EXCLUDED)",
    "--sanity": "a check of the classifiers, not a fit: `featpipe fit --sanity`",
    "--in-memory": "the off switch of fit's --stream: stream = false",
}
STAGE_PATHS = ("output", "report")
REQUIRED = {"extract": ("input", "output", "model"), "fit": ("output",), "guide": ("output",), "finetune": ("output",)}
# Tables whose keys were field names before the keys followed the options: the old names still read, for a release.
RENAMED_FROM_FIELDS = ("extract", "fit", "guide")


class DeprecatedKey(FutureWarning):
    """A key of the previous release, read: its message names the file, the line and the key to use instead."""


@dataclass(frozen=True)
class Key:
    """One key of a table: the field it sets (``into``: "config", "head" for FitConfig.head, "stage")."""

    name: str
    field: str
    types: tuple[type, ...]
    path: type | None = None  # Path, or str for a path typed as str (PATHS): a relative one is the file's
    into: str = "config"
    group: Group | None = None


def key_of(group: Group, field: str) -> str:
    """The pipeline key of ``field``: its command-line option without ``--``, ``-`` as ``_``."""
    return group.option(field).removeprefix("--").replace("-", "_")


def _toml_types(owner: str, name: str, hint) -> tuple[tuple[type, ...], bool]:
    """The TOML types a field of annotation ``hint`` accepts, and whether it is a path."""
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    members = [m for m in (typing.get_args(hint) if union else (hint,)) if m is not type(None)]
    accepted: list[type] = []
    for m in members:
        if m is Path:
            accepted.append(str)
        elif typing.get_origin(m) is tuple:
            accepted.append(list)
        elif m in (str, int, float, bool):
            accepted.append(m)
        else:
            raise TypeError(f"{owner}.{name} ({hint}) has no form in a pipeline: give it one here, or exclude it")
    return tuple(dict.fromkeys(accepted)), Path in members


def _config_keys(section: str, cls: type, group: Group, into: str = "config") -> dict[str, Key]:
    hints = typing.get_type_hints(cls)
    keys = {}
    for f in dataclasses.fields(cls):
        if f.name in EXCLUDED[section]:
            continue
        accepted, path = _toml_types(cls.__name__, f.name, hints[f.name])
        kind = Path if path else str if f.name in PATHS.get(section, ()) else None
        key = Key(key_of(group, f.name), f.name, accepted, kind, into, group)
        keys[key.name] = key
    return keys


@dataclass(frozen=True)
class Table:
    """The schema of one table: its keys, and the old spellings still read (old: new)."""

    section: str
    keys: dict[str, Key]
    deprecated: dict[str, str]

    def key_for(self, group: str, field: str) -> str | None:
        """The key of ``group``'s ``field`` in this table, or None where it has none."""
        return next((k.name for k in self.keys.values() if k.group and k.group.name == group and k.field == field),
                    None)


@functools.cache  # the dataclasses and groups are fixed once imported
def table(section: str) -> Table:
    """The schema of ``[section]``, from its config dataclass and settings group."""
    from ..classify import FitConfig, HeadSettings
    from ..extraction.config import ExtractConfig
    from ..finetune.config import FinetuneConfig
    from ..guide.config import GuideConfig

    if section == "extract":
        keys = _config_keys(section, ExtractConfig, EXTRACT)
    elif section == "fit":
        keys = {**_config_keys(section, FitConfig, FIT), **_config_keys(section, HeadSettings, HEAD, "head")}
    elif section == "guide":
        keys = _config_keys(section, GuideConfig, GUIDE)
    else:
        keys = _config_keys(section, FinetuneConfig, FINETUNE)
    for name, accepted in STAGE_KEYS.get(section, {}).items():
        keys[name] = Key(name, name, accepted, Path if name in STAGE_PATHS else None, "stage")
    old = {k.field: k.name for k in keys.values() if k.field != k.name and k.into != "stage"} \
        if section in RENAMED_FROM_FIELDS else {}
    return Table(section, keys, old)


# --- reading a table ---------------------------------------------------------------------------------------


def line_of(text: str, section: str, *keys: str | None) -> int:
    """The line of the first of ``keys`` found in ``[section]`` (or of the section header). tomllib gives no
    positions, so the source is scanned: the first ``key =`` after the ``[section]`` header, before the next."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(rf"\s*\[{re.escape(section)}\]", line)), None)
    if start is None:
        return 1
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"\s*\[", lines[i])), len(lines))
    for key in keys:
        for i in range(start + 1, end) if key else ():
            if re.match(rf"\s*[\"']?{re.escape(key)}[\"']?\s*=", lines[i]):
                return i + 1
    return start + 1


def error_at(where: Path, text: str, section: str, key: str | None, message: str,
             error: type[FeatpipeError] = UsageError) -> FeatpipeError:
    """Every error of a pipeline file, placed at its line: 'x.toml:12: fit.epochs must be an integer ...'.
    ``key`` may be either spelling of a renamed key: the line is where the file has it."""
    old = {new: old for old, new in table(section).deprecated.items()}.get(key) if section in STAGES else None
    return error(f"{where}:{line_of(text, section, key, old)}: {message}")


_TYPE_WORDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list of strings"}


def _accepts(types_: tuple[type, ...], value) -> bool:
    if isinstance(value, bool):
        return bool in types_
    if isinstance(value, list):
        return list in types_ and all(isinstance(v, str) for v in value)
    return any(isinstance(value, t) for t in types_) or (float in types_ and isinstance(value, int))


def read(doc: dict, text: str, where: Path, section: str) -> dict[str, dict]:
    """``[section]`` of ``doc``, checked against its schema: {"config": {field: value}, "head": ..., "stage": ...},
    lists as tuples, paths resolved against the file. A key of the previous release warns (DeprecatedKey) with
    its line.

    Raises:
        UsageError: not a table, an unknown key, a value of the wrong type, a required key missing; with its line.
    """
    schema = table(section)
    values = doc.get(section)
    if not isinstance(values, dict):
        raise error_at(where, text, section, None, f"[{section}] must be a table of settings")
    out: dict[str, dict] = {"config": {}, "head": {}, "stage": {}}
    for written, value in values.items():
        name = schema.deprecated.get(written, written)
        if name not in schema.keys:
            raise error_at(where, text, section, written,
                           f"unknown key {written!r} in [{section}]; known: {', '.join(schema.keys)}")
        if name != written:
            if name in values:
                raise error_at(where, text, section, written, f"{section}.{written} and {section}.{name} are one "
                               f"setting; keep {section}.{name}")
            warnings.warn(f"{where}:{line_of(text, section, written)}: "
                          + renamed_note(f"{section}.{written}", f"{section}.{name}"), DeprecatedKey, stacklevel=3)
        key = schema.keys[name]
        if not _accepts(key.types, value):
            want = " or ".join(_TYPE_WORDS[t] for t in key.types)
            raise error_at(where, text, section, written, f"{section}.{name} must be {want}, got {value!r}")
        if isinstance(value, list):
            value = tuple(value)
        elif key.path and not remote.is_url(value) and value not in NOT_PATHS:  # URLs (s3://bucket/images,
            value = key.path(os.path.normpath(where.parent / value))  # shards/{0..9}.tar) stay as they are
        out[key.into][key.field] = value
    given = {k.name for k in schema.keys.values() if k.field in out[k.into]}
    missing = [k for k in REQUIRED[section] if k not in given]
    if missing:
        raise error_at(where, text, section, None, f"[{section}] needs {', '.join(missing)}")
    return out
