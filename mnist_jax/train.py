"""`python -m mnist_jax.train`: train one model, checkpoint every epoch, resume to the bit after any stop."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Sequence

from mnist_jax import cli
from mnist_jax.errors import UserError
from mnist_jax.models import ACTIVATIONS, MODELS

DEFAULT_LR = 2e-3


def parse_args(argv: Sequence[str] | None):
    parser = cli.Parser(prog="python -m mnist_jax.train", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("--model", choices=MODELS, default="lenet", help="network to train (default: %(default)s)")
    parser.add_argument("--activation", choices=ACTIVATIONS, default="relu", help="(default: %(default)s)")
    parser.add_argument("--epochs", type=cli.positive_int, default=12, help="(default: %(default)s)")
    parser.add_argument("--batch-size", type=cli.positive_int, default=128, help="(default: %(default)s)")
    parser.add_argument("--lr", type=cli.positive_float, default=DEFAULT_LR,
                        help="peak learning rate of AdamW, reached after one warmup epoch and then cosine-decayed "
                             "to zero (default: %(default)s)")
    parser.add_argument("--weight-decay", type=float, default=0.2,
                        help="decoupled AdamW weight decay (default: %(default)s)")
    parser.add_argument("--hidden", default="256,128", help="MLP hidden sizes, comma-separated (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seeds parameters and batch order (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where metrics, summary and checkpoints go (default: "
                             "checkpoints/<model>-<activation>-seed<seed>); an existing one is resumed")
    parser.add_argument("--fresh", action="store_true", help="delete what the workdir holds and start over")
    parser.add_argument("--train-limit", type=cli.positive_int, default=None,
                        help="train on the first N training images only (quick experiments and tests)")
    parser.add_argument("--test-limit", type=cli.positive_int, default=None,
                        help="evaluate on the first N test images only")
    cli.add_data_args(parser)
    cli.add_cache_arg(parser)
    args = parser.parse_args(argv)
    try:
        args.hidden = tuple(cli.positive_int(h) for h in args.hidden.split(","))
    except Exception:
        parser.error(f"--hidden {args.hidden!r} must be positive whole numbers separated by commas, e.g. 256,128")
    if args.workdir is None:
        args.workdir = Path("checkpoints") / f"{args.model}-{args.activation}-seed{args.seed}"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    cli.enable_compile_cache(not args.no_compile_cache)

    import jax
    from tqdm import tqdm

    from mnist_jax import checkpoint, engine
    from mnist_jax.workdir import abstract_member, prepare_workdir, read_metrics, run_description
    from mnist_jax.data import load_dataset
    from mnist_jax.report import environment

    ds = load_dataset(args.data_source, args.dataset, args.data_dir)
    print(f"data: {ds.describe()}")
    x_train, y_train = ds.x_train[:args.train_limit], ds.y_train[:args.train_limit]
    x_test, y_test = ds.x_test[:args.test_limit], ds.y_test[:args.test_limit]
    if args.batch_size > len(y_train):
        raise UserError(f"--batch-size {args.batch_size} is larger than the {len(y_train)} training images: "
                        "choose a smaller batch")

    config = engine.Config(model=args.model, hidden=args.hidden if args.model == "mlp" else (),
                           batch_size=args.batch_size, epochs=args.epochs, train_size=len(y_train),
                           weight_decay=args.weight_decay)
    hyper = engine.Hyper.create(args.activation, args.lr, args.seed)
    workdir = args.workdir
    description = run_description(config, args.activation, args.lr, args.seed, args.dataset, args.test_limit)
    prepare_workdir(workdir, description, args.fresh)
    device = jax.devices()[0]
    x_train, y_train, x_test, y_test = jax.device_put((x_train, y_train, x_test, y_test), device)

    manager = checkpoint.open_manager(workdir / "checkpoints")
    try:
        start = manager.latest_step() or 0
        if start:
            state, _ = checkpoint.restore(manager, start, abstract_member(config, hyper, device))
            print(f"resuming {workdir} after epoch {start} of {config.epochs}")
        else:
            state = jax.jit(engine.init_member, static_argnums=0)(config, hyper)
        evaluate = jax.jit(engine.evaluate, static_argnums=0)
        metrics_path = workdir / "metrics.jsonl"
        rows = read_metrics(metrics_path, start)
        metrics_path.write_text("".join(json.dumps(row) + "\n" for row in rows))

        if start >= config.epochs:
            result = evaluate(config, state.params, hyper, x_test, y_test)
            print(f"{workdir} already holds a finished run of {config.epochs} epochs: "
                  f"test accuracy {float(result['accuracy']):.2%}, test loss {float(result['loss']):.4f}")
            return 0

        compile_started = time.time()
        train_epoch = jax.jit(engine.train_epoch, static_argnums=0).lower(
            config, state, hyper, x_train, y_train).compile()
        compile_seconds = time.time() - compile_started
        print(f"compiled the epoch program in {compile_seconds:.1f} s on {jax.default_backend()}")

        bar = tqdm(range(start, config.epochs), initial=start, total=config.epochs, unit="epoch",
                   desc=f"{args.model}/{args.activation}", file=sys.stderr, dynamic_ncols=True)
        for epoch_index in bar:
            epoch = epoch_index + 1
            epoch_started = time.time()
            state, train_metrics = train_epoch(state, hyper, x_train, y_train)
            jax.block_until_ready(state)
            seconds = time.time() - epoch_started + (compile_seconds if epoch == 1 else 0.0)
            result = evaluate(config, state.params, hyper, x_test, y_test)
            row = {"epoch": epoch,
                   "train_loss": float(train_metrics["train_loss"]),
                   "train_accuracy": float(train_metrics["train_accuracy"]),
                   "test_loss": float(result["loss"]),
                   "test_accuracy": float(result["accuracy"]),
                   "epoch_seconds": round(seconds, 4),
                   "images_per_second": round(config.steps_per_epoch * config.batch_size / seconds, 1)}
            rows.append(row)
            with metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            meta = {"epoch": epoch, "run": description, "metrics": row}
            checkpoint.save(manager, epoch, state, meta, {"test_accuracy": row["test_accuracy"]})
            bar.set_postfix(loss=f"{row['train_loss']:.4f}", test_acc=f"{row['test_accuracy']:.2%}")
            bar.write(f"epoch {epoch:3d}/{config.epochs}  train loss {row['train_loss']:.4f}  "
                      f"train acc {row['train_accuracy']:.2%}  test loss {row['test_loss']:.4f}  "
                      f"test acc {row['test_accuracy']:.2%}  {seconds:.2f} s  "
                      f"{row['images_per_second']:,.0f} img/s" + ("  DIVERGED" if bool(state.diverged) else ""))
        bar.close()
        manager.wait_until_finished()
    finally:
        manager.close()

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
