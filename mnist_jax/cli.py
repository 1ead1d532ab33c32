"""What every command line shares: data flags, argument checks, the compilation cache and one-line errors."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from mnist_jax.errors import Interrupted, UserError


def _whole_number(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{value} must be a {what} whole number")
    return value


def positive_int(text: str) -> int:
    return _whole_number(text, 1, "positive")


def non_negative_int(text: str) -> int:
    return _whole_number(text, 0, "non-negative")


SEED_LIMIT = 2 ** 32  # a seed is a uint32 of the PRNG key


def seed(text: str) -> int:
    value = _whole_number(text, 0, "non-negative")
    if value >= SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"{value} does not fit the PRNG's 32-bit seed (at most {SEED_LIMIT - 1})")
    return value


def _finite_number(text: str, positive: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise argparse.ArgumentTypeError(f"{text} must be a {'positive' if positive else 'non-negative'} finite "
                                         "number")
    return value


def non_negative_float(text: str) -> float:
    return _finite_number(text, positive=False)


def positive_float(text: str) -> float:
    return _finite_number(text, positive=True)


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, like every other error here."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_recipe_args(parser: argparse.ArgumentParser) -> None:
    """Flags that shape the compiled program (engine.Config), shared by train and sweep; defaults from Config."""
    from mnist_jax.engine import OPTIMIZERS, SCHEDULES, Config
    from mnist_jax.models import MODELS

    parser.add_argument("--model", choices=MODELS, default=Config.model, help="network to train (default: %(default)s)")
    parser.add_argument("--epochs", type=positive_int, default=Config.epochs, help="(default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=Config.batch_size, help="(default: %(default)s)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default=Config.optimizer,
                        help="; ".join(f"{name}: {o.description}, default lr {o.learning_rate:g}, weight decay "
                                       f"{o.weight_decay:g}" for name, o in OPTIMIZERS.items())
                        + " (default: %(default)s)")
    parser.add_argument("--schedule", choices=SCHEDULES, default=Config.schedule,
                        help="warmup-cosine: linear warmup over the first epoch to the peak learning rate, then "
                             "cosine decay to zero; constant: the learning rate throughout (default: %(default)s)")
    parser.add_argument("--weight-decay", type=non_negative_float, default=None,
                        help="weight decay (default: the optimizer's, see --optimizer)")
    parser.add_argument("--hidden", type=int_list, default=Config.hidden,
                        help=f"MLP hidden sizes, comma-separated (default: {','.join(map(str, Config.hidden))})")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=Config.dtype,
                        help="compute dtype; parameters and optimizer state stay float32. bfloat16 is for TPUs and "
                             "GPUs (on a CPU it is slower) (default: %(default)s)")
    add_conv_arg(parser)
    parser.add_argument("--fresh", action="store_true", help="delete what the workdir holds and start over")


def add_conv_arg(parser: argparse.ArgumentParser) -> None:
    from mnist_jax.engine import Config
    from mnist_jax.models import CONV_FORMS

    parser.add_argument("--conv", choices=("auto", *CONV_FORMS), default=Config.conv,
                        help="how LeNet's convolutions are computed (the same network and parameters either way): "
                             "toeplitz, block-Toeplitz matmuls, fastest on CPU; lax, the standard convolution for "
                             "GPU and TPU; auto, the one for this backend (default: %(default)s)")


def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(positive_int(part) for part in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive whole numbers separated by commas") from None


def load_data(args: argparse.Namespace):
    """(dataset, {split: (images, labels)}, the data part of the run record) for the flags; says what it uses.

    The validation images are held out of the training images by data.split_validation, the same for every run;
    --train-limit then takes the first N of the rest and --test-limit the first N test images.
    """
    from mnist_jax.data import VALIDATION_SEED, load_dataset, split_validation

    ds = load_dataset(args.data_source, args.dataset, args.data_dir)
    if args.validation_size >= len(ds.y_train):
        raise UserError(f"--validation-size {args.validation_size} is not smaller than the {len(ds.y_train)} "
                        "training images: choose a smaller one (0 turns validation off)")
    train, validation = split_validation(len(ds.y_train), args.validation_size)
    train = train[:args.train_limit]
    if len(train) < args.batch_size:
        raise UserError(f"{len(train)} training images remain after --validation-size {args.validation_size}"
                        + (f" and --train-limit {args.train_limit}" if args.train_limit else "")
                        + f", fewer than one batch of {args.batch_size}: hold out fewer images or choose a smaller "
                          "--batch-size")
    splits = {"train": (ds.x_train[train], ds.y_train[train])}
    if len(validation):
        splits["val"] = (ds.x_train[validation], ds.y_train[validation])
    splits["test"] = (ds.x_test[:args.test_limit], ds.y_test[:args.test_limit])
    counts = ", ".join(f"{len(labels)} {name}" for name, (_, labels) in splits.items())
    dropped = len(train) % args.batch_size
    print(f"data: {ds.describe()}; using {counts}" + (
        f" (an epoch trains on {len(train) - dropped} of the {len(train)}: whole batches of {args.batch_size}, "
        "in a new order each epoch)" if dropped else ""))
    record = {"dataset": args.dataset, "content": ds.content(), "test_limit": args.test_limit,
              "validation": {"images": len(validation), "permutation_seed": VALIDATION_SEED},
              "data_location": {"source": args.data_source,
                                "dir": str(Path(args.data_dir).resolve()) if args.data_dir else None}}
    return ds, splits, record


# The flags that make a run (besides model, activation and seed): a default workdir names those that differ from
# their defaults, so that two different runs never share one and the same command always finds its own.
RUN_FLAGS = ("dataset", "epochs", "batch_size", "optimizer", "schedule", "lr", "weight_decay", "hidden", "dtype",
             "validation_size", "train_limit", "test_limit")


def default_workdir(parser: argparse.ArgumentParser, args: argparse.Namespace, stem: str,
                    flags: Sequence[str] = RUN_FLAGS) -> Path:
    """checkpoints/<stem>[-<flag><value>...] for the `flags` whose value differs from the default (a short hash of
    them where that would be long)."""
    import hashlib

    def text(value) -> str:
        if isinstance(value, (tuple, list)):
            return "x".join(map(text, value))
        return f"{value:g}" if isinstance(value, float) else str(value)

    changed = [f"{dest.replace('_', '')}{text(getattr(args, dest))}" for dest in flags
               if getattr(args, dest) != parser.get_default(dest) and not (dest == "hidden" and args.model != "mlp")]
    name = "-".join([stem, *changed])
    if len(name) > 80:
        name = f"{stem}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"
    return Path("checkpoints") / name


def image_counts(splits: dict) -> dict[str, int]:
    """How many images each split holds, as summaries and results record them (0 validation images: none)."""
    return {"train_images": len(splits["train"][1]), "validation_images": len(splits.get("val", ((), ()))[1]),
            "test_images": len(splits["test"][1])}


def build_config(args: argparse.Namespace, train_size: int):
    from mnist_jax.engine import Config

    return Config(model=args.model, hidden=tuple(args.hidden) if args.model == "mlp" else (),
                  batch_size=args.batch_size, epochs=args.epochs, train_size=train_size, optimizer=args.optimizer,
                  schedule=args.schedule, weight_decay=args.weight_decay, dtype=args.dtype, conv=args.conv)


def add_data_args(parser: argparse.ArgumentParser, from_run: bool = False) -> None:
    """Which data; with `from_run` (evaluate) each flag defaults to what the run record says the run used."""
    from mnist_jax.data import DATASETS, SOURCES

    group = parser.add_argument_group("data" + (" (default: as the run was trained)" if from_run else ""))
    group.add_argument("--dataset", choices=DATASETS, default=None if from_run else "mnist",
                       help="which dataset (default: %(default)s)")
    group.add_argument("--data-source", choices=SOURCES, default=None if from_run else "auto",
                       help="auto: local data only, never a download (IDX files or a prepared tfds copy in "
                            "--data-dir, else the MNIST copy bundled in the package); bundled: the shipped MNIST, "
                            "sha256-verified; idx: the four IDX files (.gz or not) in --data-dir; tfds: "
                            "tensorflow-datasets (default: %(default)s)")
    group.add_argument("--data-dir", type=Path, default=None,
                       help="directory of IDX files, or a tfds data_dir (default: none; tfds uses "
                            "~/tensorflow_datasets)")


def add_split_args(parser: argparse.ArgumentParser) -> None:
    """--validation-size, --train-limit and --test-limit: which images train, select and report (train, sweep)."""
    from mnist_jax.data import VALIDATION_SIZE

    group = parser.add_argument_group("splits")
    group.add_argument("--validation-size", type=non_negative_int, default=VALIDATION_SIZE,
                       help="training images held out for validation, the same ones for every run and seed; the "
                            "best checkpoint is chosen on them (0: no validation split, the best is the latest) "
                            "(default: %(default)s)")
    group.add_argument("--train-limit", type=positive_int, default=None,
                       help="train on the first N of the remaining training images only (quick experiments, tests)")
    group.add_argument("--test-limit", type=positive_int, default=None,
                       help="evaluate on the first N test images only")


def add_cache_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-compile-cache", action="store_true",
                        help="do not use the persistent XLA compilation cache (default: on, in "
                             "$MNIST_JAX_CACHE_DIR or ~/.cache/mnist_jax/xla)")


def enable_compile_cache(enabled: bool) -> None:
    """Persists compiled programs across runs, so only the first run on a machine pays for compilation."""
    import jax

    if not enabled:
        return
    directory = os.environ.get("MNIST_JAX_CACHE_DIR",
                               Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mnist_jax" / "xla")
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> None:
    """Runs a CLI main: a UserError becomes one line on stderr and exit status 2, never a traceback."""
    # Orbax logs a failed write from each of its threads with a traceback, and asyncio logs the same failure again
    # when the abandoned write task is collected; the error that matters is raised here.
    for logger in ("absl", "asyncio"):
        logging.getLogger(logger).setLevel(logging.CRITICAL)
    try:
        code = main(argv)
    except BrokenPipeError:  # stdout closed by its reader (| head): end quietly, as command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except OSError as e:  # a file this run had to write or read: say which, and why, in one line
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}: free space, or fix the folder's permissions or path, and run the "
              "same command again", file=sys.stderr)
        code = 2
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        code = 130
    except KeyboardInterrupt:
        print("interrupted: training resumes from its last completed epoch when the same command is run again",
              file=sys.stderr)
        code = 130
    sys.exit(code)
