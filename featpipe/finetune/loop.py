"""One epoch of fine-tuning and what it needs: a training pass, an evaluation pass, the optimizer over the
trainable stages (each at its rate), the warm-up before the schedule, and the autocast of --precision."""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
from torch import nn

from ..classify.heads import make_optimizer
from ..extraction.preprocess import Preprocessor
from . import blocks
from .config import FinetuneConfig


def train_epoch(net: nn.Module, loader, optimizer, scheduler, preprocess: Preprocessor, device, autocast,
                 progress: Callable[[int, int], None] | None) -> tuple[float, int]:
    """One pass over ``loader``: (mean training loss, images that could not be decoded)."""
    total = torch.zeros((), device=device)
    seen = skipped = 0
    for i, (pixels, yb, bad) in enumerate(loader):
        skipped += bad
        if pixels is None:
            continue
        yb = yb.to(device, non_blocking=True)
        x = preprocess.batch(pixels.to(device, non_blocking=True)).contiguous(memory_format=torch.channels_last)
        with autocast():
            loss = nn.functional.cross_entropy(net(x).float(), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.detach() * len(yb)  # no host sync inside the step
        seen += len(yb)
        if progress:
            progress(i + 1, len(loader))
    return float(total) / max(seen, 1), skipped


def evaluate(net, loader, preprocess, device, autocast) -> tuple[float, float]:
    net.eval()
    loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    with torch.inference_mode():
        for pixels, y, _ in loader:
            if pixels is None:
                continue
            y = y.to(device)
            x = preprocess.batch(pixels.to(device)).contiguous(memory_format=torch.channels_last)
            with autocast():
                logits = net(x).float()
            loss += nn.functional.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            n += len(y)
    if n == 0:
        return math.nan, math.nan  # no validation rows (--validation-size 0)
    return float(loss) / n, float(correct) / n


def optimizer_factory(net: nn.Module, groups, trainable: list[str], lr_decay: float,
                       config: FinetuneConfig) -> Callable[[float], torch.optim.Optimizer]:
    """``optimizer_at(lr)``: the optimizer over the trainable groups, each at ``lr`` times its stage's ratio
    (kept as the group's "ratio" for the range test), biases without weight decay."""
    ratios = blocks.learning_rates(groups, trainable, 1.0, lr_decay)

    def optimizer_at(lr: float):
        params = dict(net.named_parameters())
        param_groups = []
        for g in trainable:
            for decayed in (True, False):
                chosen = [params[n] for n in groups.members[g] if n.endswith("bias") != decayed]
                if chosen:
                    param_groups.append({"params": chosen, "lr": lr * ratios[g], "ratio": ratios[g],
                                         "weight_decay": config.weight_decay if decayed else 0.0})
        return make_optimizer(config.optimizer, param_groups, lr, config.weight_decay)

    return optimizer_at


def with_warmup(optimizer, steps: int, schedule: Callable):
    """The schedule after ``steps`` of linear warm-up. Adam's first updates move every weight by about
    the full rate whatever its gradient (its second-moment estimate starts from nothing), so they start small.
    The warm-up only softens the first epoch's drop; what removes it is the probe's floor on the spreads
    (probe.linear_probe; docs/finetune.md, "Behind the defaults")."""
    if steps <= 0:
        return schedule()
    warm = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / (steps + 1), total_iters=steps)
    after = schedule() or torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warm, after], milestones=[steps])


def autocast_for(device: torch.device, bf16: bool):
    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    return autocast
