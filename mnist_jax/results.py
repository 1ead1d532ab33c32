"""A sweep's results as people read them: results.json, results.md with paired confidence intervals, plots."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np

THRESHOLDS = (0.99, 0.98)


def member_results(rows: list[dict]) -> list[dict]:
    """One entry per member: final accuracy and loss, divergence, first epoch at each accuracy threshold."""
    out = []
    for i, final in enumerate(rows[-1]["members"]):
        history = [row["members"][i] for row in rows]
        diverged_at = next((row["epoch"] for row, m in zip(rows, history) if m["diverged"]), None)
        entry = {"activation": final["activation"], "seed": final["seed"], "lr": final["lr"],
                 "test_accuracy": final["test_accuracy"], "test_loss": final["test_loss"],
                 "train_loss": final["train_loss"],
                 "diverged": bool(final["diverged"]), "diverged_epoch": diverged_at}
        for threshold in THRESHOLDS:
            entry[f"epoch_to_{round(threshold * 100)}"] = next(
                (row["epoch"] for row, m in zip(rows, history) if m["test_accuracy"] >= threshold), None)
        out.append(entry)
    return out


def summarize(members: list[dict]) -> list[dict]:
    """Mean, std (over seeds), min and max of final test accuracy per (activation, lr), best first."""
    groups: dict[tuple, list[dict]] = {}
    for m in members:
        groups.setdefault((m["activation"], m["lr"]), []).append(m)
    summary = []
    for (activation, lr), group in groups.items():
        acc = np.array([m["test_accuracy"] for m in group])
        summary.append({"activation": activation, "lr": lr, "n": len(group),
                        "mean_test_accuracy": float(acc.mean()),
                        "std_test_accuracy": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                        "min_test_accuracy": float(acc.min()), "max_test_accuracy": float(acc.max()),
                        "n_diverged": sum(m["diverged"] for m in group),
                        "mean_train_loss": float(np.mean([m["train_loss"] for m in group]))})
        for threshold in THRESHOLDS:
            key = f"epoch_to_{round(threshold * 100)}"
            reached = [m[key] for m in group if m[key] is not None]
            summary[-1][f"mean_{key}"] = float(np.mean(reached)) if reached else None
            summary[-1][f"n_reached_{round(threshold * 100)}"] = len(reached)
    return sorted(summary, key=lambda s: -s["mean_test_accuracy"])


def paired_differences(members: list[dict]) -> list[dict]:
    """For each lr and pair of activations: mean difference over shared seeds with a 95% t interval."""
    from scipy import stats

    out = []
    by_key = {(m["activation"], m["lr"], m["seed"]): m for m in members}
    activations = list(dict.fromkeys(m["activation"] for m in members))
    for lr in dict.fromkeys(m["lr"] for m in members):
        for a, b in itertools.combinations(activations, 2):
            seeds = [s for (act, l_, s), m in by_key.items() if act == a and l_ == lr and (b, lr, s) in by_key
                     and not m["diverged"] and not by_key[(b, lr, s)]["diverged"]]
            d = np.array([by_key[(a, lr, s)]["test_accuracy"] - by_key[(b, lr, s)]["test_accuracy"] for s in seeds])
            entry = {"lr": lr, "a": a, "b": b, "n": len(d), "mean_difference": float(d.mean()) if len(d) else None,
                     "ci95_low": None, "ci95_high": None}
            if len(d) > 1:
                half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
                entry.update(ci95_low=float(d.mean() - half), ci95_high=float(d.mean() + half))
            out.append(entry)
    return out


def _verdict(p: dict) -> str:
    if p["ci95_low"] is None:
        return "too few seeds to tell"
    if p["ci95_low"] > 0:
        return f"{p['a']} better"
    if p["ci95_high"] < 0:
        return f"{p['b']} better"
    return "not distinguishable from seed noise"


def markdown(summary: list[dict], pairs: list[dict], members: list[dict]) -> str:
    lines = ["| rank | activation | lr | n | test accuracy (mean ± std) | min | max | final train loss | "
             "epochs to 98% | epochs to 99% | diverged |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def reach(s, pct):
        mean = s[f"mean_epoch_to_{pct}"]
        return "never" if mean is None else f"{mean:.1f} ({s[f'n_reached_{pct}']}/{s['n']})"

    for rank, s in enumerate(summary, 1):
        lines.append(f"| {rank} | {s['activation']} | {s['lr']:g} | {s['n']} | {s['mean_test_accuracy']:.2%} ± "
                     f"{s['std_test_accuracy']:.2%} | {s['min_test_accuracy']:.2%} | {s['max_test_accuracy']:.2%} | "
                     f"{s['mean_train_loss']:.4f} | {reach(s, 98)} | {reach(s, 99)} | {s['n_diverged']} |")
    lines += ["", "Paired differences of final test accuracy (same seeds, diverged members left out), "
              "with 95% t confidence intervals:", "",
              "| lr | a − b | n | mean difference | 95% CI | verdict |", "| --- | --- | --- | --- | --- | --- |"]
    for p in pairs:
        mean = "–" if p["mean_difference"] is None else f"{p['mean_difference'] * 100:+.3f} pts"
        ci = "–" if p["ci95_low"] is None else f"[{p['ci95_low'] * 100:+.3f}, {p['ci95_high'] * 100:+.3f}] pts"
        lines.append(f"| {p['lr']:g} | {p['a']} − {p['b']} | {p['n']} | {mean} | {ci} | {_verdict(p)} |")
    diverged = [m for m in members if m["diverged"]]
    if diverged:
        lines += ["", "Diverged: " + ", ".join(f"{m['activation']} seed {m['seed']} lr {m['lr']:g} "
                                               f"(epoch {m['diverged_epoch']})" for m in diverged)]
    return "\n".join(lines) + "\n"


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend: every figure here is written to PNG, none shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(workdir: Path, rows: list[dict]) -> list[Path]:
    """test_accuracy.png and train_loss.png: per lr, one line per activation (mean over seeds), band min..max."""
    plt = pyplot()
    epochs = [row["epoch"] for row in rows]
    first = rows[0]["members"]
    lrs = list(dict.fromkeys(m["lr"] for m in first))
    activations = list(dict.fromkeys(m["activation"] for m in first))
    paths = []
    for metric, title in (("test_accuracy", "test accuracy"), ("train_loss", "train loss")):
        fig, axes = plt.subplots(1, len(lrs), figsize=(5 * len(lrs), 3.6), squeeze=False)
        for ax, lr in zip(axes[0], lrs):
            for activation in activations:
                idx = [i for i, m in enumerate(first) if m["activation"] == activation and m["lr"] == lr]
                values = np.array([[row["members"][i][metric] for i in idx] for row in rows], dtype=float)
                ax.plot(epochs, np.nanmean(values, axis=1), label=activation)
                ax.fill_between(epochs, np.nanmin(values, axis=1), np.nanmax(values, axis=1), alpha=0.2)
            ax.set(title=f"lr {lr:g}", xlabel="epoch", ylabel=title)
            if metric == "train_loss":
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        path = workdir / f"{metric}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def write_results(workdir: Path, rows: list[dict], environment: dict) -> str:
    """Writes results.json, results.md and the plots; returns the markdown."""
    members = member_results(rows)
    summary = summarize(members)
    pairs = paired_differences(members)
    (workdir / "results.json").write_text(json.dumps(
        {"members": members, "summary": summary, "paired_differences": pairs, "epochs": rows[-1]["epoch"],
         "environment": environment}, indent=2) + "\n")
    text = markdown(summary, pairs, members)
    (workdir / "results.md").write_text(text)
    plot(workdir, rows)
    return text
