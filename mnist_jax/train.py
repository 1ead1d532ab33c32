"""`python -m mnist_jax.train`: train one model, checkpoint every epoch, resume to the bit after any stop."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Sequence

from mnist_jax import cli
from mnist_jax.models import ACTIVATIONS

DEFAULT_LR = 2e-3


def parse_args(argv: Sequence[str] | None):
    parser = cli.Parser(prog="python -m mnist_jax.train", description=__doc__.split(":", 1)[1].strip())
    cli.add_recipe_args(parser)
    parser.add_argument("--activation", choices=ACTIVATIONS, default="relu", help="(default: %(default)s)")
    parser.add_argument("--lr", type=cli.positive_float, default=DEFAULT_LR,
                        help="peak learning rate of AdamW, reached after one warmup epoch and then cosine-decayed "
                             "to zero (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seeds parameters and batch order (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where metrics, summary and checkpoints go (default: "
                             "checkpoints/<model>-<activation>-seed<seed>); an existing one is resumed")
    cli.add_data_args(parser)
    cli.add_cache_arg(parser)
    args = parser.parse_args(argv)
    if args.workdir is None:
        args.workdir = Path("checkpoints") / f"{args.model}-{args.activation}-seed{args.seed}"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    cli.enable_compile_cache(not args.no_compile_cache)

    import jax

    from mnist_jax import engine
    from mnist_jax.loop import fit
    from mnist_jax.report import environment
    from mnist_jax.workdir import abstract_member, prepare_workdir, run_description

    ds, (x_train, y_train, x_test, y_test) = cli.load_data(args)
    config = cli.build_config(args, len(y_train))
    hyper = engine.Hyper.create(args.activation, args.lr, args.seed)
    workdir = args.workdir
    description = run_description(config, args.activation, args.lr, args.seed, args.dataset, args.test_limit)
    prepare_workdir(workdir, description, args.fresh)
    device = jax.devices()[0]
    x_train, y_train, x_test, y_test = jax.device_put((x_train, y_train, x_test, y_test), device)
    evaluate = jax.jit(engine.evaluate, static_argnums=0)

    def make_row(epoch, state, train_metrics, seconds):
        result = evaluate(config, state.params, hyper, x_test, y_test)
        return {"epoch": epoch, "train_loss": float(train_metrics["train_loss"]),
                "train_accuracy": float(train_metrics["train_accuracy"]),
                "test_loss": float(result["loss"]), "test_accuracy": float(result["accuracy"]),
                "epoch_seconds": round(seconds, 4),
                "images_per_second": round(config.steps_per_epoch * config.batch_size / seconds, 1),
                **({"diverged": True} if bool(state.diverged) else {})}

    def describe_row(row):
        return (f"epoch {row['epoch']:3d}/{config.epochs}  train loss {row['train_loss']:.4f}  "
                f"train acc {row['train_accuracy']:.2%}  test loss {row['test_loss']:.4f}  "
                f"test acc {row['test_accuracy']:.2%}  {row['epoch_seconds']:.2f} s  "
                f"{row['images_per_second']:,.0f} img/s" + ("  DIVERGED" if row.get("diverged") else ""))

    state, rows, finished_before = fit(
        workdir, config.epochs, init=lambda: jax.jit(engine.init_member, static_argnums=0)(config, hyper),
        abstract=abstract_member(config, hyper, device),
        epoch_fn=functools.partial(engine.train_epoch, config), epoch_args=(hyper, x_train, y_train), make_row=make_row, describe_row=describe_row,
        best_of_row=lambda row: row["test_accuracy"], meta={"run": description}, label=f"{args.model}/{args.activation}")
    if finished_before:
        result = evaluate(config, state.params, hyper, x_test, y_test)
        print(f"{workdir} already holds a finished run of {config.epochs} epochs: "
              f"test accuracy {float(result['accuracy']):.2%}, test loss {float(result['loss']):.4f}")
        return 0

    final = rows[-1]
    summary = {"model": args.model, "activation": args.activation, "seed": args.seed,
               "hyperparameters": {"learning_rate": args.lr, "batch_size": args.batch_size,
                                   "weight_decay": args.weight_decay, "epochs": args.epochs,
                                   "hidden": list(config.hidden), "schedule": "1-epoch warmup, cosine decay",
                                   "optimizer": "adamw"},
               "epochs": config.epochs, "test_accuracy": final["test_accuracy"], "test_loss": final["test_loss"],
               "diverged": bool(state.diverged),
               "train_seconds": round(sum(r["epoch_seconds"] for r in rows), 2),
               "wall_seconds": round(time.time() - started, 2),
               "data": {"dataset": ds.name, "source": ds.source, "location": ds.location,
                        "train_images": int(len(y_train)), "test_images": int(len(y_test))},
               **environment()}
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"final test accuracy {final['test_accuracy']:.2%} (test loss {final['test_loss']:.4f}) after "
          f"{config.epochs} epochs; {summary['wall_seconds']:.1f} s; results in {workdir}")
    return 0


if __name__ == "__main__":
    cli.run(main)
