"""The fine-tuning checkpoint read back: the network with its head, its preprocessing, its classes (the file itself,
written and its metadata checked, is files/checkpoint.py's)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import models
from ..errors import WeightsError
from ..extraction.decode import BadImage, load_rgb
from ..extraction.preprocess import Preprocessor
from ..models.data_config import DataConfig
from ..models.weights import checkpoint_meta
from ..settings import PREDICT


@dataclass
class FineTuned:
    model: nn.Module  # eval mode, on the CPU
    data_config: DataConfig
    classes: list[str]
    meta: dict


def read_meta(path: str | Path) -> dict | None:
    """The featpipe metadata of a checkpoint, or None for a plain state dict (loaded with weights_only=True)."""
    return checkpoint_meta(path)


def load(path: str | Path) -> FineTuned:
    """The fine-tuned network of ``path``, built as it was trained.

    Raises:
        WeightsError: not a checkpoint written by `featpipe finetune`, or one that does not load safely.
    """
    meta = read_meta(path)
    if meta is None:
        raise WeightsError(f"{str(path)!r} is not a checkpoint written by `featpipe finetune` (no featpipe "
                           "metadata); for a plain state dict use `featpipe extract --weights` with --model")
    spec = models.resolve(meta["model"])
    model, _ = models.load_model(spec, str(path))
    return FineTuned(model.eval(), DataConfig.from_json(meta["data_config"]), list(meta["classes"]), meta)


def predict_proba(tuned: FineTuned, paths: list[Path], batch_size: int = 64,
                  device: str = "cpu") -> tuple[np.ndarray, list[str | None]]:
    """Class probabilities (N, C) for each image (NaN rows where an image cannot be decoded), and the reasons."""
    from ..extraction.devices import resolve_device

    target = torch.device(resolve_device(device, PREDICT))  # predict(checkpoint, images, device=...)
    net = tuned.model.to(target)
    preprocess = Preprocessor(tuned.data_config)
    probs = np.full((len(paths), len(tuned.classes)), np.nan, np.float32)
    reasons: list[str | None] = [None] * len(paths)
    for start in range(0, len(paths), batch_size):
        rows, crops = [], []
        for i in range(start, min(start + batch_size, len(paths))):
            try:
                crops.append(preprocess.image(load_rgb(paths[i])))
                rows.append(i)
            except BadImage as exc:
                reasons[i] = str(exc)
        if rows:
            with torch.inference_mode():
                x = preprocess.batch(torch.from_numpy(np.stack(crops)).to(target))
                probs[rows] = torch.softmax(net(x).float(), dim=1).cpu().numpy()
    return probs, reasons
