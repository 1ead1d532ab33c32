"""Every figure a run writes, as PNG files: a run's curves, a sweep's learning curves and learning-rate plot, and
an evaluation's confusion matrix and most confident errors. Each function takes the path(s) to write."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from mnist_jax.metrics import PRUNED, SELECTION, SPLITS


def _figure(figsize: tuple[float, float]):
    """A figure drawn off-screen, for a PNG file (no pyplot: no window, no global state). matplotlib is imported on
    first use: it takes a second or more to import on a slow CPU, which commands that draw nothing (predict, export,
    a run stopped before its end) do not pay."""
    from matplotlib.figure import Figure
    return Figure(figsize=figsize)


def _band(ax, x, values: np.ndarray, label: str) -> None:
    """Mean over the last axis as a line, min..max as a band."""
    ax.plot(x, np.nanmean(values, axis=-1), label=label, marker="o" if len(x) < 8 else None)
    ax.fill_between(x, np.nanmin(values, axis=-1), np.nanmax(values, axis=-1), alpha=0.2)


def run_curves(path: Path, title: str, rows: list[dict]) -> None:
    """A single run's loss (log axis) and accuracy against epoch, for train, validation and test."""
    epochs = [row["epoch"] for row in rows]
    fig = _figure((11, 4))
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for split in SPLITS:
            if f"{split}_{metric}" in rows[0]:
                ax.plot(epochs, np.array([row[f"{split}_{metric}"] for row in rows], dtype=float),
                        marker="o" if len(epochs) < 20 else None, label=split)
        ax.set(xlabel="epoch", ylabel=metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_yscale("log")
    fig.suptitle(f"{title}: train (as trained, over the epoch's batches), validation and test", fontsize=10)
    # fixed margins, wide enough for a log axis's "4x10^-2" labels: tight_layout would draw the figure an extra
    # time to measure them, 40% of the time this figure takes at the end of every run
    fig.subplots_adjust(left=0.09, right=0.985, bottom=0.12, top=0.88, wspace=0.2)
    fig.savefig(path, dpi=110)


def diverged_points(final: list[dict]) -> list[tuple[str, float, float]]:
    """(activation, lr, final validation accuracy) of each diverged member of a sweep's last metrics row: where
    validation_vs_lr.png marks it."""
    return [(m["activation"], m["lr"], m[SELECTION]) for m in final if m["diverged"]]


def sweep_curves(learning_curves: Path, validation_vs_lr: Path, rows: list[dict],
                 groups: list[tuple[str, list[int]]], title: str = "", selected: bool = True) -> dict[str, str]:
    """A sweep's learning curves (validation or, without it, test accuracy and train loss against epoch) of each
    group of members (label, indices: the selected cells, or every cell) and, with a validation split, final
    validation accuracy against lr, its diverged members marked x. `title` (the model and recipe) heads both
    figures; returns each written file's name and its title."""
    has_val = SELECTION in rows[0]["members"][0]
    accuracy = SELECTION if has_val else "test_accuracy"
    fig = _figure((11, 4))
    axes = fig.subplots(1, 2)
    for label, idx in groups:
        for ax, metric in zip(axes, (accuracy, "train_loss")):
            # a member that stopped training (successive halving) ends its curve where it stopped
            trained = [row for row in rows if all(row["members"][i].get(PRUNED, row["epoch"]) >= row["epoch"]
                                                  for i in idx)]
            _band(ax, [row["epoch"] for row in trained],
                  np.array([[row["members"][i][metric] for i in idx] for row in trained], dtype=float), label)
    for ax, metric in zip(axes, (accuracy, "train_loss")):
        ax.set(xlabel="epoch", ylabel=metric.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[1].set_yscale("log")
    prefix = f"{title}\n" if title else ""
    titles = {learning_curves.name: prefix + ("at the selected cells (mean over seeds, band min..max)"
                                              if selected else "every cell (mean over seeds, band min..max)")}
    fig.suptitle(titles[learning_curves.name], fontsize=10)
    fig.tight_layout()
    fig.savefig(learning_curves, dpi=110)
    if has_val:
        final = rows[-1]["members"]
        fig = _figure((6, 4))
        ax = fig.subplots()
        for activation in dict.fromkeys(m["activation"] for m in final):
            lrs = sorted(dict.fromkeys(m["lr"] for m in final if m["activation"] == activation))
            values = [[m[SELECTION] for m in final if (m["activation"], m["lr"]) == (activation, lr)] for lr in lrs]
            width = max(map(len, values))
            _band(ax, lrs, np.array([v + [np.nan] * (width - len(v)) for v in values], dtype=float), activation)
        diverged = diverged_points(final)
        if diverged:
            ax.scatter([lr for _, lr, _ in diverged], [accuracy for _, _, accuracy in diverged], marker="x",
                       color="black", s=40, zorder=3, label="diverged")
        titles[validation_vs_lr.name] = prefix + "validation accuracy against learning rate (mean, band min..max)"
        ax.set(xscale="log", xlabel="peak learning rate", ylabel="final validation accuracy")
        ax.set_title("\n".join(textwrap.wrap(title, 72) + [titles[validation_vs_lr.name].split("\n")[-1]]),
                     fontsize=9)  # a long recipe in two lines on this narrower figure
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(validation_vs_lr, dpi=110)
    return titles


def lineages(path: Path, rows: list[dict], names: list[str], title: str = "") -> dict[str, str]:
    """Population-based training: each member's hyperparameters over the epochs, one panel per hyperparameter,
    a line per member coloured by activation. Returns the file's name and its title."""
    activations = list(dict.fromkeys(m["activation"] for m in rows[0]["members"]))
    colours = {activation: f"C{i}" for i, activation in enumerate(activations)}  # the colour cycle's i-th colour
    fig = _figure((5 * max(1, len(names)), 4))
    axes = fig.subplots(1, max(1, len(names)), squeeze=False)
    epochs = [row["epoch"] for row in rows]
    for ax, name in zip(axes[0], names):
        for i, m in enumerate(rows[0]["members"]):
            ax.plot(epochs, [row["members"][i][name] for row in rows], color=colours[m["activation"]], alpha=0.5,
                    lw=1, label=m["activation"] if i == [n["activation"] for n in rows[0]["members"]].index(
                        m["activation"]) else None)
        ax.set(xlabel="epoch (hyperparameters the epoch trained with)", ylabel=name.replace("_", " "),
               yscale="log" if name in ("lr", "weight_decay") else "linear")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    heading = (f"{title}\n" if title else "") + "population-based training: each member's hyperparameters"
    fig.suptitle(heading, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return {path.name: heading}


def confusion_matrix(matrix, path: Path, title: str) -> None:
    fig = _figure((6.4, 5.6))
    ax = fig.subplots()
    shown = np.log1p(matrix)
    ax.imshow(shown, cmap="Blues")
    for t in range(10):
        for p in range(10):
            if matrix[t, p]:
                ax.text(p, t, str(matrix[t, p]), ha="center", va="center", fontsize=7,
                        color="white" if shown[t, p] > shown.max() / 2 else "black")
    ax.set(xticks=range(10), yticks=range(10), xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def confident_errors(images, labels, predicted, confidence, path: Path, count: int) -> int:
    """A grid of the most confidently wrong images, titled true -> predicted (probability)."""
    wrong = np.flatnonzero(predicted != labels)
    worst = wrong[np.argsort(-confidence[wrong])][:count]
    columns = 5
    rows = max(1, -(-len(worst) // columns))
    fig = _figure((columns * 1.6, rows * 1.8))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, worst):
        ax.imshow(images[i], cmap="gray")
        ax.set_title(f"{labels[i]} -> {predicted[i]} ({confidence[i]:.0%})", fontsize=8)
    fig.suptitle("most confidently wrong: true -> predicted (probability)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return len(worst)
