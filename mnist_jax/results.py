"""A sweep's results as people read them: results.json, results.md with paired confidence intervals, plots.

Two layers, and every choice is made on validation data: the whole grid of (activation, learning rate) with its
validation accuracy, then each activation at the learning rate its validation accuracy selects, compared on the
test set with paired intervals over seeds. Without a validation split nothing is selected.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from scipy import stats

from mnist_jax import plots, records
from mnist_jax.metrics import SELECTION, metric_columns
from mnist_jax.workdir import Layout

THRESHOLDS = (0.99, 0.98)  # epochs to reach these validation accuracies measure convergence
# A member that ends no better than this (twice chance for ten classes) without diverging has stalled: dead units or
# a stuck optimizer. It still counts with its accuracy; the results name it, as they name the diverged.
STALLED_ACCURACY = 0.2


def _pct(threshold: float) -> int:
    return round(threshold * 100)


def member_results(rows: list[dict]) -> list[dict]:
    """One entry per member: final metrics, divergence, stalling, first epoch at each validation accuracy
    threshold. Stalling is judged on validation accuracy, or on test accuracy where there is no validation split."""
    out = []
    for i, final in enumerate(rows[-1]["members"]):
        history = [row["members"][i] for row in rows]
        diverged_at = next((row["epoch"] for row, m in zip(rows, history) if m["diverged"]), None)
        accuracy = final.get(SELECTION, final["test_accuracy"])
        entry = {"activation": final["activation"], "seed": final["seed"], "lr": final["lr"],
                 **metric_columns(final),
                 "diverged": bool(final["diverged"]), "diverged_epoch": diverged_at,
                 "stalled": not final["diverged"] and accuracy <= STALLED_ACCURACY}
        for threshold in THRESHOLDS:
            entry[f"epoch_to_{_pct(threshold)}"] = next(
                (row["epoch"] for row, m in zip(rows, history) if m.get(SELECTION, -1) >= threshold), None)
        out.append(entry)
    return out


def _stats(values: list[float], name: str) -> dict:
    values = np.asarray(values, dtype=float)
    return {f"mean_{name}": float(values.mean()),
            f"std_{name}": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            f"min_{name}": float(values.min()), f"max_{name}": float(values.max())}


def summarize(members: list[dict]) -> list[dict]:
    """Per (activation, lr), in grid order: accuracy statistics over seeds, divergences, convergence."""
    groups: dict[tuple, list[dict]] = {}
    for m in members:
        groups.setdefault((m["activation"], m["lr"]), []).append(m)
    summary = []
    for (activation, lr), group in groups.items():
        entry = {"activation": activation, "lr": lr, "n": len(group)}
        for metric in ("val_accuracy", "test_accuracy"):
            if metric in group[0]:
                entry.update(_stats([m[metric] for m in group], metric))
        entry.update(n_diverged=sum(m["diverged"] for m in group), n_stalled=sum(m["stalled"] for m in group),
                     mean_train_loss=float(np.nanmean(np.array([m["train_loss"] for m in group], dtype=float))))
        for threshold in THRESHOLDS:
            key = f"epoch_to_{_pct(threshold)}"
            reached = [m[key] for m in group if m[key] is not None]
            entry[f"mean_{key}"] = float(np.mean(reached)) if reached else None
            entry[f"n_reached_{_pct(threshold)}"] = len(reached)
        summary.append(entry)
    return summary


def select(summary: list[dict]) -> list[dict]:
    """Per activation, the lr of highest mean final validation accuracy (a tie goes to the smaller lr).

    Diverged members count with the accuracy of their frozen parameters. Empty without a validation split.
    """
    if not summary or f"mean_{SELECTION}" not in summary[0]:
        return []
    selection = []
    for activation in dict.fromkeys(s["activation"] for s in summary):
        candidates = [s for s in summary if s["activation"] == activation]
        best = max(candidates, key=lambda s: (s[f"mean_{SELECTION}"], -s["lr"]))
        selection.append({"activation": activation, "lr": best["lr"], "n": best["n"],
                          "mean_val_accuracy": best["mean_val_accuracy"],
                          "mean_test_accuracy": best["mean_test_accuracy"],
                          "std_test_accuracy": best["std_test_accuracy"],
                          **{k: best[k] for t in sorted(THRESHOLDS)
                             for k in (f"mean_epoch_to_{_pct(t)}", f"n_reached_{_pct(t)}")},
                          **{k: best[k] for k in ("mean_train_loss", "n_diverged", "n_stalled")}})
    return selection


# What the activations are compared on: the final test accuracy, and (measured on validation) how soon they converge.
COMPARED = {"test_accuracy": "final test accuracy",
            **{f"epoch_to_{_pct(t)}": f"epochs to {_pct(t)}% validation accuracy" for t in sorted(THRESHOLDS)}}


def paired_differences(members: list[dict], lr_of: dict[str, float], metric: str = "test_accuracy") -> list[dict]:
    """Each pair of activations, each at its lr in `lr_of`: the mean difference of `metric` over the seeds both
    have (for epochs to a threshold, the seeds where both reached it), with a 95% t interval. Diverged members count
    as they ended."""
    by_key = {(m["activation"], m["lr"], m["seed"]): m for m in members}
    out = []
    for a, b in itertools.combinations(lr_of, 2):
        pairs = [(by_key[(a, lr_of[a], s)][metric], by_key[(b, lr_of[b], s)][metric])
                 for (act, lr, s) in by_key if act == a and lr == lr_of[a] and (b, lr_of[b], s) in by_key]
        d = np.array([x - y for x, y in pairs if x is not None and y is not None], dtype=float)
        entry = {"metric": metric, "a": a, "lr_a": lr_of[a], "b": b, "lr_b": lr_of[b], "n": len(d),
                 "mean_difference": float(d.mean()) if len(d) else None, "ci95_low": None, "ci95_high": None}
        if len(d) > 1:
            half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
            entry.update(ci95_low=float(d.mean() - half), ci95_high=float(d.mean() + half))
        entry["verdict"] = verdict(entry, spread=float(np.ptp(d)) if len(d) else 0.0)
        out.append(entry)
    return out


# A paired difference is called a difference only over at least this many seeds, with non-zero spread, and a 95%
# interval that excludes zero: two seeds, or seeds that all gave the same difference, are no evidence however narrow
# the interval comes out.
MIN_SEEDS = 3
# Differences closer than this are equal: accuracies are counts over the test set, epochs are integers, so any real
# spread is far larger than the rounding of float32 accuracies.
ZERO_SPREAD = 1e-6
RULE = (f"A difference is called (\"better\", \"sooner\") only when it has at least {MIN_SEEDS} seeds, its seeds' "
        "differences are not all equal, and its 95% interval excludes zero; otherwise it reads \"too few seeds to "
        "tell\" (fewer seeds, or zero spread) or \"not distinguishable from seed noise\".")


def verdict(p: dict, spread: float) -> str:
    """What paired difference `p` (an entry of paired_differences) says, by the rule in RULE; `spread` is the range
    of its seeds' differences."""
    if p["n"] < MIN_SEEDS or spread <= ZERO_SPREAD:
        return "too few seeds to tell"
    sooner = p["metric"].startswith("epoch_to")  # fewer epochs is better
    if p["ci95_low"] > 0:
        return f"{p['b']} sooner" if sooner else f"{p['a']} better"
    if p["ci95_high"] < 0:
        return f"{p['a']} sooner" if sooner else f"{p['b']} better"
    return "not distinguishable from seed noise"


def comparisons(members: list[dict], selection: list[dict]) -> list[dict]:
    """Paired differences at the selected lrs (test accuracy and epochs to each threshold); without a selection, of
    test accuracy at each lr the activations share."""
    if selection:
        lr_of = {s["activation"]: s["lr"] for s in selection}
        return [p for metric in COMPARED for p in paired_differences(members, lr_of, metric)]
    activations = list(dict.fromkeys(m["activation"] for m in members))
    return [p for lr in dict.fromkeys(m["lr"] for m in members)
            for p in paired_differences(members, {a: lr for a in activations})]


def _amount(value: float, metric: str) -> str:
    return f"{value:+.2f} epochs" if metric.startswith("epoch_to") else f"{value * 100:+.3f} pts"


def _grid(summary: list[dict], metric: str, selected: set[tuple]) -> list[str]:
    lrs = list(dict.fromkeys(s["lr"] for s in summary))
    cells = {(s["activation"], s["lr"]): s for s in summary}
    lines = ["| activation | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |", "| --- |" + " --- |" * len(lrs)]
    for activation in dict.fromkeys(s["activation"] for s in summary):
        row = []
        for lr in lrs:
            s = cells.get((activation, lr))
            notes = ", ".join(f"{s[f'n_{what}']} {what}" for what in ("diverged", "stalled") if s and s[f"n_{what}"])
            text = "" if s is None else f"{s[f'mean_{metric}']:.2%} ± {s[f'std_{metric}']:.2%}" + (
                f" ({notes})" if notes else "")
            row.append(f"**{text}**" if (activation, lr) in selected else text)
        lines.append(f"| {activation} | " + " | ".join(row) + " |")
    return lines


def _reach(s: dict, threshold: float) -> str:
    pct = _pct(threshold)
    mean = s[f"mean_epoch_to_{pct}"]
    return "never" if mean is None else f"{mean:.1f} ({s[f'n_reached_{pct}']}/{s['n']})"


def markdown(summary: list[dict], selection: list[dict], pairs: list[dict], members: list[dict]) -> str:
    n_seeds = max(s["n"] for s in summary)
    if selection:
        lines = [f"Final validation accuracy, mean ± std over {n_seeds} seeds; in bold the learning rate each "
                 "activation selects (highest mean; a tie goes to the smaller lr):", "",
                 *_grid(summary, SELECTION, {(s["activation"], s["lr"]) for s in selection}), "",
                 "Each activation at its selected learning rate (epochs to a threshold: first epoch whose "
                 "validation accuracy reached it, mean over the seeds that did):", "",
                 "| activation | lr | n | val accuracy | test accuracy (mean ± std) | "
                 + "".join(f"epochs to {_pct(t)}% | " for t in sorted(THRESHOLDS)) + "final train loss | diverged |",
                 "| --- | --- | --- | --- | --- | " + "--- | " * len(THRESHOLDS) + "--- | --- |"]
        for s in selection:
            lines.append(f"| {s['activation']} | {s['lr']:g} | {s['n']} | {s['mean_val_accuracy']:.2%} | "
                         f"{s['mean_test_accuracy']:.2%} ± {s['std_test_accuracy']:.2%} | "
                         + "".join(f"{_reach(s, t)} | " for t in sorted(THRESHOLDS))
                         + f"{s['mean_train_loss']:.4f} | {s['n_diverged']} |")
        lines += ["", "Paired differences, each activation at its selected learning rate (same seeds; for epochs, "
                  "the seeds where both reached the threshold), with 95% t confidence intervals:", ""]
    else:
        lines = ["No validation split: nothing is selected. Final test accuracy, mean ± std over "
                 f"{n_seeds} seeds:", "", *_grid(summary, "test_accuracy", set()), "",
                 "Paired differences of final test accuracy at each learning rate (same seeds), with 95% t "
                 "confidence intervals:", ""]
    lines += ["| compared | a − b | n | mean difference | 95% CI | verdict |", "| --- | --- | --- | --- | --- | --- |"]
    for p in pairs:
        mean = "–" if p["mean_difference"] is None else _amount(p["mean_difference"], p["metric"])
        ci = "–" if p["ci95_low"] is None else \
            f"[{_amount(p['ci95_low'], p['metric'])}, {_amount(p['ci95_high'], p['metric'])}]"
        lines.append(f"| {COMPARED[p['metric']]} | {p['a']} (lr {p['lr_a']:g}) − {p['b']} (lr {p['lr_b']:g}) | "
                     f"{p['n']} | {mean} | {ci} | {p['verdict']} |")
    lines += ["", RULE]
    diverged = [m for m in members if m["diverged"]]
    if diverged:
        lines += ["", "Diverged (counted with the accuracy of their frozen parameters): " + ", ".join(
            f"{m['activation']} seed {m['seed']} lr {m['lr']:g} (epoch {m['diverged_epoch']})" for m in diverged)]
    stalled = [m for m in members if m["stalled"]]
    if stalled:
        lines += ["", f"Stalled (no blow-up, but at most {STALLED_ACCURACY:.0%} accuracy at the end: dead units or a "
                  "stuck optimizer; counted with that accuracy): " + ", ".join(
                      f"{m['activation']} seed {m['seed']} lr {m['lr']:g}" for m in stalled)]
    return "\n".join(lines) + "\n"


def recipe_title(config, members: list[dict]) -> str:
    """The model and recipe of an engine.Config in a few words, as the sweep's plots are titled (with the weight
    decay where every member has the same)."""
    model = config.model + (f" {'x'.join(map(str, config.hidden))}" if config.hidden else "")
    decays = {m["weight_decay"] for m in members}
    decay = f"weight decay {decays.pop():g}, " if len(decays) == 1 else ""
    return (f"{model}: {config.optimizer}, {config.schedule} schedule, {decay}"
            f"batch {config.batch_size}, {config.epochs} epoch{'' if config.epochs == 1 else 's'}"
            + ("" if config.dtype == "float32" else f", {config.dtype}"))


def write_results(layout: Layout, rows: list[dict], environment: dict, title: str = "") -> str:
    """Writes results.md, the plots (headed by `title`: the model and recipe, recipe_title) and results.json;
    returns the markdown."""
    members = member_results(rows)
    summary = summarize(members)
    selection = select(summary)
    pairs = comparisons(members, selection)
    text = markdown(summary, selection, pairs, members)
    records.write_text(layout.results_md, text)
    titles = plots.sweep_curves(layout.learning_curves, layout.validation_vs_lr, rows, selection, title)
    # Last: a results.json says the sweep's end is written whole (sweep.end_written).
    records.write_json(layout.results_json, {
        "members": members, "summary": summary, "selection": selection, "paired_differences": pairs,
        "epochs": rows[-1]["epoch"], "train_seconds": round(sum(row["epoch_seconds"] for row in rows), 1),
        "environment": environment, "plots": titles})
    return text
