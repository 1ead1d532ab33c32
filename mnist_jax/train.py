"""`python -m mnist_jax.train`: train one model, checkpoint every epoch, resume to the bit after any stop.

From Python, `run(**settings)` does the same with the flags' names as keywords and returns the summary.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax

from mnist_jax import cli, distributed, events, metrics, plots, records, report, settings
from mnist_jax.metrics import plural
from mnist_jax.data import summary_of
from mnist_jax.loop import fit
from mnist_jax.trainers import Single
from mnist_jax.workdir import Layout, hold, prepare_workdir, run_record

COMMAND = "train"


def parser() -> cli.Parser:
    parser = cli.Parser(prog="python -m mnist_jax.train", description=__doc__.split(":", 1)[1].split("\n")[0].strip())
    cli.add_settings(parser, COMMAND)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    train(cli.parse(parser(), argv))
    return 0


def run(workdir: str | Path | None = None, **keywords) -> dict:
    """Trains (or resumes) exactly as the command line does with the same settings (keywords: the flags' names with
    underscores, e.g. model="mlp", epochs=2, train_limit=4096) and returns what summary.json holds. Bad settings
    raise UserError with the command line's one-line message."""
    return train(cli.from_keywords(COMMAND, {"workdir": workdir, **keywords}))


def train(values: Mapping[str, Any]) -> dict:
    """The run these settings describe, trained to its end; returns its summary (process 0's)."""
    started = time.time()
    cli.start(values)
    ds, splits, data_record = cli.load_data(values)
    config = settings.config(values, len(splits["train"][1]))
    member = settings.member(values, config)
    layout = Layout(values["workdir"] or settings.workdir_name(COMMAND, values))
    trainer = Single(config, member, splits)
    record = run_record(config, member, data_record)
    with contextlib.ExitStack() as held:  # the workdir's lock lives as long as this launch
        held.enter_context(hold(layout.root))
        prepare_workdir(layout.root, record, values["fresh"])
        fitted = fit(layout, trainer, config.epochs, meta={"run": record})
        if not distributed.is_primary():
            return {}
        data_summary = summary_of(ds, splits)
        if fitted.finished_before:
            final = metrics.columns(trainer.evaluate(fitted.state))
            print(f"{layout.root} already holds a finished run of {plural(config.epochs, 'epoch')}: "
                  f"test accuracy {float(final['test_accuracy']):.2%}, test loss {float(final['test_loss']):.4f}")
            if end_written(layout):
                return records.read_json(layout.summary)
            print(f"its summary or curves were missing or damaged: rewritten from its records in {layout.root}")
            events.mark_finished(layout.root, trainer.board_runs())
            return write_end(layout, config, member, fitted.rows, data_summary, wall_seconds=None)
        summary = write_end(layout, config, member, fitted.rows, data_summary,
                            wall_seconds=round(time.time() - started, 2))
    final = fitted.rows[-1]
    print(f"final test accuracy {final['test_accuracy']:.2%} (test loss {metrics.loss_text(final['test_loss'])}) after "
          f"{plural(config.epochs, 'epoch')}; {summary['wall_seconds']:.1f} s; results in {layout.root}")
    if final["diverged"]:
        first = next(row["epoch"] for row in fitted.rows if row["diverged"])
        print(f"DIVERGED in epoch {first}: a batch loss became non-finite or exceeded ten times chance, and the "
              "parameters were frozen at their last sound values; lower --lr or --weight-decay")
    return summary


def end_written(layout: Layout) -> bool:
    """Whether the end of a finished run is on disk whole: its curves, then its summary (written last)."""
    return isinstance(records.read_json_or_none(layout.summary), dict) and records.is_whole_png(layout.curves)


def write_end(layout: Layout, config, member: dict, rows: list[dict], data_summary: dict,
              wall_seconds: float | None) -> dict:
    """The end of a run, from its metrics rows: curves.png, then summary.json (its presence says the end is
    written). Idempotent: a launch that finds a finished run without them writes them again."""
    summary = report.summary(
        config, member, rows, devices_used=jax.device_count(),
        conv=config.conv if config.model == "lenet" else None,
        train_seconds=round(sum(r["epoch_seconds"] for r in rows), 2), wall_seconds=wall_seconds,
        data=data_summary, **report.environment())
    plots.run_curves(layout.curves, layout.root.name, rows)
    records.write_json(layout.summary, summary)
    return summary


if __name__ == "__main__":
    cli.run(main)
