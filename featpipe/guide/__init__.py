"""The guide: where the user's data sits in the transfer-learning 2x2 table, measured, and what to do.

    >>> from featpipe.guide import GuideConfig, guide
    >>> result = guide(GuideConfig("images/", models=("tf_efficientnet_lite0",)))
    >>> result.decision.strategy, result.decision.recommended_layer

Modules: ``sample`` (the stratified sample and its checks), ``probe``
(cross-validated logistic regression, paired noise), ``logme`` (the evidence
score), ``decide`` (the table and its thresholds), ``config`` (the settings), ``run`` (the measurements),
``result`` (what was measured, as --json),
``report`` (plots and JSON). The layers compared are the network's stages
(``featpipe.models.stages``).
"""
from .config import GuideConfig
from .decide import Decision
from .result import GuideResult, LayerScore, ModelReport
from .run import guide

__all__ = ["Decision", "GuideConfig", "GuideResult", "LayerScore", "ModelReport", "guide"]
