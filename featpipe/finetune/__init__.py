"""Fine-tuning: LP-FT with a stated BatchNorm policy, and a checkpoint extract can load.

    >>> from featpipe.finetune import FinetuneConfig, finetune
    >>> result = finetune(FinetuneConfig("images/", "ft.pt", model="tf_efficientnet_lite0", unfreeze="2"))

Modules: ``blocks`` (stages to unfreeze, learning rates, BatchNorm policy, the
audit of what changed), ``data`` (decoding, augmentation), ``train`` (the
linear probe, the training loop, resume, the checkpoint).
"""
from .train import Epoch, FinetuneConfig, FinetuneResult, finetune

__all__ = ["Epoch", "FinetuneConfig", "FinetuneResult", "finetune"]
