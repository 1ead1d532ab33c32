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

from mnist_jax import plots, records, settings
from mnist_jax.metrics import PARENT, PRUNED, SELECTION, metric_columns
from mnist_jax.workdir import Layout

THRESHOLDS = (0.99, 0.98)  # epochs to reach these validation accuracies measure convergence
# A member that ends no better than this (twice chance for ten classes) without diverging has stalled: dead units or
# a stuck optimizer. It still counts with its accuracy; the results name it, as they name the diverged.
STALLED_ACCURACY = 0.2


def _pct(threshold: float) -> int:
    return round(threshold * 100)


def member_results(rows: list[dict], started_as: list[dict] | None = None) -> list[dict]:
    """One entry per member: the hyperparameters it started with (`started_as`, else those of its last row), final
    metrics (those of its last trained epoch), epochs trained, divergence, stalling, first epoch at each validation
    accuracy threshold, and under PBT its `history`: one entry per interval, {"epoch", "parent" (the member whose
    state it continued from), its hyperparameters from then on}. Stalling is judged on validation accuracy, or on
    test accuracy where there is no validation split."""
    out = []
    names = [s.name for s in settings.members_of()]
    for i, final in enumerate(rows[-1]["members"]):
        history = [row["members"][i] for row in rows]
        diverged_at = next((row["epoch"] for row, m in zip(rows, history) if m["diverged"]), None)
        accuracy = final.get(SELECTION, final["test_accuracy"])
        start = started_as[i] if started_as else final
        entry = {**{name: start[name] for name in names}, **metric_columns(final),
                 "epochs_trained": final.get(PRUNED, rows[-1]["epoch"]),
                 "diverged": bool(final["diverged"]), "diverged_epoch": diverged_at,
                 "stalled": not final["diverged"] and accuracy <= STALLED_ACCURACY}
        for threshold in THRESHOLDS:
            entry[f"epoch_to_{_pct(threshold)}"] = next(
                (row["epoch"] for row, m in zip(rows, history) if m.get(SELECTION, -1) >= threshold), None)
        lineage = [{"epoch": row["epoch"], "parent": m[PARENT], **{name: after[name] for name in names}}
                   for row, m, after in zip(rows, history, history[1:]) if PARENT in m]
        if lineage:
            entry["history"] = lineage
        out.append(entry)
    return out


def _stats(values: list[float], name: str) -> dict:
    values = np.asarray(values, dtype=float)
    return {f"mean_{name}": float(values.mean()),
            f"std_{name}": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            f"min_{name}": float(values.min()), f"max_{name}": float(values.max())}


def cell_names(members: list[dict]) -> list[str]:
    """The member settings but the seed: what a cell is."""
    return [s.name for s in settings.members_of() if s.name != "seed"]


def varying(members: list[dict]) -> list[str]:
    """The hyperparameters (not activation or seed) that the members' cells differ in: the learning rate always."""
    return [name for name in cell_names(members) if name != "activation"
            and (name == "lr" or len({m[name] for m in members}) > 1)]


def summarize(members: list[dict]) -> list[dict]:
    """Per cell (activation and every hyperparameter but the seed), in grid order: accuracy statistics over seeds,
    epochs trained, divergences, convergence."""
    groups: dict[tuple, list[dict]] = {}
    names = cell_names(members)
    for m in members:
        groups.setdefault(tuple(m[name] for name in names), []).append(m)
    summary = []
    for cell, group in groups.items():
        entry = {**dict(zip(names, cell)), "n": len(group), "epochs_trained": max(m["epochs_trained"] for m in group)}
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
    """Per activation, the cell of highest mean final validation accuracy among those trained longest (the
    survivors of successive halving; every cell otherwise); a tie goes to the smaller lr, then to the cell listed
    first.

    Diverged members count with the accuracy of their frozen parameters. Empty without a validation split.
    """
    if not summary or f"mean_{SELECTION}" not in summary[0]:
        return []
    selection = []
    names = [name for name in summary[0] if name in settings.BY_NAME and name != "seed"]
    for activation in dict.fromkeys(s["activation"] for s in summary):
        candidates = [s for s in summary if s["activation"] == activation]
        longest = max(s["epochs_trained"] for s in candidates)
        best = max((s for s in candidates if s["epochs_trained"] == longest),
                   key=lambda s: (s[f"mean_{SELECTION}"], -s["lr"]))
        selection.append({**{name: best[name] for name in names}, "n": best["n"],
                          "epochs_trained": best["epochs_trained"],
                          "mean_val_accuracy": best["mean_val_accuracy"],
                          "mean_test_accuracy": best["mean_test_accuracy"],
                          "std_test_accuracy": best["std_test_accuracy"],
                          **{k: best[k] for t in sorted(THRESHOLDS)
                             for k in (f"mean_epoch_to_{_pct(t)}", f"n_reached_{_pct(t)}")},
                          **{k: best[k] for k in ("mean_train_loss", "n_diverged", "n_stalled")}})
    return selection


def select_members(members: list[dict]) -> list[dict]:
    """PBT's selection: per activation, the member of highest final validation accuracy (a tie goes to the member
    listed first), with the hyperparameters it ended with."""
    if not members or SELECTION not in members[0]:
        return []
    selection = []
    for activation in dict.fromkeys(m["activation"] for m in members):
        index, best = max(((i, m) for i, m in enumerate(members) if m["activation"] == activation),
                          key=lambda im: (im[1][SELECTION], -im[0]))
        final = best["history"][-1] if best.get("history") else best
        selection.append({**{name: final[name] for name in cell_names(members)}, "member": index, "n": 1,
                          "epochs_trained": best["epochs_trained"], "mean_val_accuracy": best[SELECTION],
                          "mean_test_accuracy": best["test_accuracy"], "std_test_accuracy": 0.0,
                          **{k: v for t in sorted(THRESHOLDS) for k, v in (
                              (f"mean_epoch_to_{_pct(t)}", best[f"epoch_to_{_pct(t)}"]),
                              (f"n_reached_{_pct(t)}", int(best[f"epoch_to_{_pct(t)}"] is not None)))},
                          "mean_train_loss": best["train_loss"], "n_diverged": int(best["diverged"]),
                          "n_stalled": int(best["stalled"])})
    return selection


# What the activations are compared on: the final test accuracy, and (measured on validation) how soon they converge.
COMPARED = {"test_accuracy": "final test accuracy",
            **{f"epoch_to_{_pct(t)}": f"epochs to {_pct(t)}% validation accuracy" for t in sorted(THRESHOLDS)}}


def paired_differences(members: list[dict], cell_of: dict[str, dict], metric: str = "test_accuracy") -> list[dict]:
    """Each pair of activations, each at its cell in `cell_of` ({activation: {hyperparameter: value}}): the mean
    difference of `metric` over the seeds both have (for epochs to a threshold, the seeds where both reached it),
    with a 95% t interval. Diverged members count as they ended."""
    names = cell_names(members)
    key = lambda m: tuple(m[name] for name in names)  # noqa: E731
    by_seed = {(key(m), m["seed"]): m for m in members}
    wanted = {a: tuple({**cell, "activation": a}[name] for name in names) for a, cell in cell_of.items()}
    shown = varying(members)
    out = []
    for a, b in itertools.combinations(cell_of, 2):
        pairs = [(m[metric], by_seed[(wanted[b], m["seed"])][metric]) for m in members
                 if key(m) == wanted[a] and (wanted[b], m["seed"]) in by_seed]
        d = np.array([x - y for x, y in pairs if x is not None and y is not None], dtype=float)
        entry = {"metric": metric, "a": a, "lr_a": cell_of[a]["lr"], "b": b, "lr_b": cell_of[b]["lr"],
                 "cell_a": {n: cell_of[a][n] for n in shown}, "cell_b": {n: cell_of[b][n] for n in shown},
                 "n": len(d), "mean_difference": float(d.mean()) if len(d) else None, "ci95_low": None,
                 "ci95_high": None}
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
    """Paired differences at the selected cells (test accuracy and epochs to each threshold); without a selection,
    of test accuracy at each cell the activations share."""
    names = [name for name in cell_names(members) if name != "activation"]
    if selection:
        cell_of = {s["activation"]: {name: s[name] for name in names} for s in selection}
        return [p for metric in COMPARED for p in paired_differences(members, cell_of, metric)]
    activations = list(dict.fromkeys(m["activation"] for m in members))
    cells = list(dict.fromkeys(tuple(m[name] for name in names) for m in members))
    return [p for cell in cells for p in paired_differences(members, {a: dict(zip(names, cell)) for a in activations})]


def cell_text(cell: dict) -> str:
    """A cell's hyperparameters in a few words: lr 0.001, wd 0.01."""
    return ", ".join(f"{SHORT.get(name, name)} {value:g}" for name, value in cell.items())


SHORT = {"weight_decay": "wd", "label_smoothing": "ls"}


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


def _cells_table(summary: list[dict], shown: list[str], selected: set[tuple]) -> list[str]:
    """Every cell, grouped by activation, best first: its hyperparameters and final validation accuracy."""
    lines = ["| activation | " + "".join(f"{SHORT.get(n, n)} | " for n in shown) + "n | epochs trained | "
             "val accuracy (mean ± std) |", "| --- | " + "--- | " * len(shown) + "--- | --- | --- |"]
    ordered = sorted(summary, key=lambda s: (list(dict.fromkeys(x["activation"] for x in summary)).index(
        s["activation"]), -s["epochs_trained"], -s[f"mean_{SELECTION}"]))
    for s in ordered:
        text = f"{s[f'mean_{SELECTION}']:.2%} ± {s[f'std_{SELECTION}']:.2%}"
        key = (s["activation"], *(s[n] for n in shown))
        lines.append(f"| {s['activation']} | " + "".join(f"{s[n]:g} | " for n in shown) +
                     f"{s['n']} | {s['epochs_trained']} | " + (f"**{text}**" if key in selected else text) + " |")
    return lines


def _selection_table(selection: list[dict], shown: list[str]) -> list[str]:
    lines = ["| activation | " + "".join(f"{SHORT.get(n, n)} | " for n in shown) + "n | val accuracy | "
             "test accuracy (mean ± std) | " + "".join(f"epochs to {_pct(t)}% | " for t in sorted(THRESHOLDS))
             + "final train loss | diverged |",
             "| --- | " + "--- | " * len(shown) + "--- | --- | --- | " + "--- | " * len(THRESHOLDS) + "--- | --- |"]
    for s in selection:
        lines.append(f"| {s['activation']} | " + "".join(f"{s[n]:g} | " for n in shown) +
                     f"{s['n']} | {s['mean_val_accuracy']:.2%} | "
                     + (f"{s['mean_test_accuracy']:.2%} ± {s['std_test_accuracy']:.2%} | " if s["n"] > 1 else
                        f"{s['mean_test_accuracy']:.2%} | ")
                     + "".join(f"{_reach(s, t)} | " for t in sorted(THRESHOLDS))
                     + f"{s['mean_train_loss']:.4f} | {s['n_diverged']} |")
    return lines


def _pairs_table(pairs: list[dict]) -> list[str]:
    lines = ["| compared | a − b | n | mean difference | 95% CI | verdict |", "| --- | --- | --- | --- | --- | --- |"]
    for p in pairs:
        mean = "–" if p["mean_difference"] is None else _amount(p["mean_difference"], p["metric"])
        ci = "–" if p["ci95_low"] is None else \
            f"[{_amount(p['ci95_low'], p['metric'])}, {_amount(p['ci95_high'], p['metric'])}]"
        lines.append(f"| {COMPARED[p['metric']]} | {p['a']} ({cell_text(p['cell_a'])}) − {p['b']} "
                     f"({cell_text(p['cell_b'])}) | {p['n']} | {mean} | {ci} | {p['verdict']} |")
    return lines


def _rungs(members: list[dict], rungs: list[int]) -> list[str]:
    """How many cells of each activation trained past each rung."""
    names = cell_names(members)
    activations = list(dict.fromkeys(m["activation"] for m in members))
    lines = ["| after epoch | " + " | ".join(activations) + " |", "| --- |" + " --- |" * len(activations)]
    for rung in [0, *rungs]:
        going = [len({tuple(m[n] for n in names) for m in members
                      if m["activation"] == a and m["epochs_trained"] > rung}) for a in activations]
        lines.append(f"| {rung} | " + " | ".join(str(g) for g in going) + " |")
    return lines


def _lineage(member: dict, index: int, shown: list[str]) -> str:
    steps = [f"epoch {h['epoch']}: " + ("kept its own" if h["parent"] == index else f"took member {h['parent']}'s")
             + " (" + ", ".join(f"{SHORT.get(n, n)} {h[n]:g}" for n in shown) + ")" for h in member.get("history", [])]
    return "; ".join(steps) or "no interval"


def markdown(summary: list[dict], selection: list[dict], pairs: list[dict], members: list[dict],
             strategy: dict | None = None, spent: tuple[int, int] | None = None) -> str:
    """results.md. `strategy` is results.json's (sampler and scheduler), `spent` (member-epochs trained, those of
    training every member to the end)."""
    strategy = strategy or {"sampler": "grid", "scheduler": "none"}
    n_seeds = max(s["n"] for s in summary)
    shown = varying(members)
    lines = []
    if strategy["scheduler"] != "none" or strategy["sampler"] != "grid":
        lines += [f"Search: {strategy['sampler']}" + (f", {strategy['samples']} samples" if strategy.get("samples")
                                                      else "") + f"; scheduler: {strategy['scheduler']}"
                  + "".join(f", {k} {v}" for k, v in strategy.items()
                            if k not in ("sampler", "samples", "scheduler", "space")) + ".", ""]
    if strategy["scheduler"] == "pbt" and selection:
        lines += ["Population-based training: each activation's best member by final validation accuracy, with the "
                  "hyperparameters it ended with (its test accuracy is reported, never chosen on):", "",
                  *_selection_table(selection, shown), "",
                  "Lineage of each selected member (at each interval: whose state it continued from, and its "
                  "hyperparameters from then on):", ""]
        lines += [f"- {s['activation']}, member {s['member']} (started as {settings.member_label(members[s['member']])}"
                  f"): {_lineage(members[s['member']], s['member'], shown)}" for s in selection]
        lines += ["", "PBT's members swap states, so members of two activations are no longer paired by seed: no "
                  "paired comparison is made."]
    elif selection:
        if shown == ["lr"] and strategy["scheduler"] == "none":
            lines += [f"Final validation accuracy, mean ± std over {n_seeds} seeds; in bold the learning rate each "
                      "activation selects (highest mean; a tie goes to the smaller lr):", "",
                      *_grid(summary, SELECTION, {(s["activation"], s["lr"]) for s in selection}), ""]
        else:
            lines += [f"Every cell's final validation accuracy (at the last epoch it trained), mean ± std over "
                      f"{n_seeds} seeds; in bold the cell each activation selects (highest mean among those trained "
                      "longest):", "",
                      *_cells_table(summary, shown, {(s["activation"], *(s[n] for n in shown)) for s in selection}),
                      ""]
        what = "learning rate" if shown == ["lr"] else "cell"
        lines += [f"Each activation at its selected {what} (epochs to a threshold: first epoch whose validation "
                  "accuracy reached it, mean over the seeds that did):", "", *_selection_table(selection, shown), "",
                  f"Paired differences, each activation at its selected {what} (same seeds; for epochs, the seeds "
                  "where both reached the threshold), with 95% t confidence intervals:", "", *_pairs_table(pairs),
                  "", RULE]
    else:
        lines += ["No validation split: nothing is selected. Final test accuracy, mean ± std over "
                  f"{n_seeds} seeds:", "", *_grid(summary, "test_accuracy", set()), "",
                  "Paired differences of final test accuracy at each learning rate (same seeds), with 95% t "
                  "confidence intervals:", "", *_pairs_table(pairs), "", RULE]
    if strategy["scheduler"] == "halving":
        lines += ["", "Successive halving: how many cells of each activation trained on after each rung "
                  "(0: the start):", "", *_rungs(members, strategy["rungs"])]
    fixed = {n: members[0][n] for n in cell_names(members) if n != "activation" and n not in shown}
    if fixed and (strategy["scheduler"] != "none" or strategy["sampler"] != "grid" or shown != ["lr"]):
        lines += ["", f"Every cell shares {cell_text(fixed)}."]
    if spent and spent[0] != spent[1]:
        lines += ["", f"Compute: {spent[0]} member-epochs trained, {spent[0] / spent[1]:.0%} of the {spent[1]} that "
                  "training every member to the end would have taken."]
    diverged = [m for m in members if m["diverged"]]
    if diverged:
        lines += ["", "Diverged (counted with the accuracy of their frozen parameters): " + ", ".join(
            f"{m['activation']} seed {m['seed']} {cell_text({n: m[n] for n in shown})} (epoch {m['diverged_epoch']})"
            for m in diverged)]
    stalled = [m for m in members if m["stalled"]]
    if stalled:
        lines += ["", f"Stalled (no blow-up, but at most {STALLED_ACCURACY:.0%} accuracy at the end: dead units or a "
                  "stuck optimizer; counted with that accuracy): " + ", ".join(
                      f"{m['activation']} seed {m['seed']} {cell_text({n: m[n] for n in shown})}" for m in stalled)]
    return "\n".join(lines) + "\n"


def strategy_of(values: dict, space: dict, scheduler) -> dict:
    """How a sweep searched, as results.json records it: sampler, scheduler and its settings, and the space."""
    ranged = any(isinstance(v, settings.Range) for v in space.values())
    return {"sampler": "quasi-random (scrambled Halton)" if ranged else "grid",
            **({"samples": values["samples"], "search_seed": values["search_seed"]} if ranged else {}),
            "scheduler": values["scheduler"], **(scheduler.settings() if scheduler else {}),
            **({"search_seed": values["search_seed"]} if values["scheduler"] == "pbt" else {}),
            "space": settings.space_record(space)}


def recipe_title(config, members: list[dict]) -> str:
    """The model and recipe of an engine.Config in a few words, as the sweep's plots are titled (with the weight
    decay where every member has the same)."""
    model = config.model + (f" {'x'.join(map(str, config.hidden))}" if config.hidden else "")
    decays = {m["weight_decay"] for m in members}
    decay = f"weight decay {decays.pop():g}, " if len(decays) == 1 else ""
    return (f"{model}: {config.optimizer}, {config.schedule} schedule, {decay}"
            f"batch {config.batch_size}, {config.epochs} epoch{'' if config.epochs == 1 else 's'}"
            + ("" if config.dtype == "float32" else f", {config.dtype}"))


def write_results(layout: Layout, rows: list[dict], environment: dict, title: str = "", strategy: dict | None = None,
                  started_as: list[dict] | None = None) -> str:
    """Writes results.md, the plots (headed by `title`: the model and recipe, recipe_title) and results.json;
    returns the markdown. `strategy` (strategy_of) says how the sweep searched, `started_as` its members' first
    hyperparameters (the run record's)."""
    strategy = strategy or {"sampler": "grid", "scheduler": "none"}
    members = member_results(rows, started_as)
    summary = summarize(members)
    pbt = strategy["scheduler"] == "pbt"
    selection = select_members(members) if pbt else select(summary)
    pairs = [] if pbt else comparisons(members, selection)
    spent = (sum(m["epochs_trained"] for m in members), len(members) * rows[-1]["epoch"])
    text = markdown(summary, selection, pairs, members, strategy, spent)
    records.write_text(layout.results_md, text)
    titles = plots.sweep_curves(layout.learning_curves, layout.validation_vs_lr, rows,
                                 curve_groups(members, selection, pbt), title, selected=bool(selection))
    if pbt:
        titles.update(plots.lineages(layout.lineages, rows, varying(members), title))
    # Last: a results.json says the sweep's end is written whole (sweep.end_written).
    records.write_json(layout.results_json, {
        "strategy": {k: v for k, v in strategy.items() if k != "space"}, "space": strategy.get("space"),
        "member_epochs": spent[0], "member_epochs_full": spent[1],
        "members": members, "summary": summary, "selection": selection, "paired_differences": pairs,
        "epochs": rows[-1]["epoch"], "train_seconds": round(sum(row["epoch_seconds"] for row in rows), 1),
        "environment": environment, "plots": titles})
    return text


def curve_groups(members: list[dict], selection: list[dict], pbt: bool) -> list[tuple[str, list[int]]]:
    """(label, member indices) of each learning curve: the selected cells (PBT: members), else every cell."""
    names = [n for n in cell_names(members) if n != "activation"]
    shown = varying(members)
    if pbt:
        return [(f"{s['activation']}, member {s['member']}", [s["member"]]) for s in selection]
    cells = [{n: s[n] for n in ["activation", *names]} for s in selection] if selection else \
        [dict(zip(["activation", *names], c)) for c in dict.fromkeys(
            tuple(m[n] for n in ["activation", *names]) for m in members)]
    return [(f"{c['activation']}, {cell_text({n: c[n] for n in shown})}",
             [i for i, m in enumerate(members) if all(m[n] == c[n] for n in c)]) for c in cells]
