"""The command line: one module per command, each a thin layer over the library.

Library code raises :class:`~featpipe.errors.FeatpipeError`; this layer prints
its one-line message to stderr and exits with its code (2 bad arguments, 1
failures). Results go to stdout, progress and messages to stderr.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable

import typer

from ..errors import FeatpipeError

app = typer.Typer(
    name="featpipe",
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
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


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


# Registers the commands, in the order --help lists them: the flow.
from . import extract as _extract  # noqa: E402,F401,I001
from . import info as _info  # noqa: E402,F401
from . import models as _models  # noqa: E402,F401
from . import guide as _guide  # noqa: E402,F401
from . import classify as _classify  # noqa: E402,F401
from . import run as _run  # noqa: E402,F401


def main() -> None:
    """Entry point: the command-line parser's own errors get featpipe's one-line form too."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        typer.echo("aborted", err=True)
        raise SystemExit(130) from None
    except typer.exceptions.TyperException as exc:  # bad option values, missing options, unknown commands
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
    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    return args[0] if args and args[0] in names else ""
