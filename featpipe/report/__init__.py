"""The HTML report: the images behind a fit's, a guide's or a fine-tuning's numbers, on one page.

``DIR/index.html`` opens from disk without a server. It shows the summary (data, extractor,
classifier or recipe, held-out metrics with their calibration), the guide's evidence where a guide
ran, the mistakes per class, the most confidently wrong images, the most confused pairs of classes,
the likely label errors (cleanlab, out-of-fold; also in ``label_issues.csv``) and a t-SNE map.

Modules, one role each: ``gather`` (what a report is made of, from each command's results),
``label_issues`` (out-of-fold probabilities and cleanlab), ``embedding`` (the map), ``thumbnails``
(small JPEGs, read with extraction's readers and decoder), ``page`` (Jinja2, autoescaped), and
``build`` (choosing what to show, and writing it all).
"""
from __future__ import annotations

from pathlib import Path

# Files a report writes itself; any other PNG in the folder is one of the command's plots, shown at the end.
OWN_PNGS = ("map.png", "calibration.png")


def existing_figures(folder: Path) -> list[tuple[str, str]]:
    """(caption, file name) of the plots the command already wrote into ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [(p.stem.replace("_", " "), p.name) for p in sorted(folder.glob("*.png")) if p.name not in OWN_PNGS]


def from_model(features: str | Path, model: str | Path, folder: str | Path, command: str = "report"):
    """The report of a saved fit (``featpipe report FEATURES MODEL -o DIR``): nothing is refitted.

    Raises:
        UsageError: see :func:`featpipe.report.gather.from_model`.
    """
    from .build import build
    from .gather import from_model as gather

    folder = Path(folder)
    data = gather(Path(features), Path(model), command)
    return build(data, folder, existing_figures(folder))


def from_fit(config):
    """The report of the fit just run with ``config`` (a FitConfig with ``report`` set), into that folder:
    judged on ``config.test`` where there is one, else on the test rows of the split the model records."""
    return from_model(config.test or config.features, config.output, config.report, command="fit")


def from_guide(result, folder: str | Path):
    """The report of a guide run (its sample, predicted out of fold), beside its sweep and learning curve."""
    from .build import build
    from .gather import from_guide as gather

    folder = Path(folder)
    return build(gather(result), folder, existing_figures(folder))


def from_finetune(result, config, folder: str | Path, progress=None):
    """The report of a fine-tuning run: its images through the fine-tuned network (kept as
    ``folder/features.h5``), judged on its validation images, beside its curves."""
    from .build import build
    from .gather import from_finetune as gather

    folder = Path(folder)
    return build(gather(result, config, folder, progress), folder, existing_figures(folder))
