"""Taking one member out of a sweep workdir as an ordinary single-model workdir."""

from __future__ import annotations

from pathlib import Path

from mnist_jax import checkpoint, metrics, records
from mnist_jax.workdir import load_sweep_member, prepare_workdir, read_metrics, read_sweep, recipe, run_description

# The parts of a sweep's run record that a member shares (content: where the sweep's record has it).
DATA_RECORD = ("dataset", "content", "test_limit", "validation", "data_location")


def export_member(sweep_dir: Path, spec: str, to: Path) -> int:
    """Writes member `spec` of the sweep at its latest epoch as a workdir that train, evaluate and predict accept."""
    run = read_sweep(sweep_dir)
    config, hyper, state, step, member, index = load_sweep_member(sweep_dir, spec)
    description = run_description(config, member["activation"], member["lr"], member["seed"],
                                  {key: run[key] for key in DATA_RECORD if key in run})
    prepare_workdir(Path(to), description, fresh=False)
    rows = [metrics.member_row(row, index) for row in read_metrics(Path(sweep_dir) / "metrics.jsonl", step)]
    records.write_rows(Path(to) / "metrics.jsonl", rows)
    metric, score = metrics.selection_score(rows[-1]) if rows else ("epoch", float(step))
    manager = checkpoint.open_manager(Path(to) / "checkpoints")
    try:
        checkpoint.save(manager, step, state, {"run": description, "epoch": step, "exported_from": str(sweep_dir),
                                               "selected_by": {metric: score}}, {checkpoint.BEST_METRIC: score})
        manager.wait_until_finished()
    finally:
        manager.close()
    if rows:
        summary = {"model": config.model, "activation": member["activation"], "seed": member["seed"],
                   "hyperparameters": recipe(config, member["lr"]),
                   "epochs": step, **metrics.metric_columns(rows[-1]),
                   "diverged": bool(state.diverged), "exported_from": str(sweep_dir)}
        records.write_json(Path(to) / "summary.json", summary)
    print(f"exported member {member['activation']},{member['seed']},{member['lr']:g} of {sweep_dir} at epoch {step} "
          f"to {to}")
    return 0
