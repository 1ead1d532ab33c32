"""The depth study's report: training loss of the ELU paper's 8 x 128 network per activation, with intervals.

    python experiments/tuning/depth_report.py experiments/tuning/depth-sgd experiments/tuning/depth-adamw

For each sweep folder (its metrics.jsonl): the mean training loss (as trained, over the epoch's batches) per
activation and epoch with a 95% t interval over seeds, the epochs each seed took to bring it under each threshold,
and paired differences (same seed) of both; writes depth.md beside them and train_loss.png into each folder.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

THRESHOLDS = (0.1, 0.03)  # training loss levels: how soon each seed gets under them


def interval(values) -> tuple[float, float, float]:
    """(mean, low, high) of a 95% t interval over seeds."""
    values = np.asarray(values, dtype=float)
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean()), float(values.mean() - half), float(values.mean() + half)


def losses(folder: Path) -> tuple[list[int], dict[str, dict[int, list[float]]]]:
    """Epochs, and {activation: {seed: training loss per epoch}}."""
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    out: dict[str, dict[int, list[float]]] = {}
    for row in rows:
        for m in row["members"]:
            loss = m["train_loss"] if m["train_loss"] is not None else math.nan
            out.setdefault(m["activation"], {}).setdefault(m["seed"], []).append(loss)
    return [row["epoch"] for row in rows], out


def first_under(curve: list[float], threshold: float) -> int | None:
    return next((epoch for epoch, loss in enumerate(curve, 1) if loss <= threshold), None)


def report(folder: Path) -> list[str]:
    epochs, by_activation = losses(folder)
    seeds = sorted(next(iter(by_activation.values())))
    shown = sorted({1, 2, 5, len(epochs) // 2, len(epochs)})
    lines = [f"### {folder.name}: training loss, mean [95% interval] over {len(seeds)} seeds", "",
             "| activation | " + " | ".join(f"epoch {e}" for e in shown) + " | "
             + " | ".join(f"epochs to loss ≤ {t:g}" for t in THRESHOLDS) + " |",
             "| --- |" + " --- |" * (len(shown) + len(THRESHOLDS))]
    for activation, curves in by_activation.items():
        cells = []
        for e in shown:
            mean, low, high = interval([curves[s][e - 1] for s in seeds])
            cells.append(f"{mean:.4f} [{low:.4f}, {high:.4f}]")
        for t in THRESHOLDS:
            reached = [first_under(curves[s], t) for s in seeds]
            got = [r for r in reached if r is not None]
            cells.append("never" if not got else f"{np.mean(got):.1f} ({len(got)}/{len(seeds)})")
        lines.append(f"| {activation} | " + " | ".join(cells) + " |")
    lines += ["", "Paired by seed (a − b): training loss at each epoch shown, and epochs to loss ≤ "
              f"{THRESHOLDS[0]:g} over the seeds where both got there; mean [95% t interval]:", "",
              "| a − b | " + " | ".join(f"loss, epoch {e}" for e in shown) + f" | epochs to ≤ {THRESHOLDS[0]:g} (n) |",
              "| --- |" + " --- |" * (len(shown) + 1)]
    for a, b in itertools.combinations(by_activation, 2):
        cells = []
        for e in shown:
            mean, low, high = interval([by_activation[a][s][e - 1] - by_activation[b][s][e - 1] for s in seeds])
            cells.append(f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]")
        reached = [(first_under(by_activation[a][s], THRESHOLDS[0]), first_under(by_activation[b][s], THRESHOLDS[0]))
                   for s in seeds]
        d = [x - y for x, y in reached if x is not None and y is not None]
        cells.append("–" if len(d) < 2 else "{:+.2f} [{:+.2f}, {:+.2f}]".format(*interval(d)) + f" ({len(d)})")
        lines.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
    fig, ax = plt.subplots(figsize=(6, 4))
    for activation, curves in by_activation.items():
        values = np.array([curves[s] for s in seeds])
        ax.plot(epochs, values.mean(0), label=activation)
        ax.fill_between(epochs, values.min(0), values.max(0), alpha=0.2)
    ax.set(xlabel="epoch", ylabel="training loss (mean over the epoch's batches)", yscale="log",
           title=f"{folder.name}: 8 x 128 MLP, mean over {len(seeds)} seeds, band min..max")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "train_loss.png", dpi=110)
    plt.close(fig)
    return lines + [""]


if __name__ == "__main__":
    folders = [Path(arg) for arg in sys.argv[1:]]
    text = "\n".join(line for folder in folders for line in report(folder))
    (folders[0].parent / "depth.md").write_text(text)
    print(text)
