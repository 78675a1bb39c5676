"""`featpipe report`: the HTML report of an existing fit (no refit); `fit`, `guide` and `finetune` write it
with --report."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import _common as common
from . import app, user_errors
from ._common import say_written


@app.command("report")
@user_errors
def report_command(
    features: Annotated[Path, typer.Argument(help="The labelled feature file the model was fitted on (its test rows are found again), or one of other images.")],
    model: Annotated[Path, typer.Argument(help="A model file from `featpipe fit`.")],
    output: Annotated[Path, common.output("Folder for index.html, its thumbnails, label_issues.csv and map.png.")],
) -> None:
    """Write the HTML report of a fit: mistakes, confused pairs, likely label errors, a map (no refit)."""
    from ..report import from_model

    say_written(from_model(features, model, output))
