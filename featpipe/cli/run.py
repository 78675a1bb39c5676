"""`featpipe run PIPELINE.toml`: the guide, extract, fit and finetune from one file, skipping finished stages."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..pipeline import load_pipeline, run_pipeline
from ..pipeline.guide import ADVISED, GuideOutcome, fit_follows
from ..pipeline.schema import DeprecatedKey
from . import _common as common
from . import app, user_errors
from ._common import interrupt_says_how_to_resume, with_progress
from .classify import print_fit
from .extract import print_summary


@app.command("run")
@user_errors
def run_command(
    pipeline: Annotated[Path, typer.Argument(help="A pipeline file (TOML), e.g. pipelines/digits.toml.")],
    quiet: Annotated[bool, common.quiet()] = False,
) -> None:
    """Run a whole job from a pipeline file: the guide, extract, fit, then finetune; stages already complete are skipped."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeprecatedKey)
        p = load_pipeline(pipeline)
    for w in caught:  # a key of the previous release: one line each, at its line; any other warning as Python shows it
        if issubclass(w.category, DeprecatedKey):
            typer.echo(f"featpipe: {w.message}", err=True)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    def during_extract(config):  # Ctrl-C while extracting: one line, which parts are kept, and the rerun resumes
        return interrupt_says_how_to_resume(config.output, f"`featpipe run {pipeline}`", config.shard_dir)

    result = with_progress(lambda progress: run_pipeline(p, progress, during_extract=during_extract), quiet)
    if result.guide is not None:
        print_guide(result.guide)
    print_summary(result.extract, Console(soft_wrap=True))
    if result.advised:
        follows = p.fit is not None and fit_follows(p.extract.layers, p.fit.layer)
        typer.echo(f'"{ADVISED}" in extract.layer: {", ".join(result.advised)}, the guide\'s recommended layer'
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
    if p.finetune is not None:
        print_finetune(p.finetune.config.output, result.finetune)
    elif result.guide is not None and result.guide.finetune_commands:
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


def print_finetune(output: Path, result) -> None:
    """The [finetune] stage's outcome: the epoch kept, or that the checkpoint was current."""
    if result is None:
        typer.echo(f"{output} is up to date with these images and settings: nothing to fine-tune")
        return
    best = result.best
    kept = (f"validation accuracy {best.val_accuracy:.3f} on {result.val_images} images" if result.val_images
            else "the last epoch: no validation images")
    typer.echo(f"{result.output}: fine-tuned, epoch {result.best_epoch} kept ({kept}; {result.train_images} trained on)")
