"""Shared fixtures and helpers: small slices of the bundled MNIST, small configs, running a command line as a user.

Tests drive the package through its public functions: the command lines' `main` (through `cli.run`, as `python -m`
does), the Python API (`train.run`, `sweep.run`, `workdir.load_model`) and the pure engine.
"""

import os
import signal
import subprocess
import sys
import time

import jax

# At test sizes compiling is most of a test's time (over half the suite's CPU time), and XLA:CPU's elemental IR
# emitters compile the suite's programs about a third faster than its default MLIR fusion emitters, computing the same
# bits (test_engine checks it on a LeNet and an MLP epoch; they run a full MLP epoch a fifth slower, so train keeps the
# default). Set for this process's backend only, and only where the installed jaxlib knows the flag (an unknown one
# aborts it): the environment is restored before any test runs, so the command lines tests launch run as users run
# them.
LEGACY_EMITTERS = "--xla_cpu_use_fusion_emitters=false"
_flags = os.environ.get("XLA_FLAGS")
_with_legacy = f"{_flags or ''} {LEGACY_EMITTERS}"
LEGACY = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], capture_output=True,
                        env={**os.environ, "XLA_FLAGS": _with_legacy}).returncode == 0
if LEGACY:
    os.environ["XLA_FLAGS"] = _with_legacy
    jax.devices()  # the backend reads XLA_FLAGS once
    if _flags is None:
        del os.environ["XLA_FLAGS"]
    else:
        os.environ["XLA_FLAGS"] = _flags
    # JAX keys the persistent compilation cache by XLA_FLAGS and by the --xla arguments of sys.argv: this keeps the
    # programs compiled here apart from those of the command lines that tests launch, which share the cache
    sys.argv.append(LEGACY_EMITTERS)
# compiler options that make a program of a test compile as train and sweep compile it
USERS_EMITTERS = {"xla_cpu_use_fusion_emitters": True} if LEGACY else None

import numpy as np
import pytest

from mnist_jax import cli, engine, population, settings
from mnist_jax.data import load_bundled

# A small MLP run: seconds per epoch, enough to see learning.
SMALL = ["--model", "mlp", "--hidden", "32", "--batch-size", "64", "--train-limit", "1024", "--test-limit", "256"]


@pytest.fixture(scope="session")
def mnist():
    return load_bundled()


@pytest.fixture(scope="session")
def small_mnist(mnist):
    """2048 training and 512 test images: enough to see learning in a few seconds."""
    return (np.asarray(mnist.x_train[:2048]), np.asarray(mnist.y_train[:2048]),
            np.asarray(mnist.x_test[:512]), np.asarray(mnist.y_test[:512]))


@pytest.fixture(scope="session", autouse=True)
def compile_cache_in_tmp(tmp_path_factory):
    """Keeps the tests' compiled programs out of the user's cache; subprocesses inherit it. pytest-xdist's workers
    (each has a base temporary folder of its own, in a shared one) share it, so a program is compiled once."""
    base = tmp_path_factory.getbasetemp()
    cache = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "xla-cache"
    cache.mkdir(exist_ok=True)
    os.environ["MNIST_JAX_CACHE_DIR"] = str(cache)


def run_cli(main, *argv) -> int:
    """Runs a command line's main as `python -m` does (one-line errors, exit codes) and returns its exit status."""
    with pytest.raises(SystemExit) as exit_info:
        cli.run(main, [str(a) for a in argv])
    return exit_info.value.code


def one_line_error(capsys, *fragments) -> str:
    """The command's stderr, which must be one line without a traceback and contain every fragment."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def last_error_line(capsys) -> str:
    """The last line of stderr (after a progress bar), which must hold no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1].split("\r")[-1].strip()


def make_config(model="mlp", train_size=2048, **overrides) -> engine.Config:
    """The project's default recipe for `model` with `overrides`, as train builds it (settings.config)."""
    fields = {k: overrides.pop(k) for k in ("warmup_epochs", "eval_batch_size") if k in overrides}
    return settings.config({"model": model, **overrides}, train_size, **fields)


def member(activation="relu", seed=0, lr=1e-3, optimizer="adamw", **others) -> dict:
    """A member's settings: these, and the defaults of `optimizer` for the others (weight decay, b1, ...)."""
    values = {"activation": activation, "seed": seed, "lr": lr, "optimizer": optimizer, **others}
    return settings.member(values, settings.config(values, 256))


def make_hyper(activation="relu", lr=1e-3, seed=0, **others) -> engine.Hyper:
    """One member's hyperparameters as the engine takes them."""
    return settings.hyper(member(activation, seed, lr, **others))


def train_epoch(config, state, hyper, x, y):
    """One whole epoch of one member from the engine's public pieces: its batch order, its steps, the epoch count."""
    state, sums = engine.train_steps(config, state, hyper, x, y, engine.epoch_order(config, state), 0,
                                     config.steps_per_epoch)
    return engine.next_epoch(state), {"loss": sums["loss_sum"] / config.steps_per_epoch,
                                      "accuracy": sums["correct"] / (config.steps_per_epoch * config.batch_size)}


def population_epoch(config, shared_order=False, vmap_chunk=None):
    """One whole epoch of stacked members (population.train_steps over the epoch): (state, hyper, x, y) -> state."""
    steps = population.train_steps(config, shared_order, vmap_chunk, population.member_mesh())

    def epoch(state, hyper, x, y):
        state, _ = steps(state, hyper, x, y, population.orders(config)(state), 0, config.steps_per_epoch)
        return engine.next_epoch(state)
    return jax.jit(epoch)


def member_state(stacked, index):
    return jax.tree.map(lambda leaf: leaf[index], stacked)


def kill_after_first_checkpoint_then_resume(argv, env, workdir, finished_marker: str):
    """Starts `argv`, SIGKILLs it once checkpoint 1 exists, checks it had not finished, runs it again to the end."""
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (workdir / "checkpoints" / "1").is_dir() and process.poll() is None:
        assert time.time() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (workdir / finished_marker).exists(), "the run finished before it could be killed"
    resumed = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
