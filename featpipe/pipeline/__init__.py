"""Pipelines: a whole job (the guide, extract, fit, then finetune) from one TOML file.

    [guide]                        # the options of `featpipe guide` (optional; see guide.py)
    output = "../out/guide.json"
    folds = 5

    [extract]                      # the options of `featpipe extract`
    input = "../data/digits"       # paths are relative to the TOML file
    output = "../out/digits.h5"
    model = "tf_efficientnet_lite0"
    layer = ["guide"]              # the guide's recommended layer (the fit learns from it too)

    [fit]                          # the options of `featpipe fit` (optional)
    output = "../out/digits.skops"
    classifier = ["logreg", "svm"]

    [finetune]                     # the options of `featpipe finetune` (optional; see finetune.py)
    output = "../out/finetuned.pt"

Each table's keys are its command's options, spelled as on the command line without ``--`` and with ``_`` for
``-`` (``--augment-views`` is ``augment_views``); schema.py generates them from the config dataclasses and
their settings groups (featpipe/settings.py). The keys of the previous release (``layers``, ``classifiers``,
extract's ``augment``, guide's ``cv``) still read, each with a deprecation line naming its line.

The stages run in this order. The guide first, since [extract] and [fit] may follow its advice; then extract
and fit; fine-tuning last: it is the longest stage, and the fit is the frozen-feature baseline its network
should beat, so the baseline (and its report) is there before the long wait, and an interrupted fine-tuning
leaves the rest done. [finetune] does not read the guide's advice: it trains with its own settings (``auto``
ones measured on the images, as `featpipe finetune` does); where the guide advises fine-tuning without a
[finetune] table, `featpipe run` prints the guide's command as the next step.

A stage whose output is already complete is skipped: the guide when its result file was measured on these
very images with these very settings, extraction by its own resume logic, fitting when the model file was
trained on these very features with these very settings, fine-tuning when its checkpoint was trained on these
very images with these very settings (an interrupted fine-tuning resumes). The fit's ``report`` folder gets the
HTML report (``index.html``) whenever the fit runs, and when the fit is skipped but the folder has no report
yet (no refit: the saved model is judged); the fine-tuning's whenever it runs. A bad key or value is reported
with its line.

Modules: ``schema`` (the keys), ``load`` (reading a file), ``stages`` (running it), ``guide`` and ``finetune``
(those stages), ``fingerprint`` (what the guide and fine-tuning were run on).
"""
from .load import Pipeline, load_pipeline
from .stages import PipelineResult, fit_fingerprint, run_pipeline

__all__ = ["Pipeline", "PipelineResult", "fit_fingerprint", "load_pipeline", "run_pipeline"]
