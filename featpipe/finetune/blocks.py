"""Which parameters train: the network's stages from the top, the head, and the BatchNorm policy.

Parameters are grouped by stage (``featpipe.models.stages``): group k holds the
parameters up to and including stage k, in the order the network registers
them, which is the order its forward pass runs them; the "neck" (between the
last stage and the head, such as EfficientNet's conv_head) and the head come
last. ``--unfreeze N`` trains the top N stages, the neck and the head; lower
stages get lower learning rates (layer-wise decay).

BatchNorm: with the ``frozen`` policy every BatchNorm layer stays in eval mode,
so its running statistics never change (small batches give noisy statistics,
and statistics that drift under frozen weights break them); its scale and
shift still train where their stage does. With ``train``, BatchNorm layers of
trainable stages update their statistics; those of frozen stages never do.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..settings import FINETUNE, literal, shown

HEAD, NECK = "head", "neck"


@dataclass(frozen=True)
class Groups:
    """Parameter names by group: one per stage (shallow to deep), then the neck and the head."""

    stages: tuple[str, ...]  # the stage modules' names
    members: dict[str, tuple[str, ...]]  # group name -> parameter names

    def order(self) -> list[str]:
        return [*self.stages, NECK, HEAD]


def group_parameters(model: nn.Module, stages: list[str], head: str) -> Groups:
    """Assign every parameter to a stage, the neck or the head."""
    names = [n for n, _ in model.named_parameters()]
    last_index = {}
    for stage in stages:
        inside = [i for i, n in enumerate(names) if n.startswith(stage + ".")]
        if inside:
            last_index[stage] = max(inside)
    members: dict[str, list[str]] = {g: [] for g in [*stages, NECK, HEAD]}
    for i, name in enumerate(names):
        if name.startswith(head + "."):
            members[HEAD].append(name)
            continue
        owner = next((s for s in stages if s in last_index and i <= last_index[s]), NECK)
        members[owner].append(name)
    return Groups(tuple(stages), {g: tuple(v) for g, v in members.items()})


def trainable_groups(groups: Groups, unfreeze: str) -> list[str]:
    """``head``, a number of stages from the top, or ``all``.

    Raises:
        SettingError: ``unfreeze`` is none of these, or more stages than the network has (FinetuneConfig.unfreeze).
    """
    if unfreeze == "head":
        return [HEAD]
    if unfreeze == "all":
        return groups.order()
    if not unfreeze.isdigit():
        raise FINETUNE.refuse(f"{{unfreeze}} must be head, a number of stages or all, got {shown(unfreeze)}", unfreeze)
    n = int(unfreeze)
    if not 0 < n <= len(groups.stages):
        raise FINETUNE.refuse(f"{{unfreeze}} {n}: the network has {len(groups.stages)} stages "
                              f"({literal(', '.join(groups.stages))}); give 1 to {len(groups.stages)}, head or all", n)
    return [*groups.stages[len(groups.stages) - n:], NECK, HEAD]


def learning_rates(groups: Groups, trainable: list[str], lr: float, decay: float) -> dict[str, float]:
    """Head and neck at ``lr``; each stage below them ``decay`` times its upper neighbour's."""
    rates = {HEAD: lr, NECK: lr}
    for depth, stage in enumerate(reversed(groups.stages), start=1):
        rates[stage] = lr * decay ** depth
    return {g: rates[g] for g in trainable}


def freeze(model: nn.Module, groups: Groups, trainable: list[str]) -> None:
    """requires_grad only for the trainable groups' parameters."""
    train = {name for g in trainable for name in groups.members[g]}
    for name, p in model.named_parameters():
        p.requires_grad_(name in train)


def set_train_mode(model: nn.Module, groups: Groups, trainable: list[str], bn: str) -> None:
    """``model.train()``, then BatchNorm layers back to eval where the policy keeps their statistics."""
    model.train()
    train = {name for g in trainable for name in groups.members[g]}
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            own = {f"{name}.{p}" for p, _ in module.named_parameters(recurse=False)}
            if bn == "frozen" or not (own & train):
                module.eval()


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def audit(before: dict[str, torch.Tensor], model: nn.Module, groups: Groups) -> list[dict]:
    """Per group: how many parameter tensors and BatchNorm statistics changed, bit for bit."""
    after = model.state_dict()
    owner = {name: g for g, names in groups.members.items() for name in names}
    rows = {g: {"group": g, "parameters": 0, "changed": 0, "bn_statistics": 0, "bn_changed": 0} for g in groups.order()}
    for key, old in before.items():
        if key not in after or after[key].shape != old.shape:
            continue  # the new head replaced the old one
        changed = not torch.equal(after[key], old)
        if key in owner:
            row = rows[owner[key]]
            row["parameters"] += 1
            row["changed"] += changed
        elif key.endswith(("running_mean", "running_var")):
            module = key.rsplit(".", 1)[0]
            group = owner.get(f"{module}.weight", NECK)
            rows[group]["bn_statistics"] += 1
            rows[group]["bn_changed"] += changed
    return [rows[g] for g in groups.order() if rows[g]["parameters"] or rows[g]["bn_statistics"]]
