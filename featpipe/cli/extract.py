"""`featpipe extract`: options -> ExtractConfig -> featpipe.extract()."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console

from .. import settings
from ..errors import UsageError
from . import _common as common
from . import app, user_errors
from ._common import Backend, choices, interrupt_says_how_to_resume, listed, with_progress

if TYPE_CHECKING:
    from ..extraction import ExtractSummary


# The options' choices, from the library's lists.
Pool = choices("Pool", settings.POOLS)
Resampler = choices("Resampler", settings.RESAMPLERS)
Decode = choices("Decode", settings.DECODES)
Precision = choices("Precision", settings.PRECISIONS)
Dtype = choices("Dtype", settings.DTYPES)
TTA = choices("TTA", settings.TTAS)
Strength = choices("Strength", settings.STRENGTHS)


def parse_batch_size(text: str) -> int | str:
    """'64' -> 64; 'auto' stays 'auto' (the extraction checks the range)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"--batch-size must be a number of images or auto, got {text!r}") from None


def parse_max_failures(text: Optional[str]) -> int | float | None:
    """'10' -> 10 images; '0.05' or '5%' -> a fraction of all images."""
    if text is None:
        return None
    hint = f"--max-failures must be a count (10), a fraction (0.05) or a percentage (5%), got {text!r}"
    try:
        if text.endswith("%"):
            value: int | float = float(text[:-1]) / 100
        elif "." in text:
            value = float(text)
        else:
            value = int(text)
    except ValueError:
        raise UsageError(hint) from None
    settings.EXTRACT.check_value("max_failures", value)  # the range: the library's own check, at once
    return value


def parse_storage_options(items: list[str]) -> dict:
    """['anon=true', 'client_kwargs.endpoint_url=http://x'] -> {'anon': True, 'client_kwargs': {'endpoint_url': ...}}.
    Values are JSON where they parse as JSON (true, 3, {...}), else strings."""
    import json

    options: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UsageError("--storage-option must be KEY=VALUE, got one without '=' (not shown: it may be a "
                             "secret); for example --storage-option anon=true")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        *parents, leaf = key.strip().split(".")
        node = options
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UsageError(f"--storage-option {key!r}: {part!r} is set both as a value and as a group")
        node[leaf] = value
    return options


def print_summary(s: ExtractSummary, console: Console) -> None:
    if s.already_complete:
        console.print(f"{s.output} is already complete ({s.images} images, {s.valid} valid, {s.failed} failed): "
                      f"nothing to do ({s.wall_seconds:.1f} s)")
        return
    from ..identity import describe_changes

    done = f"{s.computed} computed"
    if s.updated:
        retried = f", {s.changes['retried']:,} retried" if s.changes.get("retried") else ""
        layers = f"; layer {', '.join(s.layers_added)} added" if s.layers_added else ""
        done = f"updated ({describe_changes(s.changes)}{retried}{layers}): {done}"
    elif s.resumed_partitions:
        done += f", {s.images - s.computed} resumed from {s.resumed_partitions} finished partitions"
    console.print(f"[bold]{s.images}[/] images -> {s.output}: {done}; {s.valid} valid, "
                  f"[{'red' if s.failed else 'green'}]{s.failed} failed[/]")
    if s.computed:
        t = s.timings
        console.print(
            f"{s.images_per_s:.1f} images/s over {s.seconds:.1f} s of compute, {s.wall_seconds:.1f} s in all "
            f"(model, {t.get('start', 0):.1f} s to start workers, merge); time went to: forward "
            f"{t.get('forward', 0):.1f} s, decode+resize {t.get('decode', 0):.1f} s, write {t.get('write', 0):.1f} s "
            "(forward and decode summed over parallel streams, overlapped)"
        )
        if s.backend:
            converted = f" (converted in {s.conversion_seconds:.1f} s, cached for later runs)" \
                if s.conversion_seconds else ""
            console.print(f"forward pass on {s.backend}{converted}", markup=False, highlight=False)
        from ..extraction.config import bottleneck

        bound = bottleneck(s)
        if bound is not None:
            stage, busy, advice = bound
            console.print(f"bounded by {stage} (busy {100 * min(busy, 1):.0f}% of the compute time); "
                          f"what would help: {advice}", markup=False, highlight=False)
    for path, reason in s.errors[:5]:
        console.print(f"  failed: {path}: {reason}", markup=False, highlight=False)
    if s.failed > 5:
        console.print(f"  ... {s.failed - 5} more: `featpipe info {s.output} --errors` lists all")


@app.command("extract", cls=common.renamed({"--augment": "--augment-views"}))
@user_errors
def extract_command(
    input: Annotated[str, typer.Argument(help="Image folder (class subfolders = labels) or flat folder, a CSV or Parquet list with path[,label], or WebDataset tar shards ('shards/{00000..00099}.tar'); local or an fsspec URL (s3://, gs://, https://).")],
    output: Annotated[Path, common.output("Feature file to write (HDF5).")],
    model: Annotated[Optional[str], typer.Option(help="timm or torchvision model; `featpipe models` lists them. Optional with --weights CHECKPOINT.pt from `featpipe finetune`.", show_default=False)] = None,
    weights: Annotated[str, typer.Option(help="pretrained, random, or a checkpoint (state dict) path.")] = "pretrained",
    layer: Annotated[list[str], common.list_option("--layer", "-l", help="pooled, fc7, logits or a module name (`featpipe layers MODEL`).")] = ["pooled"],  # noqa: B006 - Typer needs a literal default
    pool: Annotated[Pool, typer.Option(help="How intermediate layers become vectors.")] = Pool.avg,
    batch_size: Annotated[str, common.batch_size("Images per forward pass, or auto: the largest that fits (halved on out-of-memory).")] = "32",
    device: Annotated[str, common.device()] = "auto",
    precision: Annotated[Precision, typer.Option(help="Compute precision; bf16 on a CPU with AVX512-BF16 or AMX.")] = Precision.fp32,
    backend: Annotated[Backend, common.backend()] = Backend.auto,
    dtype: Annotated[Dtype, typer.Option(help="Storage dtype of the features.")] = Dtype.float32,
    resampler: Annotated[Resampler, typer.Option(help="Resize with torch (fast; within 2/255 of Pillow) or pil (bit-exact to PIL transforms); auto: torch where it can.")] = Resampler.auto,
    decode: Annotated[Decode, typer.Option(help="JPEG decoding: exact (every pixel), fast (scaled by libjpeg to no less than the resize needs; much faster on large photos), gpu (nvJPEG batches, resized on the GPU; the CPU takes what it refuses), auto (gpu on CUDA, else exact).")] = Decode.exact,
    seed: Annotated[int, common.seed("Seed of --weights random and of the --augment-views views.")] = 0,
    tta: Annotated[TTA, typer.Option(help="Store each image's features averaged over deterministic views: flip (the crop and its mirror) or crops (four corners and centre).")] = TTA.none,
    augment_views: Annotated[int, typer.Option(help="Also store K seeded augmented views per image in /augmented/<layer> (for `fit --use-augmented`).")] = 0,
    augment_strength: Annotated[Strength, typer.Option(help="How strong the --augment-views views are (the recipe of `featpipe finetune --augment`).")] = Strength.standard,
    flip: Annotated[bool, typer.Option(help="--augment-views views may be mirror images; --no-flip where mirroring changes the class (digits, text, left/right signs).")] = True,
    max_failures: Annotated[Optional[str], typer.Option(help="Abort past this many bad images: a count, a fraction or a percentage.")] = None,
    partition_size: Annotated[Optional[int], typer.Option(help="Rows per partition (unit of work and of resume).")] = None,
    streams: Annotated[Optional[int], typer.Option(help="CPU: partitions computed at once, sharing the cores (default: min(cores, 4)).")] = None,
    decode_threads: Annotated[Optional[int], typer.Option(help="GPU: threads decoding images ahead of the device (default: the cores).")] = None,
    devices: Annotated[Optional[list[str]], common.list_option("--devices", help="Several GPUs: all, or a list such as cuda:0,cuda:1; one worker (and one copy of the model) per GPU.")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Address of an existing Dask scheduler.")] = None,
    shard_dir: Annotated[Optional[str], typer.Option(help="Folder or fsspec URL (s3://...) that every worker reaches: workers write finished partitions there (default: OUTPUT.parts, written by this process).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an output (or partial run) of another configuration.")] = False,
    verify_content: Annotated[bool, typer.Option(help="Hash every image's bytes to tell changed images apart (default: path, size and modification time).")] = False,
    retry_failed: Annotated[bool, typer.Option(help="Try images that failed in an earlier run again (default: a failure is kept as a result).")] = False,
    label_key: Annotated[Optional[str], typer.Option(help="Tar shards: where a sample's label is: .cls (default), .txt, another member extension, or a field of its .json member.")] = None,
    # Repeated only, never split at commas: a value may be JSON ({"a": 1, "b": 2}).
    storage_option: Annotated[list[str], typer.Option("--storage-option", help="KEY=VALUE for fsspec URLs (e.g. anon=true, client_kwargs.endpoint_url=http://...); repeat for several. Credentials are better left to the environment.")] = [],  # noqa: B006 - Typer needs a literal default
    quiet: Annotated[bool, common.quiet()] = False,
) -> None:
    """Extract CNN features of every image into one HDF5 file (resumable)."""
    with interrupt_says_how_to_resume(output, shard_dir=shard_dir):  # from the start: Ctrl-C while torch loads
        from ..extraction import ExtractConfig, extract

        config = ExtractConfig(
            input=input,
            output=output,
            model=model or "",
            weights=weights,
            layers=listed(layer),
            pool=pool.value,
            batch_size=parse_batch_size(batch_size),
            device=device,
            precision=precision.value,
            backend=backend.value,
            dtype=dtype.value,
            resampler=resampler.value,
            decode=decode.value,
            seed=seed,
            max_failures=parse_max_failures(max_failures),
            partition_size=partition_size,
            streams=streams,
            decode_threads=decode_threads,
            devices=None if devices is None else ",".join(listed(devices)),
            scheduler=scheduler,
            shard_dir=shard_dir,
            overwrite=overwrite,
            verify_content=verify_content,
            retry_failed=retry_failed,
            tta=tta.value,
            augment=augment_views,
            augment_strength=augment_strength.value,
            flip=flip,
            label_key=label_key,
            storage_options=parse_storage_options(storage_option),
        )
        summary = with_progress(lambda progress: extract(config, progress=progress), quiet)
    print_summary(summary, Console(soft_wrap=True))
