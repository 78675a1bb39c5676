"""What several commands share: their options' choices, generated from the library's lists."""
from __future__ import annotations

from collections.abc import Iterable
from enum import Enum


def choices(name: str, values: Iterable[str]) -> type[Enum]:
    """An option's choices as the Enum Typer wants, from one of ``featpipe.settings``' lists (never a copy)."""
    return Enum(name, {value: value for value in values}, type=str)
