"""`python -m mnist_jax.bench`: epoch times, sweep scaling, compile times and FLOP/s, with PyTorch side by side.

Everything is measured in one run on this machine, so the ratios are the figures to quote, not the absolute times.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import cli, distributed, engine, population, profiling, records, settings
from mnist_jax.data import load_bundled
from mnist_jax.errors import UserError
from mnist_jax.loop import pieces
from mnist_jax.models import MODELS
from mnist_jax.report import environment
from mnist_jax.export import ExportedModel, exported
from mnist_jax.trainers import Single
from mnist_jax.workdir import TrainedModel

TORCH_REFERENCE = Path(__file__).resolve().parents[1] / "experiments" / "torch_reference.py"
# The fast recipe for 99% test accuracy, chosen on validation (docs/performance.md, "Time to 99%"): the arguments
# after `python -m mnist_jax.train`; each seed of the measurement adds --seed and --workdir.
TIME_TO_99_ARGV = ["--model", "lenet", "--activation", "elu", "--epochs", "2", "--batch-size", "128",
                   "--train-limit", "40000", "--schedule", "one-cycle", "--lr", "0.016", "--b1", "0.85",
                   "--weight-decay", "0.0145", "--label-smoothing", "0.1", "--validation-size", "0"]


def parse_args(argv):
    parser = cli.Parser(prog="python -m mnist_jax.bench", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("--epochs", type=settings.positive_int, default=3, help="timed epochs per measurement, after "
                        "one warm-up epoch; the fastest is reported (default: %(default)s)")
    parser.add_argument("--seeds", type=settings.positive_int, default=5,
                        help="sweep members are 3 activations x this many seeds (default: %(default)s)")
    parser.add_argument("--train-limit", type=settings.positive_int, default=None,
                        help="first N training images only (smoke runs)")
    parser.add_argument("--torch-python", default=None,
                        help="a Python interpreter with torch for the reference (default: this one, if it can "
                             "import torch; else the reference is skipped)")
    parser.add_argument("--rounds", type=settings.positive_int, default=3,
                        help="rounds alternating the epoch timings with the PyTorch reference's; each side's fastest "
                             "is reported (default: %(default)s)")
    parser.add_argument("--time-to-99-seeds", type=cli.argument_type(time_to_99_runs), default=5, metavar="N",
                        help="runs of each recipe in the time-to-99%% comparison, at least 2 (default: "
                             "%(default)s)")
    parser.add_argument("--json", type=Path, default=Path("benchmark.json"), help="where to write the results")
    parser.add_argument("--compile-probe", choices=("lenet", "mlp"), default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def time_to_99_runs(value) -> int:
    """The number of runs of each time-to-99% recipe: a mean and a standard deviation over them need two."""
    runs = settings.positive_int(value)
    if runs < 2:
        raise ValueError(f"{value} run: the comparison reports a mean and standard deviation, which need at least 2")
    return runs


def recipe(model: str, train_size: int, **overrides) -> engine.Config:
    """The default recipe of `model` (settings.SETTINGS) on `train_size` images."""
    return settings.config({"model": model, **overrides}, train_size)


def member(activation: str = "relu", lr: float = 2e-3, seed: int = 0) -> dict:
    """A member of the default recipe with this activation, learning rate and seed."""
    values = {"activation": activation, "lr": lr, "seed": seed}
    return settings.member(values, settings.config(values, 1))


def one_member(activation: str = "relu", lr: float = 2e-3, seed: int = 0) -> engine.Hyper:
    return settings.hyper(member(activation, lr, seed))


def whole_epoch(config: engine.Config):
    """One epoch of one member as a single program (train runs it in pieces, each checked once for divergence:
    measure_guard says what that costs): (state, hyper, x, y) -> (state, sums)."""
    def epoch(state, hyper, x, y):
        state, sums = engine.train_steps(config, state, hyper, x, y, engine.epoch_order(config, state), 0,
                                         config.steps_per_epoch, guarded=False)
        return engine.next_epoch(state), sums
    return epoch


def population_epoch(config: engine.Config, shared_order: bool, vmap_chunk: int | None, mesh):
    """One epoch of stacked members as a single program: (state, hyper, x, y) -> (state, sums)."""
    steps = population.train_steps(config, shared_order, vmap_chunk, mesh)

    def epoch(state, hyper, x, y):
        state, sums = steps(state, hyper, x, y, population.orders(config)(state), 0, config.steps_per_epoch)
        return engine.next_epoch(state), sums
    return epoch


def timed_epochs(compiled, state, args, epochs: int, warm_up: bool = True) -> tuple[float, object]:
    """Fastest of `epochs` timed epochs, after one warm-up epoch unless the program has already run."""
    if warm_up:
        state, _ = compiled(state, *args)
        jax.block_until_ready(state)
    best = float("inf")
    for _ in range(epochs):
        started = time.perf_counter()
        state, _ = compiled(state, *args)
        jax.block_until_ready(state)
        best = min(best, time.perf_counter() - started)
    return best, state


def measure_epochs(x, y, x_np, y_np, epochs: int, torch_python: str | None, rounds: int) -> dict:
    """Each model's epoch (the fastest of `epochs` timed epochs) and the PyTorch reference's, in `rounds` rounds
    that alternate the two, each side's fastest round kept: this machine's speed drifts within minutes, and the
    reference runs in its own interpreter, so interleaved rounds are how the two are measured side by side.
    {"mnist_jax": {model: figures}, "torch": the reference's fastest figures with every round's, or None}."""
    programs = {}
    for model in ("mlp", "lenet"):
        config = recipe(model, len(y))
        hyper = one_member()
        state = engine.initial_state(config, hyper)
        programs[model] = (config, jax.jit(whole_epoch(config)).lower(state, hyper, x, y).compile(), state, hyper)
    best, torch_rounds = dict.fromkeys(programs, float("inf")), []
    with torch_reference(torch_python, x_np, y_np) as reference:
        for round_ in range(rounds):
            for model, (_, compiled, state, hyper) in programs.items():
                best[model] = min(best[model], timed_epochs(compiled, state, (hyper, x, y), epochs, round_ == 0)[0])
            torch = reference and reference("--epochs", str(epochs))
            if torch is None:  # no PyTorch, or it failed (and has said why): this package's side in one round
                break
            torch_rounds.append(torch)
    out = {}
    for model, (config, *_) in programs.items():
        images = config.steps_per_epoch * config.batch_size
        out[model] = {"epoch_seconds": best[model], "images_per_second": images / best[model],
                      "gflops_per_second": training_flops_per_image(model) * images / best[model] / 1e9}
    torch = None
    if torch_rounds:
        torch = {**torch_rounds[0], "rounds": [{m: r[m]["epoch_seconds"] for m in programs} for r in torch_rounds]}
        for model in programs:
            torch[model] = {"epoch_seconds": min(r[model]["epoch_seconds"] for r in torch_rounds)}
            out[model]["torch_epoch_seconds"] = torch[model]["epoch_seconds"]
            out[model]["speedup_over_torch"] = torch[model]["epoch_seconds"] / best[model]
    return {"mnist_jax": out, "torch": torch}


def training_flops_per_image(model: str, hidden: tuple[int, ...] = (256, 128)) -> float:
    """Multiply-adds of the forward pass x 2 FLOPs x 3 (forward, input and weight gradients)."""
    if model == "lenet":
        macs = 28 * 28 * 6 * 25 + 10 * 10 * 16 * 150 + 400 * 120 + 120 * 84 + 84 * 10
    else:
        widths = (784, *hidden, 10)
        macs = sum(a * b for a, b in zip(widths, widths[1:]))
    return 6.0 * macs


def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    matmul = jax.jit(lambda a: a @ a)
    matmul(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - started)
    return 2 * n ** 3 / best / 1e9


def compile_probe(model: str) -> dict:
    """Compiles everything `train` compiles for `model`; run in a fresh process to see cold vs cached."""
    config = recipe(model, 55000)
    hyper = one_member("relu", 1e-3, 0)
    x = jnp.zeros((config.train_size, 28, 28), jnp.uint8)
    y = jnp.zeros((config.train_size,), jnp.int32)
    started = time.perf_counter()
    state = engine.initial_state(config, hyper)
    epoch_started = time.perf_counter()
    jax.jit(whole_epoch(config)).lower(state, hyper, x, y).compile()
    epoch_seconds = time.perf_counter() - epoch_started
    jax.jit(engine.evaluate, static_argnums=0).lower(config, state.params, hyper, x[:10000], y[:10000]).compile()
    return {"compile_seconds": time.perf_counter() - started, "epoch_compile_seconds": epoch_seconds}


def _run(command: list[str], env: dict | None = None) -> tuple[str, float]:
    """(stdout, seconds) of `command`, one of this package's Python processes; a failure is a UserError with the
    last line it printed on stderr."""
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise UserError(f"{' '.join(command[1:4])} failed: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout, time.perf_counter() - started


def measure_compile(model: str) -> dict:
    """Cold (empty persistent cache) and warm (cache filled by the cold run) compile seconds, fresh processes.

    `epoch_*` is the epoch program alone: the compilation that `train` adds to the first epoch.
    """
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "MNIST_JAX_CACHE_DIR": cache}
        runs = []
        for _ in range(2):
            out, _ = _run([sys.executable, "-m", "mnist_jax.bench", "--compile-probe", model], env)
            runs.append(json.loads(out.strip().splitlines()[-1]))
    return {"cold_seconds": runs[0]["compile_seconds"], "warm_seconds": runs[1]["compile_seconds"],
            "epoch_cold_seconds": runs[0]["epoch_compile_seconds"],
            "epoch_warm_seconds": runs[1]["epoch_compile_seconds"]}


def epoch_in_pieces(plan, order, piece):
    """An epoch as `train` runs it: the epoch's batch order, then each piece of `plan` by `piece(state, orders,
    first, length) -> (state, sums)`, its sums fetched to the host after it (timed_epochs' `(state, *args) ->
    (state one epoch on, None)`; the args are ignored)."""
    def run(state, *args):
        orders = order(state)
        for first, n in plan:
            state, sums = piece(state, orders, np.int32(first), n)
            distributed.to_host(sums)
        return engine.next_epoch(state), None
    return run


def measure_pieces(x, y, epochs: int) -> dict:
    """A LeNet epoch as one program against the same epoch in the pieces `train` runs (loop.pieces, a host sync
    after each): the cost of being able to stop within seconds. Alternated, fastest of `epochs` each."""
    config = recipe("lenet", len(y))
    hyper = one_member()
    state = engine.initial_state(config, hyper)
    whole = jax.jit(whole_epoch(config)).lower(state, hyper, x, y).compile()
    plan = pieces(config.steps_per_epoch, 1, MODELS["lenet"].piece_member_steps)
    order = functools.partial(engine.batch_order, config)  # as train
    programs = {n: jax.jit(functools.partial(engine.train_steps, config, steps=n, guarded=False)).lower(
        state, hyper, x, y, order(state), np.int32(0)).compile() for n in {n for _, n in plan}}
    in_pieces = epoch_in_pieces(plan, order, lambda s, o, first, n: programs[n](s, hyper, x, y, o, first))

    best = {"whole": float("inf"), "pieces": float("inf")}
    for _ in range(epochs + 1):  # the first round warms both up
        for name, run in (("whole", whole), ("pieces", in_pieces)):
            seconds, state = timed_epochs(run, state, (hyper, x, y), 1, warm_up=False)
            best[name] = min(best[name], seconds) if _ else best[name]
    return {"pieces": len(plan), "whole_epoch_seconds": best["whole"], "pieces_epoch_seconds": best["pieces"],
            "cost": best["pieces"] / best["whole"] - 1}


def measure_guard(x, y, epochs: int) -> dict:
    """The divergence guard's cost, per model: an epoch in the pieces `train` runs, unguarded (the floor), as
    `train` runs it (unguarded steps and one check a piece: trainers.Program), and guarded at every step (the
    check and freeze of engine.train_step each step: what a piece that went wrong runs again). Alternated,
    fastest of `epochs` each."""
    out = {}
    for model in ("mlp", "lenet"):
        config = recipe(model, len(y))
        trainer = Single(config, member(), {"train": (x, y)})
        state = trainer.init()
        plan = pieces(config.steps_per_epoch, 1, MODELS[model].piece_member_steps)
        programs = {n: trainer.piece(state, trainer.order(state), n) for n in {n for _, n in plan}}
        hyper = trainer.hyper
        ways = {"unguarded": lambda s, o, first, n: programs[n].compiled(s, hyper, x, y, o, first),
                "checked": lambda s, o, first, n: programs[n](s, o, first),
                "every_step": lambda s, o, first, n: programs[n].guarded()(s, hyper, x, y, o, first)}
        best = {way: float("inf") for way in ways}
        for round_ in range(epochs + 1):  # the first round warms each up
            for way, piece in ways.items():
                seconds, state = timed_epochs(epoch_in_pieces(plan, trainer.order, piece), state, (), 1,
                                               warm_up=False)
                best[way] = min(best[way], seconds) if round_ else best[way]
        out[model] = {**{f"{way}_epoch_seconds": seconds for way, seconds in best.items()},
                      "cost": best["checked"] / best["unguarded"] - 1,
                      "every_step_cost": best["every_step"] / best["unguarded"] - 1}
    return out


def measure_serving(x, repeats: int = 20) -> dict:
    """Prediction latency of one image and throughput of a batch of 1,000, for LeNet from a workdir's model
    (workdir.TrainedModel.predict) and from its exported file (export.ExportedModel); the weights do not matter."""
    config = recipe("lenet", 55000)
    values = member()
    state = engine.initial_state(config, settings.hyper(values))
    in_workdir = TrainedModel(config, values, state, 0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.jax"
        path.write_bytes(exported(in_workdir).serialize())
        from_file = ExportedModel(path)
        batch = np.asarray(x[:1000])
        out = {"model": "lenet", "file_bytes": path.stat().st_size}
        for name, model in (("workdir", in_workdir), ("exported", from_file)):
            for images, key in ((batch[:1], "one_image_ms"), (batch, "batch_1000_ms")):
                model.predict(images)  # compiles
                best = float("inf")
                for _ in range(repeats):
                    started = time.perf_counter()
                    model.predict(images)
                    best = min(best, time.perf_counter() - started)
                out[f"{name}_{key}"] = best * 1000
            out[f"{name}_images_per_second"] = 1000 / (out[f"{name}_batch_1000_ms"] / 1000)
    return out


# The parts of a `python -m mnist_jax.train` command: part -> the functions (module, name) whose time it is, timed
# inside the command, as are its imports; "other" is what is left of the whole command (interpreter start, the
# workdir's lock and records, the metrics rows, TensorBoard events, the exit).
COMMAND_PARTS = {
    "data": [("cli", "load_data")],
    "initial state (or the checkpoint to resume)": [("loop", "_resume")],
    "compile (or load from the cache)": [("loop", "_compile")],
    "training (the epochs' seconds)": [("loop", "_run_epoch")],
    "evaluation (validation and test, every epoch)": [("loop", "_row")],
    "checkpoints": [("loop", "_save_epoch")],
    "curves.png": [("plots", "run_curves")],
}
# The default command whose parts are measured.
DEFAULT_COMMAND = ["--model", "lenet"]
# `python -c` this, the parts as JSON, the file to write and the command's arguments: the command line as a user
# launches it (mnist_jax.cli.run), each part's functions wrapped in a timer, the seconds written as it exits. A
# profiler would slow the parts that run Python, and keep the command from ending as it does (mnist_jax.cli).
_TIMED_COMMAND = """
import atexit, importlib, json, pathlib, sys, time
parts, out, argv = json.loads(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3:]
started = time.perf_counter()
from mnist_jax import cli, train
seconds = {"imports": time.perf_counter() - started, **{part: 0.0 for part in parts}}
def timed(part, module, name):
    module = importlib.import_module("mnist_jax." + module)
    function = getattr(module, name)
    def run(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds[part] += time.perf_counter() - started
    setattr(module, name, run)
for part, functions in parts.items():
    for module, name in functions:
        timed(part, module, name)
atexit.register(lambda: out.write_text(json.dumps(seconds)))
sys.argv = ["mnist_jax.train", *argv]
cli.run(train.main)
"""


def measure_command_parts(argv: Sequence[str] = DEFAULT_COMMAND) -> dict:
    """Seconds of each COMMAND_PARTS part of `python -m mnist_jax.train ARGV` with warm caches (a first run fills
    them), timed inside the command, its imports included."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MNIST_JAX_CACHE_DIR": str(Path(tmp) / "cache")}
        _run([sys.executable, "-m", "mnist_jax.train", *argv, "--workdir", str(Path(tmp) / "cold")], env)
        timed = Path(tmp) / "parts.json"
        _, whole = _run([sys.executable, "-c", _TIMED_COMMAND, json.dumps(COMMAND_PARTS), str(timed), *argv,
                         "--workdir", str(Path(tmp) / "warm")], env)
        parts = records.read_json(timed)
        summary = records.read_json(Path(tmp) / "warm" / "summary.json")
    parts["other"] = max(0.0, whole - sum(parts.values()))
    training = parts["training (the epochs' seconds)"]
    return {"argv": list(argv), "command_seconds": whole, "train_seconds": summary["train_seconds"],
            "parts_seconds": parts, "outside_training_seconds": whole - training}


# Large sweeps whose epochs the host loop cuts into more than ten pieces (loop.pieces): model -> members.
LARGE_SWEEPS = {"lenet": 60, "mlp": 75}


def measure_sweep_pieces(x, y, rounds: int, fit: bool = True) -> dict:
    """What the pieces beyond ten of a large sweep's epoch cost (the loop adds them so that the bar moves within
    seconds). Pieces of 1, 2 and 4 times the plan's length are timed interleaved (fastest of `rounds`) and fitted as
    seconds = fixed + per_step * length; the cost is the extra pieces' fixed part against a ten-piece epoch. Without
    `fit` (a smoke run) only the plan's piece is timed."""
    results = {}
    for model, count in LARGE_SWEEPS.items():
        config = recipe(model, len(y))
        steps = config.steps_per_epoch
        members = [member(("elu", "relu", "leaky_relu")[i % 3], 2e-3, i // 3)
                   for i in range(count)]
        hyper, mesh = settings.hyper(members), population.member_mesh()
        state = population.initial_states(config, hyper, shared_order=False)
        orders = population.batch_orders(config, state)
        train = population.train_steps(config, False, population.default_vmap_chunk(), mesh)
        plan = pieces(steps, count, MODELS[model].piece_member_steps)
        length = max(n for _, n in plan)
        lengths = sorted({min(k * length, steps) for k in ((1, 2, 4) if fit else (1,))})
        programs = {n: jax.jit(functools.partial(train, steps=n)).lower(
            state, hyper, x, y, orders, np.int32(0)).compile() for n in lengths}
        best = dict.fromkeys(lengths, float("inf"))
        for round_ in range(rounds + 1):  # the first round warms up
            for n, program in programs.items():
                started = time.perf_counter()
                state, sums = program(state, hyper, x, y, orders, np.int32(0))
                distributed.to_host(sums)
                seconds = time.perf_counter() - started
                best[n] = min(best[n], seconds) if round_ else best[n]
        ten = len(pieces(steps, 1, steps))
        results[model] = {"members": count, "pieces": len(plan), "ten_pieces": ten, "piece_length": length,
                          "piece_seconds": best[length]}
        if len(lengths) > 1:
            per_step, fixed = np.polyfit(lengths, [best[n] for n in lengths], 1)
            results[model].update(fixed_seconds_per_piece=float(fixed),
                                  cost=float((len(plan) - ten) * fixed / (ten * fixed + steps * per_step)))
    return results


# The ways a sweep can train its members (sweep --vmap-chunk, --shared-order): name -> (vmap chunk, shared order).
SWEEP_STRATEGIES = {"vmap of all": (None, False), "vmap of all, --shared-order": (None, True),
                    "lax.map, 1 at a time": (1, False), "lax.map of vmapped 3s": (3, False),
                    "lax.map of vmapped 5s": (5, False)}


def measure_sweep(x, y, seeds: int) -> dict:
    """One LeNet epoch of 3 activations x `seeds` members: each as a single run (the program train runs), summed,
    and as one sweep program in each of SWEEP_STRATEGIES; one timed epoch each."""
    config = recipe("lenet", len(y))
    members = [member(a, 2e-3, s) for a in ("elu", "relu", "leaky_relu") for s in range(seeds)]
    runs = [settings.hyper(m) for m in members]
    single = jax.jit(whole_epoch(config)).lower(
        engine.initial_state(config, runs[0]), runs[0], x, y).compile()
    sequential = sum(timed_epochs(single, engine.initial_state(config, hyper), (hyper, x, y), 1, warm_up=i == 0)[0]
                     for i, hyper in enumerate(runs))
    hyper, mesh = settings.hyper(members), population.member_mesh()
    strategies = {}
    for name, (chunk, shared_order) in SWEEP_STRATEGIES.items():
        state = population.initial_states(config, hyper, shared_order=shared_order)
        compiled = jax.jit(population_epoch(config, shared_order, chunk, mesh)).lower(state, hyper, x, y).compile()
        seconds = timed_epochs(compiled, state, (hyper, x, y), 1, warm_up=False)[0]
        strategies[name] = {"vmap_chunk": chunk, "shared_order": shared_order, "epoch_seconds": seconds,
                            "ratio_to_sequential": seconds / sequential}
    return {"members": len(members), "sequential_epoch_seconds": sequential, "strategies": strategies,
            "default_vmap_chunk": population.default_vmap_chunk()}


def measure_time_to_99(torch_python: str | None, seeds: int, train_images, train_labels, test_images, test_labels,
                       train_limit: int | None = None) -> dict:
    """The fast recipe (TIME_TO_99_ARGV), one fresh `python -m mnist_jax.train` per seed, against the tuomaso
    recipe in PyTorch (experiments/torch_reference.py), `seeds` runs each, alternated seed by seed so that a
    machine's drift falls on both: test accuracy (mean, std), seconds of training, of the whole command and
    (mnist_jax) of compilation, cold (an empty compilation cache: the first seed run once before) and warm (the cache
    it filled)."""
    argv = TIME_TO_99_ARGV + (["--train-limit", str(train_limit), "--epochs", "1"] if train_limit else [])
    out: dict = {"mnist_jax": {"argv": TIME_TO_99_ARGV, "runs": []}}
    with tempfile.TemporaryDirectory() as tmp, \
            torch_reference(torch_python, train_images, train_labels, (test_images, test_labels)) as reference:
        env = {**os.environ, "MNIST_JAX_CACHE_DIR": str(Path(tmp) / "cache")}

        def train(seed: int, name: str) -> dict:
            workdir = Path(tmp) / name
            stdout, command_seconds = _run([sys.executable, "-m", "mnist_jax.train", *argv, "--seed", str(seed),
                                            "--workdir", str(workdir)], env)
            summary = records.read_json(workdir / "summary.json")
            compiled = float(re.search(r"pieces in ([0-9.]+) s", stdout).group(1))
            return {"seed": seed, "test_accuracy": summary["test_accuracy"], "train_seconds": summary["train_seconds"],
                    "command_seconds": command_seconds, "compile_seconds": compiled}

        cold = train(0, "cold")
        out["mnist_jax"]["cold_compile_seconds"] = cold["compile_seconds"]
        out["mnist_jax"]["cold_command_seconds"] = cold["command_seconds"]
        for seed in range(seeds):
            out["mnist_jax"]["runs"].append(train(seed, f"seed{seed}"))
            torch = reference and reference("--time-to-99", "1", "--first-seed", str(seed))
            if torch is None:  # no PyTorch, or it failed (and has said why): the other seeds run this package's only
                reference = None
                continue
            out.setdefault("tuomaso", {"recipe": "tuomaso/train_mnist_fast 8_Final (PyTorch)", "runs": [],
                                       "torch": torch["torch"], "threads": torch["threads"]})
            out["tuomaso"]["runs"] += torch["runs"]
    for name, entry in out.items():
        runs = entry["runs"]
        for key in ("test_accuracy", "train_seconds", "command_seconds", "run_seconds", "compile_seconds"):
            if runs and key in runs[0]:
                values = np.array([r[key] for r in runs], float)
                entry[f"mean_{key}"], entry[f"std_{key}"] = float(values.mean()), float(values.std(ddof=1))
    if "tuomaso" in out:
        out["train_seconds_ratio"] = out["mnist_jax"]["mean_train_seconds"] / out["tuomaso"]["mean_train_seconds"]
    return out


@contextlib.contextmanager
def torch_reference(python: str | None, x, y, test=None):
    """experiments/torch_reference.py on these images (and `test` images), saved for it once: yields run(*flags),
    which gives its JSON (epoch times with `--epochs N`, the tuomaso recipe's runs with `--time-to-99 N`) or None
    (with a note) where it fails; yields None where no PyTorch is found (`python` None and none importable here)."""
    if python is None:
        if importlib.util.find_spec("torch") is None:
            yield None
            return
        python = sys.executable
    if not TORCH_REFERENCE.exists():
        print(f"note: {TORCH_REFERENCE} is missing (run from a clone of the repository); no PyTorch reference",
              file=sys.stderr)
        yield None
        return
    with tempfile.TemporaryDirectory() as tmp:
        arrays = {"images": x, "labels": y, **({"test-images": test[0], "test-labels": test[1]} if test else {})}
        data = []
        for name, array in arrays.items():
            np.save(Path(tmp) / f"{name}.npy", np.asarray(array))
            data += [f"--{name}", str(Path(tmp) / f"{name}.npy")]

        def run(*flags: str) -> dict | None:
            try:
                result = subprocess.run([python, str(TORCH_REFERENCE), *data, *flags], capture_output=True,
                                        text=True)
            except OSError as e:
                print(f"note: cannot run {python} for the PyTorch reference ({e.strerror}); skipped",
                      file=sys.stderr)
                return None
            if result.returncode != 0:
                last = (result.stderr.strip().splitlines() or ["it printed nothing on stderr"])[-1]
                print(f"note: the PyTorch reference failed (exit status {result.returncode}): {last}",
                      file=sys.stderr)
                return None
            return json.loads(result.stdout.strip().splitlines()[-1])

        yield run


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Programs compiled here are kept in the compilation cache like train's, so that the parts that compile the
    # same program, and a second run, load it; the compile-time figures come from processes with caches of their own.
    cli.enable_compile_cache(True)
    if args.compile_probe:
        print(json.dumps(compile_probe(args.compile_probe)))
        return 0
    records.check_writable(args.json.parent)  # before the measuring, not after it

    ds = load_bundled()
    x_np, y_np = ds.x_train[:args.train_limit], ds.y_train[:args.train_limit]
    x, y = jax.device_put((x_np, y_np))
    results: dict = {"environment": {**environment(), "cpu_count": os.cpu_count(), "platform": platform.platform()},
                     "train_images": int(len(y_np)), "timed_epochs": args.epochs}
    print(f"benchmark on {jax.default_backend()} ({jax.devices()[0].device_kind}), {len(y_np)} images per epoch")

    results["matmul_peak_gflops"] = matmul_peak_gflops()
    timed = measure_epochs(x, y, x_np, y_np, args.epochs, args.torch_python, args.rounds)
    results.update(timed["mnist_jax"])
    results["torch"] = timed["torch"]
    hyper = one_member()

    config = recipe("lenet", len(y_np), conv="lax")
    state = engine.initial_state(config, hyper)
    compiled = jax.jit(whole_epoch(config)).lower(state, hyper, x, y).compile()
    results["lenet"]["lax_conv_epoch_seconds"] = timed_epochs(compiled, state, (hyper, x, y), 1)[0]
    results["profile"] = {model: profiling.profile_step(recipe(model, len(y_np)), one_member(), x, y)
                          for model in ("lenet", "mlp")}
    results["lenet_pieces"] = measure_pieces(x, y, args.epochs)
    results["guard"] = measure_guard(x, y, args.epochs)
    results["serving"] = measure_serving(x_np)
    results["lenet_sweep"] = measure_sweep(x, y, args.seeds)
    results["sweep_pieces"] = measure_sweep_pieces(x, y, args.epochs, fit=args.train_limit is None)
    results["compile_lenet"] = measure_compile("lenet")
    results["command_parts"] = measure_command_parts(DEFAULT_COMMAND if args.train_limit is None else
                                                     [*DEFAULT_COMMAND, "--train-limit", str(args.train_limit),
                                                      "--epochs", "1"])
    results["time_to_99"] = measure_time_to_99(args.torch_python, args.time_to_99_seeds, x_np, y_np, ds.x_test,
                                               ds.y_test, args.train_limit)

    records.write_json(args.json, results)
    print(table(results))
    for profile in results["profile"].values():
        print(f"\nwhere a step's time goes (mnist_jax.profiling):\n{profiling.table(profile)}")
    print(f"\n{command_table(results['command_parts'])}")
    print(f"results in {args.json}")
    return 0


# The head of the benchmark's table: each row is measurement | mnist_jax | PyTorch | ratio.
TABLE_HEADER = ["| measurement | mnist_jax | PyTorch | ratio |", "| --- | --- | --- | --- |"]


def table(r: dict) -> str:
    def torch_cols(model):
        t = r[model].get("torch_epoch_seconds")
        return ("n/a", "n/a") if t is None else (f"{t:.3f}", f"{r[model]['speedup_over_torch']:.2f}x")

    cpu = r["environment"]
    lines = [f"on the CPU {cpu['cpu']!r} (avx512f: {cpu['avx512f']}), {cpu['cpu_count']} CPUs, the same run for both "
             "sides:", "", *TABLE_HEADER]
    for model in ("lenet", "mlp"):
        t, ratio = torch_cols(model)
        lines.append(f"| {model} epoch seconds (batch 128) | {r[model]['epoch_seconds']:.3f} | {t} | {ratio} |")
        lines.append(f"| {model} images/s | {r[model]['images_per_second']:,.0f} | | |")
    lines.append(f"| lenet epoch seconds with --conv lax (the standard convolution) | "
                 f"{r['lenet']['lax_conv_epoch_seconds']:.3f} | | "
                 f"{r['lenet']['lax_conv_epoch_seconds'] / r['lenet']['epoch_seconds']:.2f}x the toeplitz epoch |")
    p = r["lenet_pieces"]
    lines.append(f"| lenet epoch in {p['pieces']} pieces (what train runs: stoppable within seconds) against one "
                 f"program | {p['pieces_epoch_seconds']:.3f} / {p['whole_epoch_seconds']:.3f} | | "
                 f"{p['cost']:+.1%} |")
    for model, g in r["guard"].items():
        lines.append(f"| {model} epoch: divergence guard as train runs it (one check a piece) / unguarded / guarded "
                     f"every step | {g['checked_epoch_seconds']:.3f} / {g['unguarded_epoch_seconds']:.3f} / "
                     f"{g['every_step_epoch_seconds']:.3f} | | {g['cost']:+.1%} (every step: "
                     f"{g['every_step_cost']:+.1%}) |")
    v = r["serving"]
    for name in ("workdir", "exported"):
        lines.append(f"| lenet prediction from the {name}{' file' if name == 'exported' else ''}: one image ms / "
                     f"1,000 images ms | {v[f'{name}_one_image_ms']:.2f} / {v[f'{name}_batch_1000_ms']:.1f} | | "
                     f"{v[f'{name}_images_per_second']:,.0f} images/s |")
    for model, p in r["sweep_pieces"].items():
        if "cost" not in p:
            continue
        lines.append(f"| {model} sweep of {p['members']}: {p['pieces']} pieces of {p['piece_length']} steps an epoch, "
                     f"not {p['ten_pieces']}: seconds a piece, of them fixed | {p['piece_seconds']:.2f}, "
                     f"{p['fixed_seconds_per_piece']:.3f} | | {p['cost']:+.1%} of an epoch |")
    s = r["lenet_sweep"]
    lines.append(f"| lenet: {s['members']} single runs, one epoch each, summed | "
                 f"{s['sequential_epoch_seconds']:.2f} | | 1.00x |")
    for name, strategy in s["strategies"].items():
        default = " (the default here)" if strategy["vmap_chunk"] == s["default_vmap_chunk"] and \
            not strategy["shared_order"] else ""
        lines.append(f"| lenet sweep of {s['members']}, {name}{default}: epoch seconds | "
                     f"{strategy['epoch_seconds']:.2f} | | {strategy['ratio_to_sequential']:.2f}x the single runs |")
    lines += time_to_99_rows(r["time_to_99"])
    c = r["compile_lenet"]
    lines.append(f"| lenet epoch program compile seconds (added to epoch 1), cold / cached | "
                 f"{c['epoch_cold_seconds']:.2f} / {c['epoch_warm_seconds']:.2f} | | |")
    lines.append(f"| lenet init + epoch + evaluation compile seconds, cold / cached | {c['cold_seconds']:.2f} / "
                 f"{c['warm_seconds']:.2f} | | |")
    for model in ("lenet", "mlp"):
        g = r[model]["gflops_per_second"]
        lines.append(f"| {model} achieved GFLOP/s (counted from the layers) | {g:.1f} | | "
                     f"{g / r['matmul_peak_gflops']:.1%} of the measured matmul peak "
                     f"({r['matmul_peak_gflops']:.0f} GFLOP/s, 2048x2048 float32) |")
    return "\n".join(lines)


def time_to_99_rows(t: dict) -> list[str]:
    """The rows of the benchmark's table (TABLE_HEADER) that measure_time_to_99's result `t` gives."""
    lines = []
    for name, entry in t.items():
        if isinstance(entry, dict):
            what = "mnist_jax fast recipe (" + " ".join(entry["argv"]) + ")" if name == "mnist_jax" else entry["recipe"]
            whole = entry.get("mean_command_seconds", entry.get("mean_run_seconds", 0))  # PyTorch's: its run
            lines.append(f"| time to 99%: {what}, {len(entry['runs'])} runs: test accuracy, training seconds "
                         f"(whole command) | {entry['mean_test_accuracy']:.2%} ± {entry['std_test_accuracy']:.2%}, "
                         f"{entry['mean_train_seconds']:.2f} s ({whole:.2f} s) | | |")
    if "train_seconds_ratio" in t:
        lines.append(f"| time to 99%: mnist_jax training time / tuomaso's | | | {t['train_seconds_ratio']:.2f}x |")
    m = t["mnist_jax"]
    lines.append(f"| time to 99%: mnist_jax compile seconds, cold / warm (first seed) | "
                 f"{m['cold_compile_seconds']:.2f} / {m['runs'][0]['compile_seconds']:.2f} | | |")
    return lines


def command_table(c: dict) -> str:
    """A markdown table of measure_command_parts: each part's seconds and share of the whole command."""
    lines = [f"| part of `python -m mnist_jax.train {' '.join(c['argv'])}` (warm cache) | seconds | share |",
             "| --- | --- | --- |"]
    for part, seconds in c["parts_seconds"].items():
        lines.append(f"| {part} | {seconds:.2f} | {seconds / c['command_seconds']:.0%} |")
    lines.append(f"| whole command (outside training: {c['outside_training_seconds']:.2f} s) | "
                 f"{c['command_seconds']:.2f} | 100% |")
    return "\n".join(lines)


if __name__ == "__main__":
    cli.run(main)
