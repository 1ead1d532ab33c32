"""`python -m mnist_jax.train`: train one model, checkpoint every epoch, resume to the bit after any stop."""

from __future__ import annotations

import contextlib
import functools
import time
from pathlib import Path
from typing import Sequence

from mnist_jax import cli, distributed
from mnist_jax.errors import UserError
from mnist_jax.models import ACTIVATIONS, MODELS

DATA_AXIS = "data"  # the mesh axis a batch is split over


def parse_args(argv: Sequence[str] | None):
    parser = cli.Parser(prog="python -m mnist_jax.train", description=__doc__.split(":", 1)[1].strip())
    cli.add_recipe_args(parser)
    parser.add_argument("--activation", choices=ACTIVATIONS, default="relu", help="(default: %(default)s)")
    parser.add_argument("--lr", type=cli.positive_float, default=None,
                        help="peak learning rate (default: the optimizer's, see --optimizer)")
    parser.add_argument("--seed", type=cli.seed, default=0, help="seeds parameters and batch order (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where metrics, summary and checkpoints go (default: "
                             "checkpoints/<model>-<activation>-seed<seed>, followed by every flag of the run that "
                             "differs from its default, e.g. -epochs3); an existing one is resumed")
    cli.add_split_args(parser)
    cli.add_data_args(parser)
    cli.add_cache_arg(parser)
    distributed.add_args(parser)
    args = parser.parse_args(argv)
    if args.workdir is None:
        args.workdir = cli.default_workdir(parser, args, f"{args.model}-{args.activation}-seed{args.seed}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    with contextlib.ExitStack() as held:  # the workdir's lock lives as long as this launch
        return train(parse_args(argv), held)


def train(args, held: contextlib.ExitStack) -> int:
    started = time.time()
    cli.enable_compile_cache(not args.no_compile_cache)
    distributed.initialize(args)

    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from mnist_jax import engine, events, metrics, records, results
    from mnist_jax.loop import Run, fit
    from mnist_jax.report import environment
    from mnist_jax.workdir import abstract_member, hold, prepare_workdir, recipe, run_description

    ds, splits, data_record = cli.load_data(args)
    config = cli.build_config(args, len(splits["train"][1]))
    n_devices = jax.device_count()
    if config.batch_size % n_devices:
        raise UserError(f"--batch-size {config.batch_size} does not split over {n_devices} devices: choose a "
                        f"multiple of {n_devices}")
    lr = args.lr or engine.OPTIMIZERS[config.optimizer].learning_rate
    hyper = engine.Hyper.create(args.activation, lr, args.seed)
    workdir = args.workdir
    description = run_description(config, args.activation, lr, args.seed, data_record)
    held.enter_context(hold(workdir))
    prepare_workdir(workdir, description, args.fresh)
    mesh = Mesh(jax.devices(), (DATA_AXIS,))  # every device of every process: data parallel
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS)) if n_devices > 1 else None
    splits = distributed.put(splits, replicated)
    held_out = {name: split for name, split in splits.items() if name != "train"}
    evaluate = jax.jit(engine.evaluate_splits, static_argnums=0)

    run = Run(init=lambda: jax.jit(engine.init_member, static_argnums=0, out_shardings=replicated)(config, hyper),
              abstract=abstract_member(config, hyper, replicated),
              steps=functools.partial(engine.train_steps, config, batch_sharding=batch_sharding),
              order=functools.partial(engine.epoch_order, config),
              epoch_args=(hyper, *splits["train"]), steps_per_epoch=config.steps_per_epoch,
              batch_size=config.batch_size, evaluate=lambda state: evaluate(config, state.params, hyper, held_out),
              learning_rate=functools.partial(engine.learning_rate, config, lr),
              label=f"{args.model}/{args.activation}", describe=lambda row: metrics.describe(row, config.epochs),
              hparams=[events.hparams(config, {"activation": args.activation, "seed": args.seed, "lr": lr})],
              piece_member_steps=MODELS[config.model].piece_member_steps)
    state, rows, finished_before = fit(workdir, run, config.epochs, meta={"run": description})
    if finished_before:
        final = metrics.columns(run.evaluate(state))
        print(f"{workdir} already holds a finished run of {config.epochs} epochs: "
              f"test accuracy {float(final['test_accuracy']):.2%}, test loss {float(final['test_loss']):.4f}")
        return 0

    final = rows[-1]
    summary = {"model": args.model, "activation": args.activation, "seed": args.seed,
               "hyperparameters": recipe(config, lr),
               "epochs": config.epochs, **metrics.metric_columns(final),
               "diverged": final["diverged"],
               "devices_used": n_devices, "conv": config.conv if config.model == "lenet" else None,
               "train_seconds": round(sum(r["epoch_seconds"] for r in rows), 2),
               "wall_seconds": round(time.time() - started, 2),
               "data": {"dataset": ds.name, "source": ds.source, "location": ds.location,
                        **cli.image_counts(splits)},
               **environment()}
    if distributed.is_primary():
        records.write_json(workdir / "summary.json", summary)
        results.plot_run(workdir, rows)
    print(f"final test accuracy {final['test_accuracy']:.2%} (test loss {metrics.loss_text(final['test_loss'])}) after "
          f"{config.epochs} epochs; {summary['wall_seconds']:.1f} s; results in {workdir}")
    if final["diverged"]:
        first = next(row["epoch"] for row in rows if row["diverged"])
        print(f"DIVERGED in epoch {first}: a batch loss became non-finite or exceeded ten times chance, and the "
              "parameters were frozen at their last sound values; lower --lr or --weight-decay")
    return 0


if __name__ == "__main__":
    cli.run(main)
