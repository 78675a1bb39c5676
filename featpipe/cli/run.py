"""`featpipe run PIPELINE.toml`: extract and fit from one file, skipping finished stages."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..pipeline import load_pipeline, run_pipeline
from . import app, user_errors
from .classify import print_fit
from .extract import print_summary, with_progress


@app.command("run")
@user_errors
def run_command(
    pipeline: Annotated[Path, typer.Argument(help="A pipeline file (TOML), e.g. pipelines/digits.toml.")],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Run a whole job from a pipeline file: extract, then fit; stages already complete are skipped."""
    p = load_pipeline(pipeline)
    result = with_progress(lambda progress: run_pipeline(p, progress), quiet)
    print_summary(result.extract, Console(soft_wrap=True))
    if p.fit is None:
        return
    if result.fit_skipped:
        typer.echo(f"{p.fit.output} is up to date with these features and settings: nothing to fit")
    else:
        print_fit(result.fit)
    if result.report is not None:
        from .report import say_written

        say_written(result.report)
