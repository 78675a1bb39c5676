"""`featpipe fit`, `featpipe evaluate`, `featpipe predict`: classifiers on cached features."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..classify import CLASSIFIERS, FitConfig, fit, load_classifier
from ..classify.classes import evaluate_file
from ..classify.fit import FitResult, FitRow, HeadSettings, sanity_check, write_report
from ..classify.rows import labelled_file_rows
from ..errors import UsageError
from ..predict import predict
from ..settings import HEADS, PREDICTIONS_CSV
from ..store import load
from . import _common as common
from . import app, user_errors
from ._common import Optimizer, Schedule, choices, listed, say_written, while_working, with_progress


def _table(result: FitResult) -> str:
    """The comparison: the columns that chose (validation or CV, training rows only) apart from the
    columns that report (the test rows, for the refitted classifiers only)."""
    rows, best = result.rows, result.best
    with_cv = any(r.cv for r in rows)
    with_val = any(r.validation for r in rows)
    pick = f" {'CV accuracy':>16}" if with_cv else (f" {'accuracy':>9} {'log loss':>9} {'ECE':>6}" if with_val else "")
    test = f" {'accuracy':>9} {'bal. acc':>9} {'log loss':>9} {'ECE':>6} {'macro F1':>9}"
    lines = []
    if pick:
        lines.append(f"{'':12}{'  choose: ' + ('CV on training rows' if with_cv else 'validation rows'):<{len(pick)}}"
                     f"  report: test rows (touched once)")
    lines.append(f"{'classifier':12}{pick}{test} {'fit s':>8}")
    order = sorted(rows, key=lambda r: (r.reason is not None, -(r.score or 0), -(r.metrics or {}).get("accuracy", 0)))
    for r in order:
        if r.reason:
            lines.append(f"{r.classifier:12} skipped: {r.reason}")
            continue
        if with_cv:
            chose = f" {r.cv[0]:8.4f} ± {r.cv[1]:.3f}"
        elif with_val:
            v = r.validation
            chose = f" {v['accuracy']:9.4f} {v['log_loss']:9.4f} {v['ece']:6.3f}"
        else:
            chose = ""
        m = r.metrics
        tested = (f" {m['accuracy']:9.4f} {m['balanced_accuracy']:9.4f} {m['log_loss']:9.4f} {m['ece']:6.3f} "
                  f"{m['macro_f1']:9.4f}" if m else f" {'(not refitted: test rows untouched)':>46}")
        mark = "  <- chosen, saved" if r.classifier == best else ("  (saved)" if r.path else "")
        lines.append(f"{r.classifier:12}{chose}{tested} {r.fit_seconds:8.1f}{mark}")
    if pick:
        lines.append(f"chosen by: {result.rule}")
    lines.append("ECE: expected calibration error of the top probability (0 = probabilities match the accuracy)")
    return "\n".join(lines)


def print_fit(result: FitResult) -> None:
    """What `fit` and `run` print: rows, warnings, search tables, the comparison, the saved file."""
    typer.echo(f"{result.n_train} training rows"
               + (f" ({result.n_validation} of them held out to compare the classifiers)" if result.n_validation else "")
               + (f" plus {result.extra['augmented_rows']} augmented views of the training images"
                  if result.extra.get("augmented_rows") else "")
               + f", {result.n_test} test rows"
               + (f", {result.skipped_invalid} invalid or unlabelled rows skipped" if result.skipped_invalid else "")
               + ("; heads streamed from the file" if result.extra.get("streamed") else "")
               + (f" ({', '.join(result.extra['loaded'])} held the features in memory)"
                  if result.extra.get("loaded") else ""))
    for w in result.warnings:
        typer.secho(f"warning: {w}", fg=typer.colors.YELLOW, err=True)
    for row in result.rows:
        if row.tried:
            typer.echo(_search_table(row))
    typer.echo(_table(result))
    typer.echo(f"saved {result.best} to {result.output}")


def _search_progress(name: str, done: int, total: int, best: float) -> None:
    """One line rewritten in place on a terminal; a line per tenth of the trials otherwise (a log file)."""
    line = f"search {name}: {done}/{total} trials, best CV accuracy so far {best:.4f}"
    if sys.stderr.isatty():
        typer.echo(f"\r{line}", err=True, nl=done == total)
    elif done == total or done % max(1, total // 10) == 0:
        typer.echo(line, err=True)


def _writable(path: Path | None, option: str) -> None:
    """A one-line usage error, before any work, when ``path`` would go into a folder that does not exist."""
    if path is not None and not path.parent.is_dir():
        raise UsageError(f"{option} {str(path)!r}: folder {str(path.parent)!r} does not exist; create it or choose "
                         f"another {option}")


Head = choices("Head", HEADS)  # lr-find's choice, from the library's list


def _search_table(row: FitRow, shown: int = 10) -> str:
    lines = [f"random search for {row.classifier}: {len(row.tried)} configurations, best first"]
    for t in row.tried[:shown]:
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["params"].items())
        lines.append(f"  {t['cv_accuracy']:.4f} ± {t['cv_std']:.3f}  {params}")
    if len(row.tried) > shown:
        lines.append(f"  ... {len(row.tried) - shown} more in --report metrics.json")
    return "\n".join(lines)


@app.command("fit")
@user_errors
def fit_command(
    features: Annotated[Path, typer.Argument(help="A feature file from `featpipe extract`.")],
    output: Annotated[Optional[Path], common.output("Model file to write (.skops); not needed with --sanity.")] = None,
    classifier: Annotated[list[str], common.list_option("--classifier", help=f"The classifiers to compare: {', '.join(CLASSIFIERS)}.")] = ["logreg"],  # noqa: B006 - Typer needs a literal default
    layer: Annotated[Optional[str], typer.Option(help="Feature layer (default: pooled).")] = None,
    test_size: Annotated[float, typer.Option(help="Fraction of labelled rows held out as test rows, stratified.")] = 0.2,
    test: Annotated[Optional[Path], typer.Option(help="A second feature file as the test set instead of a split.")] = None,
    validation_size: Annotated[float, typer.Option(help="Without --cv: fraction of the training rows the classifiers are compared on.")] = 0.2,
    seed: Annotated[int, common.seed("Seed of the splits and the classifiers.")] = 0,
    keep_all: Annotated[bool, typer.Option(help="Refit and save every classifier, not just the chosen one.")] = False,
    report: Annotated[Optional[Path], common.report("Folder for metrics.json, plots and index.html: the HTML report (mistakes, confused pairs, likely label errors, a map).")] = None,
    cv: Annotated[Optional[int], typer.Option(help="Compare by stratified K-fold CV on the training rows instead of a validation split.")] = None,
    search: Annotated[Optional[int], typer.Option(help="Random search over N configurations (log-uniform ranges), CV folds from --cv (default 5).")] = None,
    sanity: Annotated[bool, typer.Option(help="Only check that each classifier can overfit 20 training samples.")] = False,
    stream: Annotated[Optional[bool], typer.Option("--stream/--in-memory", help="Train the linear and mlp heads from mini-batches read from the file, memory bounded by the batch size (default: when the features would not fit in memory).", show_default=False)] = None,
    lr: Annotated[Optional[float], typer.Option(help="Heads: learning rate (`featpipe lr-find` suggests one).", show_default=False)] = None,
    optimizer: Annotated[Optional[Optimizer], typer.Option(help="Heads: the optimizer.", show_default=False)] = None,
    schedule: Annotated[Optional[Schedule], typer.Option(help="Heads: learning-rate schedule (linear's default step: /10 at 1/2 and 3/4 of the epochs; cyclic: triangular; sgdr: cosine with warm restarts; cosine: one half cosine down to 0).", show_default=False)] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Heads: most epochs.", show_default=False)] = None,
    batch_size: Annotated[Optional[int], common.batch_size("Heads: rows per mini-batch.", show_default=False)] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="Heads: L2 penalty (linear default: 1/rows, logistic regression's C=1).", show_default=False)] = None,
    use_augmented: Annotated[bool, typer.Option(help="Also train on the training images' augmented views (extract --augment-views K); validation and test rows stay original images.")] = False,
    quiet: Annotated[bool, common.quiet()] = False,
) -> None:
    """Train classifiers on cached features, choose one on training rows only, report it on the test rows, save it."""
    names = listed(classifier)
    head = HeadSettings(lr, optimizer.value if optimizer else None, schedule.value if schedule else None, epochs,
                        batch_size, weight_decay)
    config = FitConfig(features, output, names, layer, test_size, test, seed, keep_all, report, cv, search, stream,
                       validation_size, head, use_augmented)
    if sanity:
        failed = False
        for name, acc, n in sanity_check(config):
            ok = acc >= 0.99
            failed |= not ok
            typer.echo(f"sanity {name:8} training accuracy on {n} samples: {acc:.1%}  "
                       + ("ok: it can overfit" if ok else "CANNOT OVERFIT: check features and labels, "
                          "lower the regularisation or raise the learning rate"))
        raise typer.Exit(1 if failed else 0)
    result = fit(config, progress=_search_progress if search and not quiet else None)
    print_fit(result)
    if report is not None:
        from ..report import from_fit

        say_written(from_fit(config))


@app.command("evaluate")
@user_errors
def evaluate_command(
    model: Annotated[Path, typer.Argument(help="A model file from `featpipe fit`.")],
    features: Annotated[Path, typer.Argument(help="A labelled feature file of the same extractor.")],
    report: Annotated[Optional[Path], common.report("Folder for metrics.json and the confusion matrix.")] = None,
) -> None:
    """Metrics of a saved model on a labelled feature file (classes matched by name)."""
    mf = load_classifier(model)
    fs = load(features)
    metrics, n, skipped, warnings = evaluate_file(mf, fs, f"model {model.name}")
    for w in warnings:
        typer.secho(f"warning: {w}", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"{mf.classifier} on {fs.path.name}: {n} rows" + (f" ({skipped} skipped)" if skipped else ""))
    for key in ("accuracy", "balanced_accuracy", "log_loss", "ece", "macro_f1"):
        typer.echo(f"{key:18} {metrics[key]:.4f}")
    typer.echo(f"{'class':20} {'precision':>9} {'recall':>9} {'support':>8}")
    for name, m in metrics["per_class"].items():
        typer.echo(f"{name:20} {m['precision']:9.4f} {m['recall']:9.4f} {m['support']:8d}")
    if report is not None:
        write_report(report, [FitRow(mf.classifier, metrics, 0.0)], mf.classes)


@app.command("predict")
@user_errors
def predict_command(
    model: Annotated[Path, typer.Argument(help="A model file from `featpipe fit`, or a checkpoint from `featpipe finetune` (.pt).")],
    input: Annotated[Path, typer.Argument(help="A feature file (.h5) of the same extractor, or images: a folder or a CSV list.")],
    output: Annotated[Optional[Path], common.output("CSV to write (default: stdout).")] = None,
    top_k: Annotated[int, typer.Option(help="Classes listed per row, most probable first.")] = 3,
    device: Annotated[str, common.device(f"For images: {common.DEVICE_HELP}")] = "auto",
    batch_size: Annotated[int, common.batch_size("For images: images per forward pass.")] = 32,
    features: Annotated[Optional[Path], typer.Option(help="For images: keep the extracted features here.")] = None,
    quiet: Annotated[bool, common.quiet()] = False,
) -> None:
    """Predict the class of every image: from a feature file, or from images (extracted with the model's extractor)."""
    _writable(output, "--output")
    _writable(features, "--features")
    PREDICTIONS_CSV.check(top_k=top_k)  # before any work
    result = with_progress(lambda progress: predict(model, input, device=device, batch_size=batch_size,
                                                    features_out=features, progress=progress), quiet, "predict")
    if output is None:
        result.write_csv(sys.stdout, top_k)
        return
    with open(output, "w", newline="") as out:
        result.write_csv(out, top_k)
    typer.echo(f"wrote {len(result.paths)} predictions to {output}", err=True)


@app.command("lr-find")
@user_errors
def lr_find_command(
    features: Annotated[Path, typer.Argument(help="A labelled feature file.")],
    output: Annotated[Path, common.output("Plot of loss versus learning rate (PNG).")] = Path("lr_find.png"),
    classifier: Annotated[Head, typer.Option(help="The head to test.")] = Head.linear,
    optimizer: Annotated[Optimizer, typer.Option(help="The optimizer.")] = Optimizer.adam,
    layer: Annotated[Optional[str], typer.Option(help="Feature layer (default: pooled).")] = None,
    steps: Annotated[int, typer.Option(help="Pace of the sweep: mini-batches over which the rate grows from 1e-8 to 1; it goes on until the loss diverges.")] = 200,
    batch_size: Annotated[int, common.batch_size("Rows per mini-batch.")] = 64,
    seed: Annotated[int, common.seed("Seed.")] = 0,
    quiet: Annotated[bool, common.quiet()] = False,
) -> None:
    """The learning-rate range test for a head: plot the loss as the rate grows, suggest a rate."""
    from ..classify.lr_find import lr_find, plot_lr_find

    _writable(output, "--output")
    classifier, optimizer = classifier.value, optimizer.value
    fs = load(features)
    name = fs.resolve_layer(layer)
    rows, skipped = labelled_file_rows(fs, name, "lr-find")
    if not len(rows):
        raise UsageError(f"{fs.path.name} has no valid, labelled rows ({skipped} invalid or unlabelled); "
                         f"see `featpipe info {fs.path} --errors`")
    finding = while_working(lambda: lr_find(rows, classifier, optimizer, steps=steps, batch_size=batch_size, seed=seed),
                            quiet, f"lr-find: the range test of the {classifier} head")
    plot_lr_find(finding, output, f"{classifier} head, {optimizer}, on {fs.path.name} ({name})")
    typer.echo(f"{len(finding.lrs)} steps, rates {finding.lrs[0]:.2g} to {finding.lrs[-1]:.2g}; plot in {output}")
    typer.echo(finding.describe().replace("featpipe fit --lr", f"featpipe fit --classifier {classifier} "
                                          f"--optimizer {optimizer} --lr"))
