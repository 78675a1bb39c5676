"""`featpipe run PIPELINE.toml`: the guide, extract and fit from one file, skipping finished stages."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..pipeline import load_pipeline, run_pipeline
from ..pipeline_guide import ADVISED, GuideOutcome, fit_follows
from . import app, user_errors
from .classify import print_fit
from .extract import print_summary, with_progress


@app.command("run")
@user_errors
def run_command(
    pipeline: Annotated[Path, typer.Argument(help="A pipeline file (TOML), e.g. pipelines/digits.toml.")],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Run a whole job from a pipeline file: the guide, extract, then fit; stages already complete are skipped."""
    p = load_pipeline(pipeline)
    result = with_progress(lambda progress: run_pipeline(p, progress), quiet)
    if result.guide is not None:
        print_guide(result.guide)
    print_summary(result.extract, Console(soft_wrap=True))
    if result.advised:
        follows = p.fit is not None and fit_follows(p.extract.layers, p.fit.layer)
        typer.echo(f'"{ADVISED}" in extract.layers: {", ".join(result.advised)}, the guide\'s recommended layer'
                   + (" (the fit learns from it)" if follows else ""))
    if result.replaced:
        typer.echo(f"the guide's advice has changed: {result.extract.output} held {', '.join(result.replaced)}, "
                   "and was extracted again")
    if p.fit is not None:
        if result.fit_skipped:
            typer.echo(f"{p.fit.output} is up to date with these features and settings: nothing to fit")
        else:
            print_fit(result.fit)
        if result.report is not None:
            from .report import say_written

            say_written(result.report)
    if result.guide is not None and result.guide.finetune_commands:
        # Last, so that the step the guide measured to pay is the line a reader is left with.
        typer.echo(f"\nthe guide advises fine-tuning ({result.guide.doc['strategy_text']}); the fit above is the "
                   "frozen-feature baseline it should beat. Next:")
        typer.echo(result.guide.finetune_commands[-1])


def print_guide(outcome: GuideOutcome) -> None:
    """The guide's advice as `featpipe guide` prints it; where its kept result was reused, the advice and the
    next commands from its file."""
    if not outcome.reused:
        from .guide import render

        typer.echo(render(outcome.result))
        typer.echo(f"guide: {outcome.output}\n")
        return
    doc = outcome.doc
    typer.echo(f"{outcome.output} is up to date with these images and settings: the guide's advice, kept")
    typer.echo(f"quadrant: {doc['quadrant']}")
    typer.echo(f"advice:   {doc['strategy_text']}" + (f" ({doc['recommended_layer']})"
                                                       if doc["strategy"] != "can't tell" else ""))
    typer.echo("\n".join(["next:", *(f"  {c}" for c in doc["commands"])]) + "\n")
