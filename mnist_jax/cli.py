"""What every command line shares: flags derived from mnist_jax.settings, the compilation cache, one-line errors."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax

from mnist_jax import data, distributed, settings
from mnist_jax.errors import Interrupted, UserError


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, like every other error here."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def argument_type(parse):
    """A settings parser as an argparse type: its ValueError becomes argparse's one-line error."""
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return convert


def _help(text: str, default) -> str:
    if default is None or default is False or "(default:" in text:
        return text
    shown = ",".join(map(str, default)) if isinstance(default, (tuple, list)) else "%(default)s"
    return f"{text} (default: {shown})"


def add_settings(parser: argparse.ArgumentParser, command: str) -> None:
    """The flags of `command` (train or sweep), one per declaration in settings.SETTINGS; a sweep takes its
    member settings as lists (--activations, --seeds or --seed-list, --lrs)."""
    groups = {name: parser.add_argument_group(name, text) for name, text in settings.GROUPS.items()}
    defaults = settings.defaults(command)
    for name, parse in settings.parsers(command).items():
        s = settings.BY_NAME.get(name) or next(m for m in settings.members_of() if name in (m.plural, m.count))
        target = groups[s.group] if s.group else parser
        flag = "--" + name.replace("_", "-")
        if s.parse is settings.flag:
            target.add_argument(flag, action="store_true", help=s.help)
        elif name == s.count:
            target.add_argument(flag, type=argument_type(parse), default=defaults[name],
                                help=f"{s.name}s 0..N-1 (default: %(default)s)")
        elif name == s.plural:
            shown = ",".join(map(str, defaults[name])) if defaults[name] else None
            text = f"comma-separated {s.name} values" + (f" (default: {shown})" if shown else "") + (
                f" (overrides --{s.count})" if s.count else "") + ("" if shown or s.count else f"; {s.help}")
            target.add_argument(flag, type=argument_type(parse), default=defaults[name], help=text)
        else:
            target.add_argument(flag, type=argument_type(parse), default=defaults[name], metavar=s.metavar,
                                choices=s.choices, help=_help(s.help, defaults[name]))


def add_data_settings(parser: argparse.ArgumentParser) -> None:
    """--dataset, --data-source and --data-dir for a command on a trained run (evaluate): each defaults to what the
    run record says the run used."""
    group = parser.add_argument_group("data (default: as the run was trained)")
    for name in ("dataset", "data_source", "data_dir"):
        s = settings.BY_NAME[name]
        group.add_argument("--" + name.replace("_", "-"), type=argument_type(s.parse), default=None,
                           choices=s.choices,
                           help=s.help)


def checkpoint_choice(text: str) -> str | int:
    if text in ("latest", "best"):
        return text
    try:
        return settings.positive_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not latest, best or an epoch number") from None


def add_model_settings(parser: argparse.ArgumentParser) -> None:
    """--workdir, --checkpoint, --member and --conv: which trained model to load, and how (evaluate, predict)."""
    parser.add_argument("--workdir", type=Path, required=True, help="a workdir written by train or sweep")
    parser.add_argument("--checkpoint", type=checkpoint_choice, default="latest",
                        help="latest, best (by validation accuracy; the latest where the run had no validation split) "
                             "or an epoch number (default: %(default)s)")
    parser.add_argument("--member", default=None, metavar=settings.member_pattern(),
                        help="for a sweep workdir: which member")
    add_conv_setting(parser)


def add_conv_setting(parser: argparse.ArgumentParser) -> None:
    s = settings.BY_NAME["conv"]
    parser.add_argument("--conv", choices=s.choices, default=s.default, help=_help(s.help, s.default))


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> dict[str, Any]:
    """The flags as a dict of setting values by name: past here no argparse.Namespace travels."""
    return vars(parser.parse_args(argv))


def from_keywords(command: str, keywords: Mapping[str, Any]) -> dict[str, Any]:
    """The Python API's keywords as the same values the command line's flags give, checked by the same parsers;
    a bad one is the command line's one-line error, raised as UserError."""
    parsers = settings.parsers(command)
    unknown = sorted(set(keywords) - set(parsers))
    if unknown:
        raise UserError(f"unknown setting {unknown[0]!r} for {command}: choose from {', '.join(parsers)}")
    values = settings.defaults(command)
    for name, value in keywords.items():
        if value is None:
            continue
        try:
            values[name] = parsers[name](value)
        except ValueError as e:
            raise UserError(f"argument --{name.replace('_', '-')}: {e}") from None
    return values


def load_data(values: Mapping[str, Any]):
    """data.load_splits of the settings, saying on stdout what it uses."""
    ds, splits, record, line = data.load_splits(
        values["dataset"], values["data_source"], values["data_dir"], values["validation_size"],
        values["train_limit"], values["test_limit"], values["batch_size"])
    print(line)
    return ds, splits, record


def start(values: Mapping[str, Any]) -> None:
    """What every training launch does first: the compilation cache, then the distributed runtime."""
    enable_compile_cache(not values["no_compile_cache"])
    distributed.initialize(values["coordinator_address"], values["num_processes"], values["process_id"],
                           values["distributed_timeout"])


def add_cache_setting(parser: argparse.ArgumentParser) -> None:
    s = settings.BY_NAME["no_compile_cache"]
    parser.add_argument("--no-compile-cache", action="store_true", help=s.help)


def enable_compile_cache(enabled: bool) -> None:
    """Persists compiled programs across runs, so only the first run on a machine pays for compilation."""
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
