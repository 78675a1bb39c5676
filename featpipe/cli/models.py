"""`featpipe models [PATTERN]` and `featpipe layers MODEL`: what can be extracted."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from .. import models
from ..errors import UsageError
from . import app, user_errors


@app.command("models")
@user_errors
def models_command(
    pattern: Annotated[Optional[str], typer.Argument(help="Shell wildcard, e.g. 'resnet*' or 'tv:*'; default: the classic CNNs.")] = None,
) -> None:
    """List models with their feature dimension and whether pretrained weights are on disk."""
    rows = models.model_table(pattern)
    if not rows:
        hint = f"'*{pattern.strip('*')}*'" if pattern.strip("*") else "'resnet*'"
        raise UsageError(f"no model matches {pattern!r}; try a wider wildcard such as {hint}")
    typer.echo(f"{'model':40} {'pooled dim':>10}  {'input':>8}  pretrained offline")
    for d in rows:
        if "error" in d:
            typer.echo(f"{d['model']:40} {'?':>10}  {'?':>8}  ({d['error']})")
            continue
        typer.echo(f"{d['model']:40} {d['pooled_dim']:>10}  {d['input']:>8}  {'yes' if d['pretrained_offline'] else 'no'}")
    if pattern is None:
        typer.echo("(the classic CNNs; `featpipe models 'PATTERN'` searches all timm and torchvision models)", err=True)


@app.command("layers")
@user_errors
def layers_command(
    model: Annotated[str, typer.Argument(help="A model name, as for --model.")],
) -> None:
    """List the layers of MODEL that --layer accepts, with their output shape and feature dimension."""
    import torch

    spec = models.resolve(model)
    with torch.device("meta"):
        net = models.create_architecture(spec).eval()
    cfg = models.eval_config(net, spec)
    typer.echo(f"{'layer':40} {'output shape':>22}  dim")
    for name, shape, dim in models.layer_table(net, spec, cfg.crop):
        typer.echo(f"{name:40} {str(tuple(shape[1:])):>22}  {dim}")
