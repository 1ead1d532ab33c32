"""Taking one member out of a sweep workdir as an ordinary single-model workdir."""

from __future__ import annotations

from pathlib import Path

from mnist_jax import checkpoint, metrics, records, report, settings
from mnist_jax.workdir import Layout, load_member, prepare_workdir, read_metrics, read_sweep, run_record

# The parts of a sweep's run record that a member shares (content: where the sweep's record has it).
DATA_RECORD = ("dataset", "content", "test_limit", "validation", "data_location")


def export_member(sweep_dir: Path, spec: str, to: Path) -> None:
    """Writes member `spec` of the sweep at its latest epoch as a workdir that train, evaluate and predict accept."""
    run = read_sweep(sweep_dir)
    model, index = load_member(sweep_dir, spec)
    record = run_record(model.config, model.member, {key: run[key] for key in DATA_RECORD if key in run})
    target = Layout(to)
    prepare_workdir(target.root, record, fresh=False)
    rows = [metrics.member_row(row, index) for row in read_metrics(Layout(sweep_dir).metrics, model.step)]
    records.write_rows(target.metrics, rows)
    metric, score = metrics.selection_score(rows[-1]) if rows else ("epoch", float(model.step))
    manager = checkpoint.open_manager(target.checkpoints)
    try:
        checkpoint.save(manager, model.step, model.state, {"run": record, "epoch": model.step,
                                                           "exported_from": str(sweep_dir),
                                                           "selected_by": {metric: score}},
                        {checkpoint.BEST_METRIC: score})
        manager.wait_until_finished()
    finally:
        manager.close()
    if rows:
        records.write_json(target.summary, report.summary(model.config, model.member, rows,
                                                          exported_from=str(sweep_dir)))
    print(f"exported member {settings.member_label(model.member)} of {sweep_dir} at epoch {model.step} to {to}")
