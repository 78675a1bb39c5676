"""What a stage measured or trained on, as one hash: its settings and every input image's identity.

The guide and the finetune stage keep their result while it is current: a rerun with the same images and
settings reuses it; a changed image, label or setting makes it stale. (Extraction and the fit have their own
records: the feature file's request and the model file's fit fingerprint.)
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import fields
from pathlib import Path

from .. import identity


def of_run(config, not_measured: tuple[str, ...]) -> str:
    """The fingerprint of a run of ``config`` (a dataclass with an ``input``): every field but ``not_measured``
    (where and how fast it runs, not what it makes), and the identity of ``config.input``."""
    settings = {f.name: str(getattr(config, f.name)) for f in fields(config) if f.name not in not_measured}
    return hashlib.sha256(json.dumps([settings, input_identity(config.input)], sort_keys=True).encode()).hexdigest()


def input_identity(input) -> str:
    """The identity of labelled images (their paths, labels, sizes and times), or of a feature file's rows."""
    from ..extraction.sources import discover
    from ..store import load

    path = Path(input)
    if path.suffix.lower() in (".h5", ".hdf5") and path.is_file():  # a feature file, as the guide tells one
        return identity.features_fingerprint(load(path).meta)
    samples = discover(input)
    return identity.images_digest(samples.paths, samples.labels, samples.classes, samples.image_stats())
