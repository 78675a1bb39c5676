"""The command line: one module per command, each a thin layer over the library.

Library code raises :class:`~featpipe.errors.FeatpipeError`; this layer prints
its one-line message to stderr and exits with its code (2 bad arguments, 1
failures). Results go to stdout, progress and messages to stderr.
"""
from __future__ import annotations

import functools
import gc
import importlib
import logging
import os
import sys
from collections.abc import Callable

import typer
import typer.core
import typer.main

from ..errors import FeatpipeError

# The parser's own errors (bad option values, missing options, unknown commands) are click's ClickException,
# which lives in click (older typer), in typer's own copy of click (0.26 on), and there as a subclass of
# typer.exceptions.TyperException (0.28 on): found by name, it is the right class in every typer
# pyproject.toml allows (`make test-min` runs the lowest).
ParseError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

# Every command, in the order --help lists them (the flow): its module here, and the first line
# of its docstring. `featpipe --help` lists them from this table, and `featpipe CMD` imports only
# CMD's module, so neither pays for torch, Dask or scikit-learn unless the command uses them.
# tests/test_start.py checks the table against the commands.
COMMANDS = {
    "extract": ("extract", "Extract CNN features of every image into one HDF5 file (resumable)."),
    "info": ("info", "Summarise a feature file: model, preprocessing, layers, samples, classes, failures."),
    "models": ("models", "List models with their feature dimension and whether pretrained weights are on disk."),
    "layers": ("models", "List the layers of MODEL that --layer accepts, with their output shape and feature dimension."),
    "guide": ("guide", "Measure where your data sits in the transfer-learning 2x2 table, and say what to do."),
    "finetune": ("finetune", "Fine-tune a pretrained CNN on your images: a linear probe first, then the top stages (LP-FT)."),
    "fit": ("classify", "Train classifiers on cached features, choose one on training rows only, report it on the "
            "test rows, save it."),
    "evaluate": ("classify", "Metrics of a saved model on a labelled feature file (classes matched by name)."),
    "predict": ("classify", "Predict the class of every image: from a feature file, or from images (extracted with "
                "the model's extractor)."),
    "lr-find": ("classify", "The learning-rate range test for a head: plot the loss as the rate grows, suggest a rate."),
    "report": ("report", "Write the HTML report of a fit: mistakes, confused pairs, likely label errors, a map (no "
               "refit)."),
    "run": ("run", "Run a whole job from a pipeline file: the guide, extract, fit, then finetune; stages already complete are skipped."),
}


class _Listed(typer.core.TyperCommand):
    """A command not imported yet: enough for --help's list; replaced by the real one when it runs."""


class _Commands(typer.core.TyperGroup):
    """The command group, importing each command's module only when that command runs."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name, (_, text) in COMMANDS.items():
            self.commands.setdefault(name, _Listed(name=name, help=text, short_help=text))

    def list_commands(self, ctx) -> list[str]:
        return list(COMMANDS) + [n for n in self.commands if n not in COMMANDS]

    def resolve_command(self, ctx, args):
        name, command, rest = super().resolve_command(ctx, args)
        if isinstance(command, _Listed):
            command = self.commands[name] = load_command(name)
        return name, command, rest


def load_command(name: str):
    """The click command ``name``, its module imported."""
    importlib.import_module(f".{COMMANDS[name][0]}", __name__)
    info = next(c for c in app.registered_commands if (c.name or c.callback.__name__) == name)
    return typer.main.get_command_from_info(
        info, pretty_exceptions_short=app.pretty_exceptions_short, rich_markup_mode=app.rich_markup_mode
    )


app = typer.Typer(
    name="featpipe",
    cls=_Commands,
    help="Cache CNN features of an image folder to HDF5, crash-safe and Dask-parallel.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def user_errors(command: Callable) -> Callable:
    """Turn FeatpipeError into a one-line message and an exit code; no traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except FeatpipeError as exc:
            typer.secho(f"error: {_told_here(exc)}", fg=typer.colors.RED, err=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def _told_here(exc: FeatpipeError) -> str:
    """The message, with settings named by this command's options (--batch-size) where it has them all;
    else by their Python names (ExtractConfig.batch_size): an error from settings the command does not set."""
    from ..settings import SettingError

    if isinstance(exc, SettingError):
        ctx = click_context()
        options = {opt for p in ctx.command.params for opt in p.opts} if ctx is not None else set()
        if set(exc.options.values()) <= options:
            return exc.told_by_option()
    return str(exc)


def click_context():
    """The running command's click context, or None outside a command; from click, or from typer's own copy of
    click (0.26 on), wherever typer.Context's base class lives."""
    package = typer.Context.__mro__[1].__module__.rsplit(".", 1)[0]
    return importlib.import_module(f"{package}.globals").get_current_context(silent=True)


@app.callback()
def _setup(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what the library does."),
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        # Dask's start-up chatter is noise on a command line. Its loggers are
        # configured when distributed is imported (on first use), from dask's
        # configuration, which dask reads from the environment when it is imported.
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
        if "dask" in sys.modules:  # imported already, so it read its environment before this line
            sys.modules["dask"].config.set({"logging.distributed": "error"})


def main() -> None:
    """Entry point: the command-line parser's own errors get featpipe's one-line form too."""
    try:
        _main()
    finally:
        # The process ends here. The interpreter's last garbage collection would walk every object
        # left, torch's, timm's and sympy's included: about 2 s of CPU and wall time after
        # `import torch, timm` on a 2-core machine, for nothing. Frozen objects are left out of it;
        # atexit handlers, stream flushes and reference-count finalisers still run, and every file
        # a command writes it has closed by now.
        gc.freeze()


def _main() -> None:
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        typer.echo("aborted", err=True)
        raise SystemExit(130) from None
    except ParseError as exc:  # bad option values, missing options, unknown commands
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if not message:  # no arguments at all: the help was shown
            raise SystemExit(getattr(exc, "exit_code", 2)) from None
        command = _command()
        typer.secho(f"error: {message.rstrip('.')}; see `featpipe {command + ' ' if command else ''}--help`",
                    fg=typer.colors.RED, err=True)
        raise SystemExit(getattr(exc, "exit_code", 2)) from None
    raise SystemExit(code if isinstance(code, int) else 0)


def _command() -> str:
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    return args[0] if args and args[0] in COMMANDS else ""
