"""Fine-tuning, LP-FT (Kumar et al., ICLR 2022): a linear probe first, then the top of the network.

Phase 1 fits the new head by logistic regression on the frozen network's pooled
features of the training images (no augmentation epoch is wasted on a random
head; the scaler is folded into the head's weights; its L2 strength is the one
with the lowest validation log-loss). Phase 2 trains the chosen stages, the neck
and the head on augmented views, lower stages at lower rates, after a linear
warm-up of the rates (--warmup, one epoch by default).
The epoch with the lowest validation loss is kept; with --validation-size 0 (a refit on
every image, for the epochs a validated run kept) the last. After each epoch the
whole state (weights, optimizer, schedule, best so far, history) is written to
``<output>.resume`` by a rename; ``--resume`` continues from it. Every epoch
seeds its own randomness (shuffling, augmentation, dropout) from the seed and
its number, so a resumed run gives the same weights as an uninterrupted one.
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import models
from ..classify.heads import make_schedule
from ..errors import UsageError
from ..extraction.devices import resolve_device
from ..extraction.preprocess import Preprocessor
from ..extraction.sources import discover
from ..files import checkpoint as checkpoint_file
from ..models.stages import stage_layers
from ..models.weights import classifier_name
from ..settings import FINETUNE, shown
from . import blocks, data, loop, lr_range, view_choice
from . import recipe as recipe_rules
from .config import FinetuneConfig, checked
from .data import Images, make_loader, train_transform
from .probe import linear_probe, probe_at

log = logging.getLogger(__name__)


@dataclass
class Epoch:
    epoch: int  # 0 is the linear probe, before any fine-tuning
    train_loss: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float


@dataclass
class FinetuneResult:
    output: Path
    classes: list[str]
    history: list[Epoch]
    best_epoch: int
    audit: list[dict]
    trainable: list[str]
    train_images: int
    val_images: int
    skipped_images: int = 0
    resumed_from: int = 0
    timings: dict = field(default_factory=dict)
    recipe: recipe_rules.Recipe | None = None  # what it trained with, each setting with its reason
    lr_finding: object | None = None  # the range test behind --lr auto (classify.lr_find.LRFinding)

    @property
    def probe_kept(self) -> bool:
        """Fine-tuning never beat the linear probe: the checkpoint is the probe on the unchanged network."""
        return self.best_epoch == 0 and len(self.history) > 1

    @property
    def best(self) -> Epoch:
        return next(e for e in self.history if e.epoch == self.best_epoch)


def _replace_head(net: nn.Module, head: str, classes: int) -> nn.Linear:
    old = net.get_submodule(head)
    if not isinstance(old, nn.Linear):
        raise UsageError(f"the head of this model ({head}: {type(old).__name__}) is not a linear layer; "
                         "finetune replaces a linear head (ResNet, EfficientNet, ConvNeXt, VGG, ViT, ...)")
    new = nn.Linear(old.in_features, classes)
    parent, _, name = head.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, name, new)
    if hasattr(net, "num_classes"):
        net.num_classes = classes
    return new


def _identity(config: FinetuneConfig, spec, weights_sha: str, classes: list[str]) -> str:
    """What a resumed run must share with the run it continues (everything but --epochs and --device)."""
    d = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()
         if k not in ("epochs", "device", "resume", "output")}
    return json.dumps({**d, "model": spec.name, "weights_sha256": weights_sha, "classes": classes}, sort_keys=True)


@dataclass
class Trained:
    """A fine-tuned network in memory (the best epoch's weights loaded), with how it got there."""

    net: nn.Module
    data_config: object
    preprocess: Preprocessor
    device: torch.device
    autocast: Callable
    recipe: recipe_rules.Recipe
    history: list[Epoch]
    best_epoch: int
    audit: list[dict]
    trainable: list[str]
    lr_finding: object | None  # the range test (classify.lr_find.LRFinding) where --lr auto
    skipped: int
    resumed_from: int


def _first_recipe(config: FinetuneConfig, net: nn.Module, spec, train_paths: list,
                  budget: Callable[[recipe_rules.Recipe], None] | None) -> recipe_rules.Recipe:
    """The settings known before the probe: input framing (measured where auto), epochs, unfreeze, rate decay;
    then the caller's ``budget`` caps."""
    recipe = recipe_rules.Recipe()
    model_cfg = models.eval_config(net, spec)
    model_crop_pct = data.model_crop_pct(model_cfg)
    framing = None
    if "auto" in (config.image_size, config.crop_pct):
        framing = recipe_rules.measure_framing(train_paths, model_crop_pct, config.seed)
    recipe_rules.frame(framing, model_cfg.crop[0], model_crop_pct,
                       model_cfg.crop[0] if config.image_size is None else config.image_size,
                       round(model_crop_pct, 4) if config.crop_pct is None else config.crop_pct, recipe)
    if config.epochs == "auto":
        epochs, why = recipe_rules.epochs_for(len(train_paths))
        recipe.set("epochs", epochs, True, why)
    else:
        recipe.set("epochs", config.epochs, False)
    recipe.set("unfreeze", config.unfreeze, config.unfreeze == recipe_rules.UNFREEZE,
               "BiT's recipe: every layer trains" if config.unfreeze == recipe_rules.UNFREEZE else "")
    recipe.set("lr_decay", config.lr_decay, config.lr_decay == recipe_rules.LR_DECAY,
               "BiT's recipe: one rate for every layer" if config.lr_decay == recipe_rules.LR_DECAY else "")
    if budget:
        budget(recipe)
    return recipe


def _probe_phase(net: nn.Module, spec, head: nn.Linear, recipe: recipe_rules.Recipe, paths, labels, train_rows,
                 val_rows, config: FinetuneConfig, device, n_classes: int):
    """Phase 1: the linear probe at each candidate input size (where the size is measured), the size with the
    lower held-out loss kept (a tie, or nothing held out to tell, goes to the cheaper one), folded into ``head``."""
    probes = {size: probe_at(net, spec, size, recipe["crop_pct"], paths, labels, train_rows, val_rows, config, device)
              for size in recipe.size_candidates or [recipe["image_size"]]}
    size = min(probes, key=lambda k: (probes[k].loss if math.isfinite(probes[k].loss) else math.inf, k))
    if len(probes) > 1:
        choice = recipe.choices["image_size"]
        losses = ", ".join(f"{k} px {probes[k].loss:.3f}" for k in sorted(probes))
        recipe.set("image_size", size, True, f"{choice.reason}; of {' and '.join(map(str, sorted(probes)))} "
                   f"px, the linear probe's held-out log-loss chose {size} ({losses})")
    probe = probes[size]
    linear_probe(head, probe.X, probe.y, n_classes, C=probe.C)
    return probe


def _resume_state(resume_path: Path | None, identity: str | None) -> dict | None:
    """The state an interrupted run left at ``resume_path`` (None when there is none).

    Raises:
        UsageError: it was made by another run (settings, images or weights).
    """
    if resume_path is None or not resume_path.exists():
        return None
    state = torch.load(resume_path, map_location="cpu", weights_only=True)
    if state["identity"] != identity:
        raise UsageError(f"{str(resume_path)!r} was made with other settings, images or weights; "
                         "delete it to start again, or run the command that made it")
    return state


def _scheduler(config: FinetuneConfig, optimizer, lr: float, epochs: int, steps_per_epoch: int):
    """``config.schedule`` over the epochs after the warm-up (step: /10 at 1/2 and 3/4 of them), after
    ``config.warmup`` epochs of linear warm-up."""
    return loop.with_warmup(optimizer, round(config.warmup * steps_per_epoch), lambda: make_schedule(
        config.schedule, optimizer, lr, max(math.ceil(epochs - config.warmup), 1), steps_per_epoch,
        (max(1, epochs // 2), max(1, 3 * epochs // 4)), max(1, epochs // 2)))


# train() is one function of about 100 lines on purpose: phase 1, the recipe's measurements and phase 2 share
# the network, its parameter groups and the resume state, in an order that resuming depends on; the steps
# themselves are functions (above, and loop.py).
def train(config: FinetuneConfig, spec, net: nn.Module, paths: list, labels: np.ndarray, classes: list[str],
          train_rows: np.ndarray, val_rows: np.ndarray, progress: Callable[[str, int, int], None] | None = None,
          on_epoch: Callable[[Epoch], None] | None = None,
          on_recipe: Callable[[recipe_rules.Recipe], None] | None = None,
          resume_path: Path | None = None, identity: str | None = None,
          budget: Callable[[recipe_rules.Recipe], None] | None = None) -> Trained:
    """LP-FT of ``config.model`` on ``train_rows`` of ``paths``, the epoch kept by ``val_rows`` (or the last).

    ``config`` is checked (config.checked). The recipe's ``auto`` settings are measured here, each where its evidence
    exists; ``on_recipe`` hears the whole recipe before the first fine-tuning epoch. With ``resume_path``, the
    state is written there after each epoch and read back when it exists (its recipe included). ``budget(recipe)``
    may cap the recipe once its input framing and epochs are chosen (the guide's cheaper measurement)."""
    state = _resume_state(resume_path, identity)
    recipe = (recipe_rules.Recipe.from_dict(json.loads(state["recipe"])) if state is not None
              else _first_recipe(config, net, spec, [paths[i] for i in train_rows], budget))
    device = torch.device(resolve_device(config.device, FINETUNE))
    bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    autocast = loop.autocast_for(device, bf16)
    head_name = classifier_name(net, spec)
    if head_name is None:
        raise UsageError(f"cannot find the classifier of {spec} to replace; finetune needs a linear head")
    net = net.to(device, memory_format=torch.channels_last)
    head = _replace_head(net, head_name, len(classes)).to(device)
    history: list[Epoch] = []
    finding = None
    # Phase 1: the linear probe, from the frozen network's features (at each candidate input size, where the
    # size is measured); then what it tells of views.
    if state is None:
        t0 = time.perf_counter()
        probe = _probe_phase(net, spec, head, recipe, paths, labels, train_rows, val_rows, config, device,
                             len(classes))
        data_config, preprocess = probe.data_config, probe.preprocess
    else:
        data_config = data.data_config(net, spec, recipe["image_size"], recipe["crop_pct"])
        preprocess = Preprocessor(data_config)
    stages = stage_layers(net, spec, data_config.crop)
    groups = blocks.group_parameters(net, stages, head_name)
    trainable = blocks.trainable_groups(groups, recipe["unfreeze"])

    def images(rows, augment=None):
        return Images([paths[i] for i in rows], labels[rows], preprocess, augment)

    val_loader = make_loader(images(val_rows), config.batch_size, False, 0)
    if state is None:
        val_loss, val_acc = loop.evaluate(net, val_loader, preprocess, device, autocast)
        history.append(Epoch(0, float("nan"), val_loss, val_acc, 0.0, time.perf_counter() - t0))
        view_choice.choose_views(config, recipe, net, spec, head, paths, labels, train_rows, val_rows, probe.X,
                                 probe.y, probe.X_val, probe.y_val, probe.C, data_config, preprocess, device,
                                 len(classes))
    augment = train_transform(data_config, recipe["augment"], recipe["flip"])
    snapshot_start = blocks.snapshot(net)  # the audit compares the end with this

    # Phase 2: the chosen stages, the neck and the head, on augmented views.
    blocks.freeze(net, groups, trainable)
    optimizer_at = loop.optimizer_factory(net, groups, trainable, recipe["lr_decay"], config)

    if state is None:
        if config.lr == "auto":
            finding = lr_range.find_rate(net, head, groups, trainable, config, optimizer_at,
                                         images(train_rows, augment), preprocess, device, autocast, progress,
                                         recipe_rules.RANGE_STEPS)
            recipe.set("lr", finding.suggestion, True, recipe_rules.describe_rate(finding))
        else:
            recipe.set("lr", float(config.lr), False)
    if on_recipe:
        on_recipe(recipe)
    if state is None and on_epoch:
        on_epoch(history[-1])
    epochs = int(recipe["epochs"])
    optimizer = optimizer_at(recipe["lr"])
    scheduler = _scheduler(config, optimizer, recipe["lr"], epochs, math.ceil(len(train_rows) / config.batch_size))
    best_state, best_epoch, best_loss = snapshot_start, 0, history[0].val_loss if history else math.inf
    first = 1
    if state is not None:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        snapshot_start = state["start"]
        best_state, best_epoch, best_loss = state["best"], int(state["best_epoch"]), float(state["best_loss"])
        history = [Epoch(**row) for row in json.loads(state["history"])]
        first = int(state["epoch"]) + 1
        log.info("resuming after epoch %d", first - 1)
    skipped = 0  # images that could not be decoded (counted in the last epoch)
    for epoch in range(first, epochs + 1):
        t0 = time.perf_counter()
        torch.manual_seed(config.seed * 100_003 + epoch)  # augmentation and dropout: this epoch's own stream
        loader = make_loader(images(train_rows, augment), config.batch_size, True, config.seed * 100_003 + epoch)
        blocks.set_train_mode(net, groups, trainable, config.bn)
        train_loss, skipped = loop.train_epoch(net, loader, optimizer, scheduler, preprocess, device, autocast,
                                           (lambda done, total, epoch=epoch: progress(f"epoch {epoch}/{epochs}", done,
                                                                                      total)) if progress else None)
        val_loss, val_acc = loop.evaluate(net, val_loader, preprocess, device, autocast)
        row = Epoch(epoch, train_loss, val_loss, val_acc,
                    max(g["lr"] for g in optimizer.param_groups), time.perf_counter() - t0)
        history.append(row)
        if val_loss < best_loss or not len(val_rows):  # without validation rows the last epoch is kept
            best_state, best_epoch, best_loss = blocks.snapshot(net), epoch, val_loss
        if resume_path is not None:  # the whole state, so that a resumed run gives the same weights
            checkpoint_file.save({
                "identity": identity, "epoch": epoch, "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else {}, "start": snapshot_start,
                "best": best_state, "best_epoch": best_epoch, "best_loss": best_loss,
                "history": json.dumps([asdict(e) for e in history]), "recipe": json.dumps(recipe.to_dict()),
            }, resume_path)
        if on_epoch:
            on_epoch(row)
    net.load_state_dict(best_state)
    return Trained(net, data_config, preprocess, device, autocast, recipe, history, best_epoch,
                   blocks.audit(snapshot_start, net, groups), trainable, finding, skipped,
                   first - 1 if state is not None else 0)


def predict_rows(trained: Trained, paths: list, labels: np.ndarray, rows: np.ndarray, batch_size: int) -> np.ndarray:
    """Per image of ``rows``, whether the fine-tuned network gets it right (one that cannot be decoded: wrong)."""
    loader = make_loader(Images([paths[i] for i in rows], labels[rows], trained.preprocess), batch_size, False, 0)
    correct = []
    trained.net.eval()
    with torch.inference_mode():
        for pixels, y, bad in loader:
            correct.append(np.zeros(bad, bool))
            if pixels is None:
                continue
            x = trained.preprocess.batch(pixels.to(trained.device)).contiguous(memory_format=torch.channels_last)
            with trained.autocast():
                predicted = trained.net(x).float().argmax(1).cpu()
            correct.append((predicted == y).numpy())
    return np.concatenate(correct)


def finetune(config: FinetuneConfig,
             progress: Callable[[str, int, int], None] | None = None,
             on_epoch: Callable[[Epoch], None] | None = None,
             on_recipe: Callable[[recipe_rules.Recipe], None] | None = None) -> FinetuneResult:
    """Fine-tune ``config.model`` on the labelled images of ``config.input``; write the best epoch's checkpoint.

    ``progress(phase, done, total)`` reports batches; ``on_epoch(row)`` each finished epoch (0: the linear probe);
    ``on_recipe(recipe)`` the settings chosen, each with its reason, before the first fine-tuning epoch.

    Raises:
        UsageError: bad options or input, a head that is not linear, a stale ``<output>.resume`` without ``resume``.
        WeightsError: as for extract.
    """
    t_start = time.perf_counter()
    config = checked(replace(config, input=Path(config.input), output=Path(config.output).expanduser().absolute()))
    resume_path = config.resume_path
    if resume_path.exists() and not config.resume:
        raise FINETUNE.refuse(f"{shown(str(resume_path))} holds an interrupted run: {{resume}} continues it, "
                              "or delete the file to start again")
    samples = discover(config.input)
    classes = list(samples.classes)
    train_rows, val_rows = data.split_rows(samples.labels, classes, config.val_size, config.seed)
    paths = samples.files("finetune")
    spec = models.resolve(config.model)
    net, weights = models.load_model(spec, config.weights, config.seed)
    trained = train(config, spec, net, paths, samples.labels, classes, train_rows, val_rows, progress, on_epoch,
                    on_recipe, resume_path, _identity(config, spec, weights.sha256, classes))
    best = next(e for e in trained.history if e.epoch == trained.best_epoch)
    resolved = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    resolved.update({k: c.value for k, c in trained.recipe.choices.items()})
    meta = {
        "model": spec.name, "weights": config.weights, "base_weights_sha256": weights.sha256, "classes": classes,
        "data_config": trained.data_config.to_json(), "config": json.dumps(resolved),
        "recipe": json.dumps(trained.recipe.to_dict()),
        "best_epoch": trained.best_epoch, "val_loss": None if math.isnan(best.val_loss) else best.val_loss,
        "val_accuracy": None if math.isnan(best.val_accuracy) else best.val_accuracy,
        "train_images": len(train_rows), "val_images": len(val_rows),
    }
    checkpoint_file.write(config.output, trained.net.state_dict(), meta)
    resume_path.unlink(missing_ok=True)
    return FinetuneResult(config.output, classes, trained.history, trained.best_epoch, trained.audit,
                          trained.trainable, len(train_rows), len(val_rows), trained.skipped, trained.resumed_from,
                          {"total": time.perf_counter() - t_start}, trained.recipe, trained.lr_finding)

