"""Taking one member out of a sweep workdir as an ordinary single-model workdir."""

from __future__ import annotations

import json
from pathlib import Path

from mnist_jax import checkpoint
from mnist_jax.workdir import load_sweep_member, prepare_workdir, read_metrics, read_sweep, run_description


def export_member(sweep_dir: Path, spec: str, to: Path) -> int:
    """Writes member `spec` of the sweep at its latest epoch as a workdir that train, evaluate and predict accept."""
    run = read_sweep(sweep_dir)
    config, hyper, state, step, member, index = load_sweep_member(sweep_dir, spec)
    description = run_description(config, member["activation"], member["lr"], member["seed"], run["dataset"],
                                  run["test_limit"])
    prepare_workdir(Path(to), description, fresh=False)
    rows = []
    for row in read_metrics(Path(sweep_dir) / "metrics.jsonl", step):
        m = row["members"][index]
        rows.append({"epoch": row["epoch"], "train_loss": m["train_loss"], "train_accuracy": m["train_accuracy"],
                     "test_loss": m["test_loss"], "test_accuracy": m["test_accuracy"],
                     "epoch_seconds": row["epoch_seconds"], "images_per_second": row["images_per_second"]})
    (Path(to) / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    manager = checkpoint.open_manager(Path(to) / "checkpoints")
    try:
        checkpoint.save(manager, step, state, {"run": description, "epoch": step, "exported_from": str(sweep_dir)},
                        {checkpoint.BEST_METRIC: rows[-1]["test_accuracy"] if rows else 0.0})
        manager.wait_until_finished()
    finally:
        manager.close()
    if rows:
        summary = {"model": config.model, "activation": member["activation"], "seed": member["seed"],
                   "hyperparameters": {"learning_rate": member["lr"], "batch_size": config.batch_size,
                                       "weight_decay": config.weight_decay, "epochs": config.epochs},
                   "epochs": step, "test_accuracy": rows[-1]["test_accuracy"], "test_loss": rows[-1]["test_loss"],
                   "diverged": bool(state.diverged), "exported_from": str(sweep_dir)}
        (Path(to) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"exported member {member['activation']},{member['seed']},{member['lr']:g} of {sweep_dir} at epoch {step} "
          f"to {to}")
    return 0
