"""Fine-tuning: LP-FT with a stated BatchNorm policy, and a checkpoint extract can load.

    >>> from featpipe.finetune import FinetuneConfig, finetune
    >>> result = finetune(FinetuneConfig("images/", "ft.pt", model="tf_efficientnet_lite0", unfreeze="2"))

Modules: ``config`` (the settings and their checks), ``recipe`` (the auto settings),
``blocks`` (stages to unfreeze, learning rates, BatchNorm policy, the audit of
what changed), ``data`` (decoding, augmentation, batches), ``probe`` (the linear
probe), ``view_choice`` (flips, augmentation), ``lr_range`` (the range test),
``loop`` (one epoch: training and evaluation passes, the optimizer, the warm-up), ``train``
(the run: its phases, resume), ``checkpoint`` (the file, written and read), ``report`` (--report's curves).
"""
from .config import FinetuneConfig
from .train import Epoch, FinetuneResult, finetune

__all__ = ["Epoch", "FinetuneConfig", "FinetuneResult", "finetune"]
