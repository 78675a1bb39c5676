"""`featpipe info FILE`: what a feature file holds."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from ..store import load
from . import app, user_errors


def describe(path: Path, errors: bool = False) -> str:
    fs = load(path)
    m = fs.meta
    lines = [
        f"file      {fs.path} ({fs.path.stat().st_size / 2**20:.1f} MiB, format v{m['format_version']}, featpipe {m['featpipe_version']})",
        f"created   {m['created']}",
        f"model     {m['model']}  weights {m['weights_source']}  sha256 {str(m['weights_sha256'])[:16]}",
        f"compute   precision {m['precision']}, stored as {m['dtype']}, torch {m['torch_version']}, timm {m['timm_version']}"
        + (f", backend {m['backend']}" if m.get("backend") else ""),
        f"images    {len(fs)} rows, {int(fs.valid.sum())} valid, {len(fs.errors['index'])} failed; root {m['image_root']}",
    ]
    dc = m["data_config"]
    if "crop" in dc:
        lines.append(
            f"preproc   resize {dc['resize']} {dc['interpolation']} ({dc['resampler']}), crop {dc['crop'][0]}x{dc['crop'][1]} ({dc['crop_mode']}), "
            f"mean {tuple(round(v, 3) for v in dc['mean'])}, std {tuple(round(v, 3) for v in dc['std'])}"
        )
    else:
        lines.append("preproc   none recorded (features made outside featpipe extract)")
    for name in fs.layers:
        a = fs.layer_info(name)
        node = f" node {a['node']}" if a.get("node") else ""
        lines.append(f"layer     {name}: {fs.dim(name)}-d (pool {a.get('pool')}{node})")
    if fs.classes:
        counts = np.bincount(fs.y[fs.y >= 0], minlength=len(fs.classes))
        shown = ", ".join(f"{c} ({k})" for c, k in zip(fs.classes[:10], counts[:10], strict=False))
        more = f", ... {len(fs.classes) - 10} more" if len(fs.classes) > 10 else ""
        lines.append(f"classes   {len(fs.classes)}: {shown}{more}")
    else:
        lines.append("classes   none (unlabelled)")
    if errors:
        for i, p, r in zip(fs.errors["index"], fs.errors["path"], fs.errors["reason"], strict=True):
            lines.append(f"failed    row {i}: {p}: {r}")
    return "\n".join(lines)


@app.command("info")
@user_errors
def info_command(
    file: Annotated[Path, typer.Argument(help="A feature file written by `featpipe extract`.")],
    errors: Annotated[bool, typer.Option("--errors", help="List every image that failed, with its reason.")] = False,
) -> None:
    """Summarise a feature file: model, preprocessing, layers, samples, classes, failures."""
    typer.echo(describe(file, errors))
