"""`featpipe finetune`: options -> FinetuneConfig -> featpipe.finetune(); a table per epoch, the audit at the end."""
from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Annotated

import typer

from .. import settings
from . import _common as common
from . import app, user_errors
from ._common import Optimizer, Schedule, choices, say_files, say_written, with_progress

Augment = choices("Augment", settings.FINETUNE.settings["augment"].constraints[0].choices)
BatchNorm = choices("BatchNorm", settings.BN_POLICIES)
Precision = choices("Precision", settings.FINETUNE_PRECISIONS)


# Long only in its signature: Typer reads one parameter per option; the body is short.
@app.command("finetune", cls=common.renamed({"--val-size": "--validation-size"}))
@user_errors
def finetune_command(
    input: Annotated[Path, typer.Argument(help="Labelled images: an ImageFolder tree or a CSV with path,label.")],
    output: Annotated[Path, common.output("Checkpoint to write (.pt): state dict and metadata, loadable with weights_only=True.")],
    model: Annotated[str, typer.Option(help="timm or torchvision model, as for extract.")],
    weights: Annotated[str, typer.Option(help="pretrained, random, or a checkpoint path to start from.")] = "pretrained",
    unfreeze: Annotated[str, typer.Option(help="head (a linear probe, trained on), N (the top N stages), or all (BiT's recipe).")] = "all",
    epochs: Annotated[str, typer.Option(help="Epochs of fine-tuning after the linear probe (0: the probe alone); auto: from the number of training images (BiT's tiers); the epoch with the lowest validation loss is kept.")] = "auto",
    lr: Annotated[str, typer.Option(help="Learning rate of the head and the top stage; auto: a learning-rate range test of the network with a fresh head, by the rule of `featpipe lr-find`.")] = "auto",
    lr_decay: Annotated[float, typer.Option(help="Each stage lower down trains at this times the rate above it (1: one rate for all, BiT's recipe).")] = 1.0,
    optimizer: Annotated[Optimizer, typer.Option(help="The optimizer.")] = Optimizer.adam,  # type: ignore[attr-defined]
    schedule: Annotated[Schedule, typer.Option(help="Learning-rate schedule after the warm-up (step: /10 at 1/2 and 3/4 of the epochs; cyclic: triangular; sgdr: cosine with warm restarts; cosine: one half cosine down to 0).")] = Schedule.cosine,  # type: ignore[attr-defined]
    warmup: Annotated[float, typer.Option(help="Epochs over which the rates rise linearly from near 0 (Adam's first steps are full-size whatever the gradient).")] = 1.0,
    weight_decay: Annotated[float, typer.Option(help="L2 penalty on weights (not biases).")] = 1e-4,
    augment: Annotated[Augment, typer.Option(help="Training views: random resized crop, flip, small rotation, colour shift; stronger from light to strong. auto: the strongest whose views the linear probe still recognises.")] = Augment.auto,  # type: ignore[attr-defined]
    flip: Annotated[bool | None, typer.Option("--flip/--no-flip", help="Horizontal flips (default: auto, off where the linear probe recognises mirrored images less well: text, digits, left/right signs).", show_default=False)] = None,
    bn: Annotated[BatchNorm, typer.Option(help="frozen: every BatchNorm keeps its statistics (small batches); train: those of unfrozen stages update them.")] = BatchNorm.frozen,  # type: ignore[attr-defined]
    image_size: Annotated[str, typer.Option(help="Square input crop in pixels; auto: the model's own, and for images under 96 px BiT's upsampling (128 for a 224-px model).")] = "auto",
    crop_pct: Annotated[str, typer.Option(help="Crop size / resize, as in timm: the model's (often 0.875) cuts the edges, 1 keeps the whole image, above 1 pads it with black; auto: the model's, unless it would cut objects that fill the frame on a plain background (digits, characters).")] = "auto",
    validation_size: Annotated[float, typer.Option(help="Fraction of the images held out, stratified, to pick the best epoch; 0 trains on all of them for --epochs and keeps the last (a refit, with the epochs a validated run chose).")] = 0.2,
    batch_size: Annotated[int, common.batch_size("Images per step.")] = 32,
    device: Annotated[str, common.device()] = "auto",
    precision: Annotated[Precision, typer.Option(help="auto (bf16 on a GPU, fp32 on the CPU: docs/finetune.md#precision), fp32 or bf16.")] = Precision.auto,  # type: ignore[attr-defined]
    seed: Annotated[int, common.seed("Seed of the split, the shuffling and the augmentation.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its last finished epoch.")] = False,
    report: Annotated[Path | None, common.report("Folder for curves.png (losses and accuracy per epoch), lr_find.png (the range test of --lr auto) and index.html: the HTML report (the validation images' mistakes, likely label errors, a map), from one pass of every image through the fine-tuned network, kept as features.h5.")] = None,
    quiet: Annotated[bool, common.quiet()] = False,
) -> None:
    """Fine-tune a pretrained CNN on your images: a linear probe first, then the top stages (LP-FT)."""
    from ..finetune import FinetuneConfig, finetune

    config = FinetuneConfig(
        input=input, output=output, model=model, weights=weights, unfreeze=unfreeze, epochs=epochs, lr=lr,
        lr_decay=lr_decay, optimizer=optimizer.value, schedule=schedule.value, warmup=warmup,
        weight_decay=weight_decay,
        augment=augment.value, flip="auto" if flip is None else flip, bn=bn.value, image_size=image_size, crop_pct=crop_pct,
        val_size=validation_size,
        batch_size=batch_size, device=device, precision=precision.value, seed=seed, resume=resume,
    )

    def number(value: float, fmt: str) -> str:
        return "-" if math.isnan(value) else format(value, fmt)

    def on_epoch(e) -> None:
        train = "probe" if e.epoch == 0 else number(e.train_loss, ".4f")
        typer.echo(f"{e.epoch:>5}  {train:>10}  {number(e.val_loss, '.4f'):>9}  {number(e.val_accuracy, '.3f'):>7}  "
                   f"{e.lr:>8.2g}  {e.seconds:>5.1f}", err=True)

    def on_recipe(recipe) -> None:
        typer.echo("recipe:", err=True)
        for line in recipe.lines():
            typer.echo(f"  {line}", err=True)
        typer.echo(f"{'epoch':>5}  {'train loss':>10}  {'val loss':>9}  {'val acc':>7}  {'lr':>8}  {'s':>5}", err=True)

    result = with_progress(
        lambda progress: finetune(config, progress=(lambda phase, d, t: progress(d, t, description=phase))
                                  if progress else None, on_epoch=on_epoch, on_recipe=on_recipe),
        quiet, description="finetune",
    )
    best = result.best
    kept = (f"lowest validation loss {best.val_loss:.4f}, accuracy {best.val_accuracy:.3f} on {result.val_images} "
            "validation images" if result.val_images else "the last: --validation-size 0, no validation images")
    typer.echo(f"{result.output}: epoch {result.best_epoch} kept ({kept}; "
               f"{result.train_images} trained on" + (f", resumed after epoch {result.resumed_from}" if result.resumed_from else "")
               + (f"; {result.skipped_images} images could not be decoded" if result.skipped_images else "") + ")")
    if result.probe_kept:
        from ..finetune.recipe import probe_kept_advice

        typer.echo("fine-tuning did not improve on the linear probe: the checkpoint holds the probe on the frozen "
                   f"network. {probe_kept_advice(result.recipe, result.history)}")
    typer.echo(f"trained: {', '.join(result.trainable)}; what changed (parameter tensors, BatchNorm statistics):")
    for row in result.audit:
        typer.echo(f"  {row['group']:24} params {row['changed']:>4}/{row['parameters']:<4} "
                   f"BN statistics {row['bn_changed']:>4}/{row['bn_statistics']}")
    if report is not None:
        from ..finetune.report import write_report

        say_files(write_report(result, report))
        from ..report import from_finetune

        say_written(with_progress(lambda progress: from_finetune(result, config, report, progress), quiet, "report"))
    q = shlex.quote
    typer.echo("next:")
    # The checkpoint names its base model and preprocessing (image size and crop included): no --model.
    typer.echo(f"  featpipe extract {q(str(input))} -o features.h5 --weights {q(str(result.output))}")
    if result.val_images and result.best_epoch > 0:
        refit = result.recipe.options(epochs=result.best_epoch)
        weights_opt = "" if weights == "pretrained" else f" --weights {q(weights)}"
        typer.echo(f"  featpipe finetune {q(str(input))} -o {q(str(output.with_stem(output.stem + '-refit')))} "
                   f"--model {q(model)}{weights_opt} {' '.join(refit)} --validation-size 0")
        typer.echo(f"    (a refit on all {result.train_images + result.val_images} images, validation ones included, "
                   f"for the {result.best_epoch} epochs this run kept, with the recipe it measured)")
