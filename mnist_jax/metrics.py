"""The metrics row: the one schema every writer (metrics.jsonl, the console, results, exports) reads.

The engine returns an epoch's numbers as {split: {metric: value}}; `make_row` flattens them into columns named
`<split>_<metric>` (train_loss, val_accuracy, ...), beside `learning_rate` (that of the epoch's last step), `diverged`
and the epoch's timing. A single run's row holds the columns themselves, a sweep's row one entry per member holding
the same columns (timing is the whole sweep's).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from mnist_jax.records import strict

SPLITS = ("train", "val", "test")  # train: as trained, over the epoch's batches; val: selects; test: reported only
METRICS = ("loss", "accuracy")
SELECTION = "val_accuracy"  # what chooses the best checkpoint, learning rates and epochs to a threshold
# Entries of a sweep row that a scheduler adds (mnist_jax.schedulers):
PRUNED = "pruned_after"  # halving: the member stopped after that epoch; its entry repeats its last epoch's numbers
PARENT = "parent"  # PBT, at each interval: the member (its index) whose state this one continues from


def columns(by_split: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """{split: {metric: value}} -> {"<split>_<metric>": value}, in SPLITS and METRICS order."""
    return {f"{split}_{metric}": by_split[split][metric] for split in SPLITS if split in by_split for metric in METRICS}


def epoch_means(sums: Mapping[str, Any], steps: int, batch_size: int) -> dict[str, Any]:
    """An epoch's training loss and accuracy (as trained) from the sums of its pieces: the mean batch loss, and the
    share of its `steps` batches' images predicted correctly."""
    return {"loss": sums["loss_sum"] / steps, "accuracy": sums["correct"] / (steps * batch_size)}


def make_row(epoch: int, by_split: Mapping[str, Mapping[str, Any]], learning_rate: Any, diverged: Any,
             seconds: float, images: int, members: Sequence[Mapping[str, Any]] | None = None) -> dict:
    """An epoch's metrics.jsonl row; with `members` every value has a leading member axis (padding past the end).

    A non-finite value (a diverged member's training loss) becomes None, as metrics.jsonl stores it (null).
    """
    timing = {"epoch_seconds": round(seconds, 4), "images_per_second": round(images / seconds, 1)}
    values = {**columns(by_split), "learning_rate": learning_rate, "diverged": diverged}
    if members is None:
        return strict({"epoch": epoch, **{k: _plain(v) for k, v in values.items()}, **timing})
    stacked = {k: np.asarray(v)[:len(members)].tolist() for k, v in values.items()}
    return strict({"epoch": epoch, **timing, "members": [{**member, **{k: v[i] for k, v in stacked.items()}}
                                                         for i, member in enumerate(members)]})


def member_row(row: dict, index: int) -> dict:
    """The single-run row of member `index` of a sweep row (timing is the whole sweep's)."""
    member = row["members"][index]
    own = [*metric_names(member), "learning_rate", "diverged"]  # learning_rate: not in rows before it was added
    return {"epoch": row["epoch"], **{k: member[k] for k in own if k in member},
            "epoch_seconds": row["epoch_seconds"], "images_per_second": row["images_per_second"]}


def metric_names(row: Mapping[str, Any]) -> list[str]:
    """The `<split>_<metric>` columns a row (or a sweep member of one) has."""
    return [f"{split}_{metric}" for split in SPLITS for metric in METRICS if f"{split}_{metric}" in row]


def metric_columns(row: Mapping[str, Any]) -> dict[str, Any]:
    """The `<split>_<metric>` columns of a row (or a sweep member of one) with their values, as summaries hold them."""
    return {name: row[name] for name in metric_names(row)}


def selection_score(row: dict) -> tuple[str, float]:
    """(metric, value) that ranks this epoch's checkpoint: validation accuracy (a sweep's mean over members), or
    the epoch itself where there is no validation split, so that the best is the latest."""
    entries = row.get("members", [row])
    if SELECTION not in entries[0]:
        return "epoch", float(row["epoch"])
    return SELECTION, float(np.mean([m[SELECTION] for m in entries]))


def describe(row: dict, epochs: int) -> str:
    """One console line for a single run's row."""
    parts = [f"epoch {row['epoch']:3d}/{epochs}"]
    for split in SPLITS:
        if f"{split}_loss" in row:
            parts.append(f"{split} loss {loss_text(row[f'{split}_loss'])} acc {row[f'{split}_accuracy']:.2%}")
    parts.append(f"{row['epoch_seconds']:.2f} s  {row['images_per_second']:,.0f} img/s")
    return "  ".join(parts) + ("  DIVERGED" if row["diverged"] else "")


def loss_text(loss: float | None) -> str:
    """A loss for people: None (non-finite, as a diverged run's rows hold it) reads as nan."""
    return "nan" if loss is None else f"{loss:.4f}"


def _plain(value: Any) -> Any:
    """A JAX or NumPy scalar as the Python float or bool that JSON writes."""
    value = np.asarray(value)
    return bool(value) if value.dtype == bool else float(value)


def plural(count: int, noun: str) -> str:
    """1 epoch, 2 epochs."""
    return f"{count} {noun}" + ("" if count == 1 else "s")
