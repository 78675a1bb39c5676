"""--lr auto: the learning-rate range test on the network to be fine-tuned (classify/lr_find.py's loop and rule)."""
from __future__ import annotations

import torch
from torch import nn

from . import blocks
from . import recipe as recipe_rules
from .data import make_loader


def find_rate(net, head, groups, trainable, config, optimizer_at, dataset, preprocess, device, autocast, progress,
                steps: int):
    """The learning-rate range test on the trainable network, from the probe; the weights are put back after."""
    from ..classify.lr_find import range_test

    saved = blocks.snapshot(net)
    torch.manual_seed(config.seed)
    # From a fresh head, as lr-find's rule expects: from the probe the training loss starts near its floor (the
    # probe fits the training images) and has nowhere to fall, so its lowest point says nothing of the rate.
    head.reset_parameters()
    optimizer = optimizer_at(recipe_rules.RANGE_START)
    blocks.set_train_mode(net, groups, trainable, config.bn)

    def batches():
        epoch = 0
        while True:
            for pixels, y, _ in make_loader(dataset, config.batch_size, True, config.seed * 7919 + epoch):
                if pixels is not None and len(y) > 1:
                    yield pixels, y
            epoch += 1

    stream = batches()
    done = [0]

    def step(lr: float) -> float:
        pixels, y = next(stream)
        for g in optimizer.param_groups:
            g["lr"] = lr * g["ratio"]
        x = preprocess.batch(pixels.to(device)).contiguous(memory_format=torch.channels_last)
        with autocast():
            loss = nn.functional.cross_entropy(net(x).float(), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done[0] += 1
        if progress:
            progress("learning-rate range test", done[0], steps)
        return float(loss.detach())

    try:
        finding = range_test(step, recipe_rules.RANGE_START, recipe_rules.RANGE_END, steps, recipe_rules.RANGE_MAX)
    finally:
        net.load_state_dict(saved)
    return recipe_rules.settle_rate(finding)
