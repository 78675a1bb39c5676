"""What the commands share, written once: the options that mean the same in every command (``-o/--output``,
``--device``, ``--batch-size``, ``--seed``, ``--quiet/-q``, ``--report``, ``--json``), list options and their
one parser, the old spellings of renamed options, the choices generated from the library's lists, progress on
stderr, Ctrl-C during an extraction, and the line that says where a report went.

An option's spelling is decided here (or, for a setting the library checks, in ``featpipe/settings.py``'s
``options`` maps, which this spelling must match: ``tests/test_settings.py``); what it means to one command
(which file ``--output`` writes, what ``--seed`` seeds) is that command's help text.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import signal
import sys
from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import typer
import typer.core
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..settings import BACKENDS, OPTIMIZERS, SCHEDULES, renamed_note

T = TypeVar("T")

# -- The shared options. Each returns a new typer.Option for an Annotated parameter:
#    `output: Annotated[Path, output("Feature file to write (HDF5).")]`.

DEVICE_HELP = "auto, cpu, cuda or cuda:N."


def output(help: str) -> Any:
    """``-o/--output``: what the command writes."""
    return typer.Option("--output", "-o", help=help)


def device(help: str = DEVICE_HELP) -> Any:
    """``--device``: where the network runs."""
    return typer.Option("--device", help=help)


def batch_size(help: str, **kwargs) -> Any:
    """``--batch-size``: images (or rows) per step."""
    return typer.Option("--batch-size", help=help, **kwargs)


def backend() -> Any:
    """``--backend``: what runs the forward pass on the CPU (extraction/backends.py)."""
    return typer.Option("--backend", help="What runs the forward pass on the CPU: openvino (converted once, cached; "
                        "featpipe[cpu]), torch, or auto (openvino where installed and worth converting, else torch).")


def seed(help: str) -> Any:
    """``--seed``: what it seeds, in the command's words."""
    return typer.Option("--seed", help=help)


def quiet() -> Any:
    """``--quiet/-q``: no progress output on stderr (results and warnings still print)."""
    return typer.Option("--quiet", "-q", help="No progress output.")


def report(help: str) -> Any:
    """``--report DIR``: the HTML report and the files it is made of."""
    return typer.Option("--report", help=help, show_default=False)


def json_output(help: str = "Print the result as JSON on stdout.") -> Any:
    """``--json``: the result as JSON on stdout instead of text."""
    return typer.Option("--json", help=help)


# -- List options: every one accepts repetition and a comma-separated list (`--layer a --layer b` is
#    `--layer a,b`), through one parser.

def list_option(name: str, *short: str, help: str, **kwargs) -> Any:
    """A list option (``list[str]``), its help saying how to give several; read it with :func:`listed`."""
    return typer.Option(name, *short, help=f"{help} Repeat it or separate with commas for several.", **kwargs)


def listed(values: Iterable[str] | None) -> tuple[str, ...]:
    """A list option's values, repeated, comma-separated or both, in the order given: ``['a,b', 'c']`` ->
    ``('a', 'b', 'c')``; blanks are dropped."""
    return tuple(part.strip() for value in values or () for part in value.split(",") if part.strip())


# -- Renamed options: the old spelling works for one more release, with a note on stderr each time.

def deprecation_note(old: str, new: str) -> str:
    """The one line said when an old spelling is used."""
    return f"featpipe: {renamed_note(old, new)}"


def respell(args: list[str], renamed: Mapping[str, str], takes_value: Callable[[str], bool],
            say: Callable[[str], None]) -> list[str]:
    """``args`` with each old spelling of ``renamed`` (old -> new) replaced by the new one (``--val-size=0``
    too), saying the note once per old spelling used. Option values are passed over (``--model --cv`` keeps its
    value), and so is everything after ``--``."""
    out: list[str] = []
    noted: set[str] = set()
    tokens = iter(args)
    for token in tokens:
        if token == "--":
            out += [token, *tokens]
            break
        name, eq, value = token.partition("=")
        if name in renamed:
            if name not in noted:
                say(deprecation_note(name, renamed[name]))
                noted.add(name)
            name = renamed[name]
            token = name + eq + value
        out.append(token)
        if not eq and takes_value(name):
            out += list(itertools.islice(tokens, 1))  # its value, whatever it looks like
    return out


class _Respelled(typer.core.TyperCommand):
    """A command that still accepts the old spellings in ``renamed``."""

    renamed: Mapping[str, str] = {}

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        with_value = {opt for p in self.params if p.param_type_name == "option"
                      and not getattr(p, "is_flag", False) and not getattr(p, "count", False) for opt in p.opts}
        args = respell(list(args), self.renamed, with_value.__contains__, lambda line: typer.echo(line, err=True))
        return super().parse_args(ctx, args)


def renamed(spellings: Mapping[str, str]) -> type[typer.core.TyperCommand]:
    """The command class (``app.command(cls=...)``) that accepts each old spelling (old -> new) with its note."""
    return type("Respelled", (_Respelled,), {"renamed": dict(spellings)})


# -- Choices, generated from the library's lists (featpipe/settings.py), never a copy.

def choices(name: str, values: Iterable[str]) -> type[Enum]:
    """An option's choices as the Enum Typer wants, from one of ``featpipe.settings``' lists (never a copy)."""
    return Enum(name, {value: value for value in values}, type=str)


# The optimizers and schedules of fit's heads, lr-find and finetune: one list each.
Backend = choices("Backend", BACKENDS)
Optimizer = choices("Optimizer", OPTIMIZERS)
Schedule = choices("Schedule", SCHEDULES)


# -- Progress on stderr.

def with_progress(job: Callable[[Any], T], quiet: bool, description: str = "extract") -> T:
    """Run ``job(progress)`` with a progress bar on stderr (images/s, ETA), or ``job(None)`` when ``quiet``.

    ``progress(done, total, description=None)``: a new description starts a new count (another model, say).
    """
    if quiet:
        return job(None)
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    # Started on the first report, so errors found while setting up print alone.
    bar = Progress(*columns, console=Console(stderr=True))
    task = bar.add_task(description, total=None, rate="")

    def on_progress(done: int, total: int, description: str | None = None) -> None:
        nonlocal task
        if description is not None and description != bar.tasks[task].description:
            if bar.tasks[task].total is None:  # nothing counted yet: rename it
                bar.update(task, description=description)
            else:
                task = bar.add_task(description, total=total, rate="")
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=done, total=total)
        speed = bar.tasks[task].speed
        bar.update(task, rate=f"{speed:.1f} img/s" if speed else "")

    try:
        return job(on_progress)
    finally:
        if bar.live.is_started:
            bar.stop()


def while_working(job: Callable[[], T], quiet: bool, description: str) -> T:
    """Run ``job()`` under a line on stderr that says what runs and for how long, or silently when ``quiet``:
    progress for work the library does not count. On a terminal only, and gone when the job ends: it would
    say nothing in a log file, and an error prints alone."""
    console = Console(stderr=True)
    if quiet or not console.is_terminal:
        return job()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True) as bar:
        bar.add_task(description, total=None)
        return job()


# -- Ctrl-C during an extraction (extract, and any command that runs one).

@contextlib.contextmanager
def interrupt_says_how_to_resume(output: Path, command: str = "the same command", shard_dir: str | None = None):
    """Ctrl-C ends at once with one line: what is kept and how to resume.

    Finished partitions are already on disk, each complete under its final name; waiting for the
    partitions in flight (or a Dask client's shutdown) would only delay the exit, so the process
    leaves without unwinding: the OS releases the lock, and the next run cleans up temporary files.
    """
    from ..extraction.parts import PartStore
    from ..remote import is_url

    parts = PartStore.location_for(Path(output).expanduser().absolute(), shard_dir)

    def leave(signum, frame) -> None:
        if is_url(parts):
            what = "finished partitions"  # not listed: a network call must not hold up Ctrl-C
        else:
            kept = sum(name.startswith("part-") for name in PartStore(parts).names())
            what = f"{kept} finished partition{'s' if kept != 1 else ''}"
        tty = "\x1b[?25h\n" if sys.stderr.isatty() else ""  # after a progress bar, which may have hidden the cursor
        sys.stderr.write(f"{tty}interrupted: {what} kept in {parts!r}; run {command} again to resume\n")
        sys.stderr.flush()
        os._exit(130)

    previous = signal.signal(signal.SIGINT, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# -- What every command says after writing a report.

def say_written(report) -> None:
    """The line every command prints after writing an HTML report."""
    typer.echo(f"report: {report.path} ({report.bytes / 1e6:.1f} MB with its images, {report.seconds:.1f} s; "
               f"{report.mistakes} mistakes, {report.label_issues} likely label errors)", err=True)


def say_files(paths: Iterable) -> None:
    """The line for a report's other files (plots, JSON)."""
    typer.echo(f"report: {', '.join(str(p) for p in paths)}", err=True)
