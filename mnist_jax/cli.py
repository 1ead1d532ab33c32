"""What every command line shares: data flags, argument checks, the compilation cache and one-line errors."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from mnist_jax.errors import UserError


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be a positive whole number")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text} must be a positive finite number")
    return value


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, like every other error here."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_recipe_args(parser: argparse.ArgumentParser, epochs: int = 12) -> None:
    """Flags that shape the compiled program (engine.Config), shared by train and sweep."""
    from mnist_jax.models import MODELS

    parser.add_argument("--model", choices=MODELS, default="lenet", help="network to train (default: %(default)s)")
    parser.add_argument("--epochs", type=positive_int, default=epochs, help="(default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=128, help="(default: %(default)s)")
    parser.add_argument("--weight-decay", type=float, default=0.2,
                        help="decoupled AdamW weight decay (default: %(default)s)")
    parser.add_argument("--hidden", type=int_list, default=(256, 128),
                        help="MLP hidden sizes, comma-separated (default: 256,128)")
    parser.add_argument("--train-limit", type=positive_int, default=None,
                        help="train on the first N training images only (quick experiments and tests)")
    parser.add_argument("--test-limit", type=positive_int, default=None,
                        help="evaluate on the first N test images only")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute dtype; parameters and optimizer state stay float32. bfloat16 is for TPUs and "
                             "GPUs (on a CPU it is slower) (default: %(default)s)")
    parser.add_argument("--fresh", action="store_true", help="delete what the workdir holds and start over")


def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(positive_int(part) for part in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive whole numbers separated by commas") from None


def load_data(args: argparse.Namespace):
    """The dataset the flags ask for, cut to --train-limit/--test-limit; says which source was used."""
    from mnist_jax.data import load_dataset

    ds = load_dataset(args.data_source, args.dataset, args.data_dir)
    print(f"data: {ds.describe()}")
    splits = (ds.x_train[:args.train_limit], ds.y_train[:args.train_limit],
              ds.x_test[:args.test_limit], ds.y_test[:args.test_limit])
    if args.batch_size > len(splits[1]):
        raise UserError(f"--batch-size {args.batch_size} is larger than the {len(splits[1])} training images: "
                        "choose a smaller batch")
    return ds, splits


def build_config(args: argparse.Namespace, train_size: int):
    from mnist_jax.engine import Config

    return Config(model=args.model, hidden=tuple(args.hidden) if args.model == "mlp" else (),
                  batch_size=args.batch_size, epochs=args.epochs, train_size=train_size,
                  weight_decay=args.weight_decay, dtype=args.dtype)


def add_data_args(parser: argparse.ArgumentParser) -> None:
    from mnist_jax.data import DATASETS, SOURCES

    group = parser.add_argument_group("data")
    group.add_argument("--dataset", choices=DATASETS, default="mnist", help="which dataset (default: %(default)s)")
    group.add_argument("--data-source", choices=SOURCES, default="auto",
                       help="auto: local data only, never a download (IDX files or a prepared tfds copy in "
                            "--data-dir, else the MNIST copy bundled in the package); bundled: the shipped MNIST, "
                            "sha256-verified; idx: the four IDX files (.gz or not) in --data-dir; tfds: "
                            "tensorflow-datasets (default: %(default)s)")
    group.add_argument("--data-dir", type=Path, default=None,
                       help="directory of IDX files, or a tfds data_dir (default: none; tfds uses "
                            "~/tensorflow_datasets)")


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
    try:
        code = main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted: training resumes from its last completed epoch when the same command is run again",
              file=sys.stderr)
        code = 130
    sys.exit(code)
