"""What every command line shares: flags derived from mnist_jax.settings, the compilation cache, one-line errors."""

from __future__ import annotations

import argparse
import atexit
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax

from mnist_jax import data, distributed, records, settings, traced
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
    used = {i.setting.group for i in settings.inputs(command)}
    groups = {name: parser.add_argument_group(name, text) for name, text in settings.GROUPS.items() if name in used}
    for i in settings.inputs(command):
        s = i.setting
        target = groups[s.group] if s.group else parser
        flag = "--" + i.name.replace("_", "-")
        if s.parse is settings.flag:
            target.add_argument(flag, action="store_true", help=s.help)
        elif i.name == s.count:
            target.add_argument(flag, type=argument_type(i.parse), default=i.default,
                                help=f"{s.name}s 0..N-1 (default: %(default)s)")
        elif i.name == s.plural:
            shown = ",".join(map(str, i.default)) if i.default else None
            text = f"comma-separated {s.name} values" + (" or a range LOW..HIGH" if s.scale else "") + (
                f" (default: {shown})" if shown else "") + (
                f" (overrides --{s.count})" if s.count else "") + ("" if shown or s.count else f"; {s.help}")
            target.add_argument(flag, type=argument_type(i.parse), default=i.default, help=text)
        else:
            target.add_argument(flag, type=argument_type(i.parse), default=i.default, metavar=s.metavar,
                                choices=s.choices, help=_help(s.help, i.default))


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
    """--checkpoint: best, latest (either in any case) or an epoch number."""
    if text.strip().lower() in ("latest", "best"):
        return text.strip().lower()
    try:
        return settings.positive_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not best, latest or an epoch number (1, 2, ...)") from None


def add_model_settings(parser: argparse.ArgumentParser, workdir_required: bool = True) -> None:
    """--workdir, --checkpoint, --member and --conv: which trained model to load, and how (evaluate, predict,
    export)."""
    parser.add_argument("--workdir", type=Path, required=workdir_required, default=None,
                        help="a workdir written by train or sweep")
    parser.add_argument("--checkpoint", type=checkpoint_choice, default="best",
                        help="best (chosen on validation accuracy; the latest where the run had no validation split), "
                             "latest or an epoch number (default: %(default)s)")
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
    """Persists compiled programs across runs, so only the first run on a machine pays for compilation. A cache
    folder that cannot be written is one warning line, and compiling goes on without it."""
    if not enabled:
        return
    directory = Path(os.environ.get("MNIST_JAX_CACHE_DIR",
                                    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mnist_jax" / "xla"))
    try:
        directory.mkdir(parents=True, exist_ok=True)
        records.check_writable(directory)
    except OSError as e:
        print(f"warning: the compilation cache {directory} is not writable ({records.os_reason(e)}): compiling "
              "without it (set MNIST_JAX_CACHE_DIR, or pass --no-compile-cache)", file=sys.stderr)
        return
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


_MEMORY_FIX = ("lower --hidden or --batch-size, or train fewer members side by side (--vmap-chunk, fewer members "
               "per device); the same command resumes from the last saved epoch")


def _asked(message: str | None) -> str:
    """' (asked for 1.20 GB more)' from XLA's 'trying to allocate N bytes', where it says."""
    found = re.search(r"allocat(?:e|ing) (\d+)(?:\.\d+)? ?bytes", message or "")
    return f" (asked for {int(found[1]) / 1e9:.2f} GB more)" if found else ""


# Settings of the environment that need no check: the CPU backend, and a count of simulated CPU devices.
_PLAIN_PLATFORMS = ("", "cpu")
_PLAIN_XLA_FLAG = re.compile(r"^--xla_force_host_platform_device_count=\d+$")


def check_environment() -> None:
    """JAX_PLATFORMS naming a backend this machine lacks, or XLA_FLAGS that XLA refuses, end in a C++ abort or a chain
    of tracebacks inside JAX; a child process tries them first (about a second, only where they are set otherwise
    than plainly), so that the error is one line."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    flags = os.environ.get("XLA_FLAGS", "").split()
    if platforms in _PLAIN_PLATFORMS and all(_PLAIN_XLA_FLAG.match(flag) for flag in flags):
        return
    probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], capture_output=True, text=True,
                           timeout=120)
    if probe.returncode == 0:
        return
    lines = [line.split("] ", 1)[-1].strip() for line in probe.stderr.splitlines() if line.strip()]
    for marker, setting in (("Unknown flag", "XLA_FLAGS"), ("Couldn't interpret", "XLA_FLAGS"),
                            ("Unable to initialize backend", "JAX_PLATFORMS")):
        found = next((line for line in lines if marker in line), None)
        if found:
            break
    else:
        found, setting = (lines[-1] if lines else f"exit status {probe.returncode}"), \
            ("JAX_PLATFORMS" if platforms not in _PLAIN_PLATFORMS else "XLA_FLAGS")
    found = found.removeprefix("RuntimeError: ").split(" (set JAX_PLATFORMS=")[0]
    if found == "AssertionError":  # what jax says of a known platform whose plugin is not installed
        found = "no such backend is installed"
    value = platforms if setting == "JAX_PLATFORMS" else " ".join(flags)
    advice = "unset it (or set it to cpu) to use the backend this machine has" if setting == "JAX_PLATFORMS" else \
        "fix or unset it"
    raise UserError(f"{setting}={value!r} does not work with the installed jaxlib ({found[:200]}): {advice}")


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> None:
    """Runs a CLI main: a UserError becomes one line on stderr and exit status 2, never a traceback. Without `argv`
    (this process's own command line: `python -m mnist_jax...`, where only this package's code is traced) the traced
    programs are kept across launches (mnist_jax.traced)."""
    atexit.register(_ignore_interrupts)  # registered last, run first: a Ctrl-C while exiting ends quietly
    if argv is None:
        traced.enable()
    try:
        check_environment()
        code = main(argv)
    except BrokenPipeError:  # stdout closed by its reader (| head): end quietly, as command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except OSError as e:  # a file this run had to write or read: say which, and why, in one line
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{records.os_reason(e)}: {records.fix_for(e)}, and run the same command again",
              file=sys.stderr)
        code = 2
    except MemoryError:
        print(f"error: out of memory{_asked(None)}: {_MEMORY_FIX}", file=sys.stderr)
        code = 2
    except jax.errors.JaxRuntimeError as e:  # XLA:CPU says RESOURCE_EXHAUSTED, or INTERNAL ... Out of memory
        if "RESOURCE_EXHAUSTED" not in str(e) and "Out of memory" not in str(e):
            raise
        print(f"error: out of memory{_asked(str(e))}: {_MEMORY_FIX}", file=sys.stderr)
        code = 2
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        code = 130
    except KeyboardInterrupt:
        print("interrupted (a training run resumes from its last saved epoch when the same command is run again)",
              file=sys.stderr)
        code = 130
    if argv is None:
        _exit_now(code)
    sys.exit(code)


def _exit_now(code: int) -> None:
    """Ends a command line's process once its exit handlers have run and its output is flushed, without the
    interpreter's own teardown: freeing every module and JAX's runtime took 0.45 s of every launch on a 2-core CPU
    and writes nothing. Returns (for a normal exit) while another non-daemon thread still runs, or while a profiler
    or tracer (cProfile, coverage, a debugger) watches, which writes its results at the normal exit."""
    monitoring = getattr(sys, "monitoring", None)  # Python 3.12's tool hooks (coverage uses them)
    watched = sys.getprofile() is not None or sys.gettrace() is not None or (
        monitoring is not None and any(monitoring.get_tool(tool) for tool in range(6)))
    if watched or any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return
    atexit._run_exitfuncs()  # what a normal exit runs first: JAX's clean-up, the distributed runtime's shutdown, logging
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(code)


def _ignore_interrupts() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
