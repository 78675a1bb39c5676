"""--flip and --augment auto: what the linear probe says of mirrored and augmented views of held-out images."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from . import recipe as recipe_rules
from .data import Images, make_loader, train_transform
from .probe import linear_probe, pooled

FLIP_FOLDS = 3  # out-of-fold probes over the training rows, so that every image can vote on mirroring


def choose_views(config, recipe, net, spec, head, paths, labels, train_rows, val_rows, X, y, X_val, y_val, C,
                 data_config, preprocess, device, n_classes) -> None:
    """--flip and --augment: given, or from the probe's accuracy on views of images it did not fit.

    Flips are judged on every image, training rows included (each by a probe fitted on the other training
    rows): whether mirroring changes the class is a property of the data, and the paired difference needs
    hundreds of images to tell a drop of a few points from noise (docs/finetune.md). Augmentation is judged on the held-out rows (the validation images; without them, a fifth of the
    training images) by the head just fitted."""
    if config.flip == "auto":
        check = _mirror_check(net, spec, head, paths, labels, train_rows, val_rows, X, y, X_val, y_val, C, config,
                              preprocess, device, n_classes)
        flip = not recipe_rules.flip_hurts(check)
        recipe.set("flip", flip, True, f"the probe's accuracy on {check.images} images it did not fit is "
                   f"{check.original:.3f}, mirrored {check.view:.3f} (noise {check.noise:.3f}): " + (
                       "mirroring keeps the class" if flip else "mirroring changes what they show; no flips"))
    else:
        recipe.set("flip", bool(config.flip), False)
    if config.augment == "auto":
        _choose_augment(config, recipe, net, spec, head, paths, labels, train_rows, val_rows, X, y, X_val, y_val,
                        data_config, preprocess, device, n_classes)
    else:
        recipe.set("augment", config.augment, False)


def _pooled_views(net, spec, paths, labels, rows, preprocess, device, batch_size, seed, transform=None,
                  mirror=False) -> np.ndarray:
    torch.manual_seed(seed)
    loader = make_loader(Images([paths[i] for i in rows], labels[rows], preprocess, transform), batch_size, False, 0)
    return pooled(net, spec, loader, preprocess, device, mirror=mirror)[0]


def _predict(W: torch.Tensor, b: torch.Tensor, features: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits = torch.from_numpy(features).float() @ W.detach().float().cpu().T + b.detach().float().cpu()
    return logits.argmax(1).numpy()


def _mirror_check(net, spec, head, paths, labels, train_rows, val_rows, X, y, X_val, y_val, C, config, preprocess,
                  device, n_classes) -> recipe_rules.ViewCheck:
    """The probe's paired accuracy on originals and mirror images of every image it did not fit."""
    from sklearn.model_selection import StratifiedKFold

    def mirrored(rows):
        return _pooled_views(net, spec, paths, labels, rows, preprocess, device, config.batch_size, config.seed,
                             mirror=True)

    original, view = [], []
    if len(val_rows):
        original.append(_predict(head.weight, head.bias, X_val) == y_val)
        view.append(_predict(head.weight, head.bias, mirrored(val_rows)) == y_val)
    counts = np.bincount(y)
    folds = min(FLIP_FOLDS, int(counts[counts > 0].min()))
    if folds >= 2:
        X_mirror = mirrored(train_rows)
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed)
        for fit, held in cv.split(X, y):
            probe = nn.Linear(X.shape[1], n_classes)
            linear_probe(probe, X[fit], y[fit], n_classes, C=C)
            original.append(_predict(probe.weight, probe.bias, X[held]) == y[held])
            view.append(_predict(probe.weight, probe.bias, X_mirror[held]) == y[held])
    return recipe_rules.views_check(np.concatenate(original), np.concatenate(view))


def _choose_augment(config, recipe, net, spec, head, paths, labels, train_rows, val_rows, X, y, X_val, y_val,
                    data_config, preprocess, device, n_classes) -> None:
    """The strongest augmentation whose views keep AUGMENT_KEEPS of the probe's accuracy on held-out originals."""
    if len(val_rows):
        W, b, held, y_held, X_held = head.weight, head.bias, val_rows, y_val, X_val
    else:
        from sklearn.model_selection import train_test_split

        fit, held = train_test_split(np.arange(len(train_rows)), test_size=0.2, random_state=config.seed,
                                     stratify=y if np.bincount(y).min() >= 2 else None)
        probe = nn.Linear(X.shape[1], n_classes)
        linear_probe(probe, X[fit], y[fit], n_classes)
        W, b, y_held, X_held, held = probe.weight, probe.bias, y[held], X[held], train_rows[held]
    originals = _predict(W, b, X_held) == y_held
    tried = []
    chosen = "none"
    for strength in recipe_rules.AUGMENT_ORDER:
        transform = train_transform(data_config, strength, recipe["flip"])
        views = _pooled_views(net, spec, paths, labels, held, preprocess, device, config.batch_size, config.seed,
                              transform)
        check = recipe_rules.views_check(originals, _predict(W, b, views) == y_held)
        tried.append(f"{strength} views {check.view:.3f}")
        if recipe_rules.augment_keeps(check):
            chosen = strength
            break
    recipe.set("augment", chosen, True,
               f"the probe's accuracy on held-out originals {check.original:.3f}, on {', '.join(tried)}; "
               f"the strongest that keeps {recipe_rules.AUGMENT_KEEPS:.0%} of it"
               + ("" if chosen != "none" else ": none does, so no augmentation"))
