"""Every figure a run writes, as PNG files: a run's curves, a sweep's learning curves and learning-rate plot, and
an evaluation's confusion matrix and most confident errors. Each function takes the path(s) to write."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib
import numpy as np

from mnist_jax.metrics import SELECTION, SPLITS

matplotlib.use("Agg")  # file-only: every figure here is written to PNG, none shown
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


def _band(ax, x, values: np.ndarray, label: str) -> None:
    """Mean over the last axis as a line, min..max as a band."""
    ax.plot(x, np.nanmean(values, axis=-1), label=label, marker="o" if len(x) < 8 else None)
    ax.fill_between(x, np.nanmin(values, axis=-1), np.nanmax(values, axis=-1), alpha=0.2)


def run_curves(path: Path, title: str, rows: list[dict]) -> None:
    """A single run's loss (log axis) and accuracy against epoch, for train, validation and test."""
    epochs = [row["epoch"] for row in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def diverged_points(final: list[dict]) -> list[tuple[str, float, float]]:
    """(activation, lr, final validation accuracy) of each diverged member of a sweep's last metrics row: where
    validation_vs_lr.png marks it."""
    return [(m["activation"], m["lr"], m[SELECTION]) for m in final if m["diverged"]]


def sweep_curves(learning_curves: Path, validation_vs_lr: Path, rows: list[dict],
                 selection: list[dict] | None = None, title: str = "") -> dict[str, str]:
    """A sweep's learning curves (validation or, without it, test accuracy and train loss against epoch, at the
    selected lrs or else at every lr) and, with a validation split, final validation accuracy against lr, its
    diverged members marked x. `title` (the model and recipe) heads both figures; returns each written file's name
    and its title."""
    first = rows[0]["members"]
    has_val = SELECTION in first[0]
    groups = [(s["activation"], s["lr"]) for s in selection] if selection else \
        list(dict.fromkeys((m["activation"], m["lr"]) for m in first))
    accuracy = SELECTION if has_val else "test_accuracy"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [row["epoch"] for row in rows]
    for activation, lr in groups:
        idx = [i for i, m in enumerate(first) if (m["activation"], m["lr"]) == (activation, lr)]
        for ax, metric in zip(axes, (accuracy, "train_loss")):
            _band(ax, epochs, np.array([[row["members"][i][metric] for i in idx] for row in rows], dtype=float),
                  f"{activation}, lr {lr:g}")
    for ax, metric in zip(axes, (accuracy, "train_loss")):
        ax.set(xlabel="epoch", ylabel=metric.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[1].set_yscale("log")
    prefix = f"{title}\n" if title else ""
    titles = {learning_curves.name: prefix + ("at the selected learning rates (mean over seeds, band min..max)"
                                              if selection else "every learning rate (mean over seeds, band min..max)")}
    fig.suptitle(titles[learning_curves.name], fontsize=10)
    fig.tight_layout()
    fig.savefig(learning_curves, dpi=110)
    plt.close(fig)
    if has_val:
        final = rows[-1]["members"]
        lrs = sorted(dict.fromkeys(m["lr"] for m in final))
        fig, ax = plt.subplots(figsize=(6, 4))
        for activation in dict.fromkeys(m["activation"] for m in final):
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
        plt.close(fig)
    return titles


def confusion_matrix(matrix, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
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
    plt.close(fig)


def confident_errors(images, labels, predicted, confidence, path: Path, count: int) -> int:
    """A grid of the most confidently wrong images, titled true -> predicted (probability)."""
    wrong = np.flatnonzero(predicted != labels)
    worst = wrong[np.argsort(-confidence[wrong])][:count]
    columns = 5
    rows = max(1, -(-len(worst) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.6, rows * 1.8), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, worst):
        ax.imshow(images[i], cmap="gray")
        ax.set_title(f"{labels[i]} -> {predicted[i]} ({confidence[i]:.0%})", fontsize=8)
    fig.suptitle("most confidently wrong: true -> predicted (probability)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return len(worst)
