"""Pictures of a run: confusion matrices, per-AU F1 bars, predicted-vs-true VA densities; MAE reconstructions and
loss curves."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only, no display needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from utils import abaw, metrics  # noqa: E402


def close(figure) -> None:
    plt.close(figure)


def confusion_figure(confusion: np.ndarray, names, title: str):
    confusion = np.asarray(confusion, dtype=np.float64)
    rows = confusion.sum(1, keepdims=True)
    share = np.divide(confusion, rows, out=np.zeros_like(confusion), where=rows > 0)
    figure, axis = plt.subplots(figsize=(1.0 + 0.75 * len(names), 0.8 + 0.7 * len(names)))
    image = axis.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            axis.text(j, i, f"{int(confusion[i, j])}", ha="center", va="center", fontsize=8,
                      color="white" if share[i, j] > 0.5 else "black")
    axis.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axis.set_yticks(range(len(names)), names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    figure.colorbar(image, ax=axis, fraction=0.046, label="share of the true class")
    return figure


def au_f1_figure(f1_per_au, thresholds):
    figure, axis = plt.subplots(figsize=(8, 3.2))
    axis.bar(abaw.AU_NAMES, f1_per_au, color="tab:orange")
    for i, (value, threshold) in enumerate(zip(f1_per_au, thresholds)):
        axis.text(i, value + 0.01, f"{value:.2f}\nt={threshold:.2f}", ha="center", va="bottom", fontsize=7)
    axis.set_ylim(0, 1.15)
    axis.set_ylabel("F1")
    axis.set_title(f"per-AU F1 (mean {np.mean(f1_per_au):.3f})")
    return figure


def va_density_figure(va_pred, va_true):
    figure, axes = plt.subplots(1, 2, figsize=(8, 3.8))
    for axis, index, name in zip(axes, (0, 1), ("valence", "arousal")):
        known = va_true[:, index] != abaw.VA_MISSING
        x, y = va_true[known, index], va_pred[known, index]
        axis.hist2d(x, y, bins=40, range=[[-1, 1], [-1, 1]], cmap="viridis", cmin=1)
        axis.plot([-1, 1], [-1, 1], color="white", linewidth=0.8, linestyle="--")
        axis.set_xlabel(f"true {name}")
        axis.set_ylabel(f"predicted {name}")
        axis.set_title(f"{name}: CCC {metrics.ccc(y, x):.3f}" if known.any() else name)
    figure.tight_layout()
    return figure


def mtl_figures(task, outputs, tasks=("va", "expr", "au")) -> dict:
    """The validation figures of the given tasks: expression confusion, per-AU F1, VA density."""
    labels = task.val_annotations.targets
    va, expr, aus = task.decode(outputs)
    expr_true = labels[:, abaw.LABEL_EXPR]
    known = expr_true != abaw.EXPR_MISSING
    scores = metrics.mtl_metrics(va, expr, aus, labels)
    figures = {}
    if "expr" in tasks:
        confusion = metrics.confusion_matrix(expr[known], expr_true[known].astype(int), abaw.NUM_EXPR)
        figures["expr_confusion"] = confusion_figure(confusion, abaw.EXPR_NAMES,
                                                     f"expression (macro F1 {scores['f1_expr']:.3f})")
    if "au" in tasks:
        figures["au_f1"] = au_f1_figure(scores["f1_per_au"], task.au_thresholds)
    if "va" in tasks:
        figures["va_density"] = va_density_figure(va, labels[:, abaw.LABEL_VA])
    return figures


def lsd_figures(task, outputs) -> dict:
    scores = metrics.lsd_metrics(outputs.argmax(1), task.val_folders.labels)
    return {"lsd_confusion": confusion_figure(scores["confusion"], abaw.LSD_CLASSES,
                                              f"LSD validation (macro F1 {scores['f1']:.3f})")}


def label_scatter(predictions: np.ndarray, labels: np.ndarray, names, title: str):
    """One panel per label column: predicted against true values (a regression target), or the predicted
    probabilities of the frames or videos of each true class (a binary label); rows with a missing label (-1) left
    out."""
    columns = predictions.shape[1]
    figure, axes = plt.subplots(1, columns, figsize=(2.6 * columns + 0.4, 2.8), squeeze=False)
    for column, axis in enumerate(axes[0]):
        true, predicted = labels[:, column], predictions[:, column]
        known = true >= 0
        true, predicted = true[known], predicted[known]
        if np.isin(true, (0.0, 1.0)).all():
            bins = np.linspace(0, 1, 21)
            for value, colour in ((0.0, "tab:blue"), (1.0, "tab:orange")):
                axis.hist(predicted[true == value], bins=bins, alpha=0.6, color=colour, label=f"true {value:g}")
            axis.set_xlabel("predicted probability")
            axis.legend(fontsize=7)
        else:
            axis.scatter(true, predicted, s=8, alpha=0.6)
            axis.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
            axis.set_xlabel("true")
            axis.set_ylabel("predicted")
            axis.set_xlim(-0.05, 1.05)
            axis.set_ylim(-0.05, 1.05)
        axis.set_title(str(names[column]), fontsize=9)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def loss_curve_figure(log_path: str):
    """Training and validation loss per epoch from a run's ``log.jsonl`` (None when there is no epoch yet)."""
    import json
    import os

    if not os.path.isfile(log_path):
        return None
    epochs, train, val = [], [], []
    with open(log_path) as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if "epoch" not in record or "train" not in record:
                continue
            epochs.append(record["epoch"])
            train.append(record["train"].get("loss", np.nan))
            val.append(record.get("val", {}).get("loss", np.nan))
    if not epochs:
        return None
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(epochs, train, marker="o", label="training (random masks)")
    if np.isfinite(val).any():
        axis.plot(epochs, val, marker="s", label="validation (fixed masks)")
    axis.set_xlabel("epoch")
    axis.set_ylabel("reconstruction loss")
    axis.grid(alpha=0.3)
    axis.legend()
    return figure


def reconstruction_figure(views: list):
    """A grid of faces: one row per image, the columns original, masked input, reconstruction, and reconstruction
    with the visible patches pasted back (``views``: four uint8 (B, H, W, 3) arrays)."""
    titles = ("original", "masked input", "reconstruction", "visible patches pasted")
    rows = views[0].shape[0]
    figure, axes = plt.subplots(rows, 4, figsize=(4 * 1.6, rows * 1.6), squeeze=False)
    for row in range(rows):
        for column, view in enumerate(views):
            axis = axes[row][column]
            axis.imshow(view[row], interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(titles[column], fontsize=8)
    figure.tight_layout()
    return figure
