"""`python -m mnist_jax.sweep`: every (activation x seed x learning rate) member trained at once, in one program.

The members' states are stacked on a leading axis and trained by one compiled program (mnist_jax.population: a vmap
of the single run's steps, or on CPU a lax.map over the members one after another); with several devices the member
axis is sharded over a mesh. From Python, `run(**settings)` does the same and returns the results.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax

from mnist_jax import cli, distributed, events, population, records, report, results, schedulers, settings
from mnist_jax.data import summary_of
from mnist_jax.errors import UserError
from mnist_jax.export import export_member
from mnist_jax.loop import fit
from mnist_jax.metrics import plural
from mnist_jax.trainers import Population
from mnist_jax.workdir import Layout, hold, prepare_workdir, sweep_record

COMMAND = "sweep"


def parser() -> cli.Parser:
    parser = cli.Parser(prog="python -m mnist_jax.sweep", description=__doc__.split(":", 1)[1].split("\n")[0].strip())
    cli.add_settings(parser, COMMAND)
    parser.add_argument("--export-member", default=None, metavar=settings.member_pattern(),
                        help="write that member of the sweep in --workdir as a single-model workdir at --to")
    parser.add_argument("--to", type=Path, default=None, help="destination of --export-member")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    values = cli.parse(parser(), argv)
    spec, to = values.pop("export_member"), values.pop("to")
    if spec or to:
        if not (spec and to):
            raise UserError("--export-member and --to go together: --export-member relu,3 --to DIR")
        export_member(values["workdir"] or settings.workdir_name(COMMAND, values), spec, to)
        return 0
    sweep(values)
    return 0


def run(workdir: str | Path | None = None, **keywords) -> dict:
    """Trains (or resumes) a sweep exactly as the command line does with the same settings (keywords: the flags'
    names with underscores; activations, seed_list and lrs also as Python lists) and returns what results.json
    holds. Bad settings raise UserError with the command line's one-line message."""
    return sweep(cli.from_keywords(COMMAND, {"workdir": workdir, **keywords}))


def sweep(values: Mapping[str, Any]) -> dict:
    """The sweep these settings describe, trained to its end; returns its results (process 0's; {} elsewhere)."""
    started = time.time()
    cli.start(values)
    ds, splits, data_record = cli.load_data(values)
    try:
        settings.check_search(values)
        schedulers.check(values, "val" in splits)
    except ValueError as e:
        raise UserError(str(e)) from None
    config = settings.config(values, len(splits["train"][1]))
    members = settings.sweep_members(values, config)
    space = settings.space_of(values, members)
    layout = Layout(values["workdir"] or settings.workdir_name(COMMAND, values))
    chunk = population.default_vmap_chunk() if values["vmap_chunk"] == "auto" else values["vmap_chunk"]
    trainer = Population(config, members, splits, values["shared_order"], chunk)
    scheduler = schedulers.of(values, trainer, space, config.epochs)
    record = sweep_record(config, members, {s.name: values[s.name] for s in settings.members_of(settings.SWEEP)
                                            if s.identity}, data_record)
    with contextlib.ExitStack() as held:  # the workdir's lock lives as long as this launch
        held.enter_context(hold(layout.root))
        prepare_workdir(layout.root, record, values["fresh"])
        print(f"sweep: {plural(len(members), 'member')} ({trainer.padding} padding) of {config.model} on "
              f"{trainer.mesh.size} {jax.default_backend()} device(s) in {jax.process_count()} process(es), "
              f"{plural(config.epochs, 'epoch')}, {'all' if chunk is None else chunk} member(s) side by side")
        fitted = fit(layout, trainer, config.epochs,
                     meta={"run": record, "stacked_members": len(members) + trainer.padding}, scheduler=scheduler)
        if not distributed.is_primary():
            return {}
        environment = {**report.environment(), "wall_seconds": round(time.time() - started, 2), "vmap_chunk": chunk,
                       "conv": config.conv if config.model == "lenet" else None,
                       "data": summary_of(ds, splits)}
        if fitted.finished_before:
            print(f"{layout.root} already holds a finished sweep of {plural(config.epochs, 'epoch')}")
            if end_written(layout):  # a finished run started again writes nothing
                print(layout.results_md.read_text())
                print(f"results in {layout.root}")
                return records.read_json(layout.results_json)
            print(f"its results or plots were missing or damaged: rewritten from its records in {layout.root}")
            events.mark_finished(layout.root, trainer.board_runs())
            environment["wall_seconds"] = None
        strategy = results.strategy_of(values, space, scheduler)
        print(results.write_results(layout, fitted.rows, environment=environment,
                                    title=results.recipe_title(config, members), strategy=strategy,
                                    started_as=members))
    print(f"results in {layout.root} (results.md, results.json, plots; TensorBoard: tensorboard --logdir "
          f"{layout.root})")
    return records.read_json(layout.results_json)


def end_written(layout: Layout) -> bool:
    """Whether the end of a finished sweep is on disk whole: its tables and plots, then results.json (written last)."""
    plots_written = [layout.learning_curves] + [path for path in (layout.validation_vs_lr, layout.lineages)
                                                if path.exists()]
    return (isinstance(records.read_json_or_none(layout.results_json), dict) and layout.results_md.is_file()
            and all(records.is_whole_png(path) for path in plots_written))


if __name__ == "__main__":
    cli.run(main)
