"""`featpipe fit`, `featpipe evaluate`, `featpipe predict`: classifiers on cached features."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..classify import CLASSIFIERS, FitConfig, fit, load_model
from ..classify.fit import FitRow, sanity_check, write_report
from ..classify.metrics import evaluate_rows
from ..classify.rows import labelled_file_rows
from ..predict import predict
from ..store import load
from . import app, user_errors


def _table(rows: list[FitRow], best: str) -> str:
    with_cv = any(r.cv for r in rows)
    cv_head = f" {'CV accuracy':>15}" if with_cv else ""
    lines = [f"{'classifier':12}{cv_head} {'accuracy':>9} {'bal. acc':>9} {'log loss':>9} {'macro F1':>9} {'fit s':>8}"]
    for r in sorted(rows, key=lambda r: -r.metrics["accuracy"]):
        m = r.metrics
        mark = "  <- best, saved" if r.classifier == best else ("  (saved)" if r.path else "")
        cv = (f" {r.cv[0]:8.4f} ± {r.cv[1]:.3f}" if r.cv else f" {'':>15}") if with_cv else ""
        lines.append(f"{r.classifier:12}{cv} {m['accuracy']:9.4f} {m['balanced_accuracy']:9.4f} {m['log_loss']:9.4f} "
                     f"{m['macro_f1']:9.4f} {r.fit_seconds:8.1f}{mark}")
    return "\n".join(lines)


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
    output: Annotated[Path, typer.Option("--output", "-o", help="Model file to write (.skops).")],
    classifier: Annotated[str, typer.Option(help=f"Comma-separated: {', '.join(CLASSIFIERS)}.")] = "logreg",
    layer: Annotated[Optional[str], typer.Option(help="Feature layer (default: pooled).")] = None,
    test_size: Annotated[float, typer.Option(help="Fraction of labelled rows held out, stratified.")] = 0.2,
    test: Annotated[Optional[Path], typer.Option(help="A second feature file as the test set instead of a split.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split and the classifiers.")] = 0,
    keep_all: Annotated[bool, typer.Option(help="Save every classifier, not just the best.")] = False,
    report: Annotated[Optional[Path], typer.Option(help="Folder for metrics.json and plots.")] = None,
    cv: Annotated[Optional[int], typer.Option(help="Stratified K-fold CV on the training rows.")] = None,
    search: Annotated[Optional[int], typer.Option(help="Random search over N configurations (log-uniform ranges), CV folds from --cv (default 5).")] = None,
    sanity: Annotated[bool, typer.Option(help="Only check that each classifier can overfit 20 training samples.")] = False,
    stream: Annotated[Optional[bool], typer.Option("--stream/--in-memory", help="Train the linear and mlp heads from mini-batches read from the file, memory bounded by the batch size (default: when the features would not fit in memory).", show_default=False)] = None,
) -> None:
    """Train classifiers on cached features, compare them on held-out rows, save the best."""
    names = tuple(n.strip() for n in classifier.split(",") if n.strip())
    config = FitConfig(features, output, names, layer, test_size, test, seed, keep_all, report, cv, search, stream)
    if sanity:
        failed = False
        for name, acc, n in sanity_check(config):
            ok = acc >= 0.99
            failed |= not ok
            typer.echo(f"sanity {name:8} training accuracy on {n} samples: {acc:.1%}  "
                       + ("ok: it can overfit" if ok else "CANNOT OVERFIT: check features and labels, "
                          "lower the regularisation or raise the learning rate"))
        raise typer.Exit(1 if failed else 0)
    result = fit(config)
    typer.echo(f"{result.n_train} training rows, {result.n_test} test rows"
               + (f", {result.skipped_invalid} invalid or unlabelled rows skipped" if result.skipped_invalid else "")
               + ("; heads streamed from the file" if result.extra.get("streamed") else "")
               + (f" ({', '.join(result.extra['loaded'])} held the features in memory)"
                  if result.extra.get("loaded") else ""))
    for row in result.rows:
        if row.tried:
            typer.echo(_search_table(row))
    typer.echo(_table(result.rows, result.best))
    typer.echo(f"saved {result.best} to {result.output}")


@app.command("evaluate")
@user_errors
def evaluate_command(
    model: Annotated[Path, typer.Argument(help="A model file from `featpipe fit`.")],
    features: Annotated[Path, typer.Argument(help="A labelled feature file of the same extractor.")],
    report: Annotated[Optional[Path], typer.Option(help="Folder for metrics.json and the confusion matrix.")] = None,
) -> None:
    """Metrics of a saved model on a labelled feature file."""
    mf = load_model(model)
    fs = load(features)
    mf.check_features(fs)
    rows, skipped = labelled_file_rows(fs, mf.extractor["layer"], "evaluation")
    metrics = evaluate_rows(mf.pipeline, rows, fs.classes)  # a block at a time: any file size
    typer.echo(f"{mf.classifier} on {fs.path.name}: {len(rows)} rows" + (f" ({skipped} skipped)" if skipped else ""))
    for key in ("accuracy", "balanced_accuracy", "log_loss", "macro_f1"):
        typer.echo(f"{key:18} {metrics[key]:.4f}")
    typer.echo(f"{'class':20} {'precision':>9} {'recall':>9} {'support':>8}")
    for name, m in metrics["per_class"].items():
        typer.echo(f"{name:20} {m['precision']:9.4f} {m['recall']:9.4f} {m['support']:8d}")
    if report is not None:
        write_report(report, [FitRow(mf.classifier, metrics, 0.0)], fs.classes)


@app.command("predict")
@user_errors
def predict_command(
    model: Annotated[Path, typer.Argument(help="A model file from `featpipe fit`.")],
    input: Annotated[Path, typer.Argument(help="A feature file (.h5) of the same extractor, or images: a folder or a CSV list.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="CSV to write (default: stdout).")] = None,
    top_k: Annotated[int, typer.Option(help="Classes listed per row, most probable first.")] = 3,
    device: Annotated[str, typer.Option(help="For images: auto, cpu, cuda or cuda:N.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="For images: images per forward pass.")] = 32,
    features: Annotated[Optional[Path], typer.Option(help="For images: keep the extracted features here.")] = None,
) -> None:
    """Predict the class of every image: from a feature file, or from images (extracted with the model's extractor)."""
    result = predict(model, input, device=device, batch_size=batch_size, features_out=features)
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
    output: Annotated[Path, typer.Option("--output", "-o", help="Plot of loss versus learning rate (PNG).")] = Path("lr_find.png"),
    classifier: Annotated[str, typer.Option(help="The head to test: linear or mlp.")] = "linear",
    optimizer: Annotated[str, typer.Option(help="sgd, momentum, nesterov, rmsprop or adam.")] = "adam",
    layer: Annotated[Optional[str], typer.Option(help="Feature layer (default: pooled).")] = None,
    steps: Annotated[int, typer.Option(help="Mini-batches over which the rate grows from 1e-8 to 1.")] = 200,
    batch_size: Annotated[int, typer.Option(help="Rows per mini-batch.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
) -> None:
    """The learning-rate range test for a head: plot the loss as the rate grows, suggest a rate."""
    from ..classify.lr_find import lr_find, plot_lr_find

    fs = load(features)
    name = fs.resolve_layer(layer)
    rows, _ = labelled_file_rows(fs, name, "lr-find")
    finding = lr_find(rows, classifier, optimizer, steps=steps, batch_size=batch_size, seed=seed)
    plot_lr_find(finding, output, f"{classifier} head, {optimizer}, on {fs.path.name} ({name})")
    stop = " (stopped when the loss diverged)" if finding.stopped_early else ""
    typer.echo(f"{len(finding.lrs)} steps{stop}; plot in {output}")
    typer.echo(f"suggested learning rate: {finding.suggestion:.2g} (steepest descent at {finding.steepest:.2g})")
