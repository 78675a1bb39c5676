"""Classes by name: a file's labels in the label space of a model (or of a training file).

A label is an index into its own file's class list, so two files may number
the same class differently, or hold only some of the classes. `fit --test`,
`evaluate` and `predict` all go through :func:`rows_for_model`, which maps by
name and never by position.
"""
from __future__ import annotations

import numpy as np

from ..errors import UsageError
from .rows import FileRows, labelled_file_rows


def match_classes(file_classes: list[str], model_classes: list[str]) -> np.ndarray:
    """For each of ``file_classes``, its index in ``model_classes``, or -1 where the model lacks it."""
    where = {name: i for i, name in enumerate(model_classes)}
    return np.asarray([where.get(name, -1) for name in file_classes], dtype=np.int64)


def rows_for_model(fs, layer: str, model_classes: list[str], role: str, model_name: str = "the model") -> tuple[FileRows, int]:
    """The valid, labelled rows of ``fs`` with labels renumbered into ``model_classes`` by name, and how
    many rows were skipped (invalid or unlabelled).

    Raises:
        UsageError: the file has no valid labelled rows, or rows of a class ``model_name`` never saw.
    """
    rows, skipped = labelled_file_rows(fs, layer, role)
    if not len(rows):
        raise UsageError(f"{fs.path.name} ({role}) has no valid, labelled rows ({skipped} invalid or unlabelled); "
                         f"see `featpipe info {fs.path} --errors`")
    mapping = match_classes(fs.classes, model_classes)
    labels = mapping[rows.labels]
    unknown = np.unique(rows.labels[labels < 0])
    if len(unknown):
        names = [fs.classes[int(c)] for c in unknown]
        count = int((labels < 0).sum())
        raise UsageError(
            f"{fs.path.name} ({role}) has rows of class {names[0]!r}"
            + (f" and {len(names) - 1} more" if len(names) > 1 else "")
            + f" ({count} rows) that {model_name} never saw (it knows {', '.join(model_classes[:8])}"
            + (", ..." if len(model_classes) > 8 else "")
            + "); remove those rows, or fit again with images of that class"
        )
    return rows.with_labels(labels), skipped


def classes_without_rows(labels: np.ndarray, model_classes: list[str], role: str) -> list[str]:
    """One warning per class of the model that has no rows among ``labels`` (their scores are not measured)."""
    missing = [name for i, name in enumerate(model_classes) if not np.any(labels == i)]
    if not missing:
        return []
    shown = ", ".join(repr(m) for m in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return [f"{len(missing)} class(es) have no {role} rows: {shown}; their precision and recall are not "
            "measured and the macro averages leave them out"]


def evaluate_file(mf, fs, name: str = "the model") -> tuple[dict, int, int, list[str]]:
    """Metrics of the model file ``mf`` on the labelled feature file ``fs``, classes matched by name.

    Returns (metrics, rows evaluated, rows skipped, warnings). A block at a time: any file size.

    Raises:
        UsageError: features of another extractor, no valid labelled rows, a class the model never saw.
    """
    from ..files.classifier import same_images_warning
    from .metrics import evaluate_rows

    mf.check_features(fs)
    rows, skipped = rows_for_model(fs, mf.layer, mf.classes, "evaluation", name)
    warnings = classes_without_rows(rows.labels, mf.classes, "evaluation")
    warnings += same_images_warning(mf.images_digest, fs, "evaluation")
    return evaluate_rows(mf.pipeline, rows, mf.classes), len(rows), skipped, warnings
