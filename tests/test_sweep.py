"""The sweep: a vectorisation of the single run, nothing more; divergence, devices, resume, results, export."""

import json
import os
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import engine, population, settings, sweep, train
from mnist_jax.trainers import Population
from mnist_jax.workdir import load_member, load_run

from conftest import (SMALL, kill_after_first_checkpoint_then_resume, make_config, member, member_state,
                      one_line_error, population_epoch, run_cli, train_epoch)

ROOT = Path(__file__).resolve().parents[1]
SWEEP = [*SMALL, "--activations", "elu,relu,leaky_relu", "--seeds", "1", "--lrs", "0.002", "--epochs", "3"]


def sweep_subprocess(workdir, extra_env=None, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(extra_env or {})}
    return [sys.executable, "-m", "mnist_jax.sweep", *SWEEP, "--workdir", str(workdir)], env


@pytest.mark.parametrize("model", ["mlp", "lenet"])
def test_a_vmapped_sweep_equals_independent_single_runs(small_mnist, model):
    x_train, y_train, _, _ = map(jnp.asarray, small_mnist)
    config = make_config(model, hidden=(32,), batch_size=64, epochs=2, train_size=len(y_train))
    members = [member("elu", 0, 1e-3), member("relu", 1, 3e-3), member("leaky_relu", 2, 2e-3)]
    hyper = settings.hyper(members)
    stacked = population.initial_states(config, hyper, shared_order=False)
    epoch = population_epoch(config, shared_order=False, vmap_chunk=None)  # every member in one vmap
    for _ in range(config.epochs):
        stacked = epoch(stacked, hyper, x_train, y_train)
    single_epoch = jax.jit(train_epoch, static_argnums=0)
    for i, m in enumerate(members):
        h = settings.hyper(m)
        state = engine.initial_state(config, h)
        for _ in range(config.epochs):
            state, _ = single_epoch(config, state, h, x_train, y_train)
        chex.assert_trees_all_close(member_state(stacked, i), state, atol=2e-5, rtol=2e-5)


def test_a_diverged_member_is_isolated_and_the_others_unaffected(small_mnist):
    x_train, y_train, _, _ = map(jnp.asarray, small_mnist)
    config = make_config("mlp", hidden=(32,), batch_size=64, epochs=2, train_size=len(y_train))
    sound = [member("relu", 0, 1e-3), member("elu", 1, 1e-3)]
    epoch = population_epoch(config, shared_order=False, vmap_chunk=None)

    def train_members(members):
        hyper = settings.hyper(members)
        state = population.initial_states(config, hyper, shared_order=False)
        for _ in range(config.epochs):
            state = epoch(state, hyper, x_train, y_train)
        return state

    with_bad = train_members([sound[0], member("relu", 2, 50.0), sound[1]])
    without = train_members(sound)
    np.testing.assert_array_equal(with_bad.diverged, [False, True, False])
    chex.assert_tree_all_finite(with_bad.params)
    for i, j in [(0, 0), (2, 1)]:
        chex.assert_trees_all_close(member_state(with_bad.params, i), member_state(without.params, j),
                                    atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("chunk", [1, None], ids=["members loop", "vmap"])
def test_unguarded_pieces_run_again_guarded_where_they_go_wrong_and_equal_guarding_every_step(small_mnist, chunk):
    x_train, y_train, x_test, y_test = map(np.asarray, small_mnist)
    config = make_config("mlp", hidden=(32,), batch_size=64, epochs=1, train_size=len(y_train))
    splits = {"train": (x_train, y_train), "val": (x_test, y_test)}
    every_step = jax.jit(population.train_steps(config, False, chunk, population.member_mesh()),  # guarded
                         static_argnames="steps")

    def pieces(members):
        trainer = Population(config, members, splits, shared_order=False, vmap_chunk=chunk)
        state = trainer.init()
        order = trainer.order(state)
        program = trainer.piece(state, order, 4)
        fast, guarded = state, state
        for first in range(0, config.steps_per_epoch - 3, 4):
            fast, fast_sums = program(fast, order, np.int32(first))
            guarded, guarded_sums = every_step(guarded, trainer.hyper, jnp.asarray(x_train), jnp.asarray(y_train),
                                               order, np.int32(first), steps=4)
            chex.assert_trees_all_equal((fast, fast_sums["loss_sum"]), (guarded, guarded_sums["loss_sum"]))
        return fast, program.reruns

    state, reruns = pieces([member("relu", 0, 1e-3), member("relu", 2, 50.0), member("elu", 1, 1e-3)])
    np.testing.assert_array_equal(state.diverged, [False, True, False])
    chex.assert_tree_all_finite(state.params)
    # the member blew up in the first piece, which ran again guarded; it stays frozen, so later pieces run guarded
    assert reruns == 1
    assert pieces([member("relu", 0, 1e-3), member("elu", 1, 1e-3)])[1] == 0  # sound members: never guarded


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """A 3-member sweep run once, in a subprocess, as a user would."""
    workdir = tmp_path_factory.mktemp("sweep") / "run"
    command, env = sweep_subprocess(workdir)
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return workdir


def test_results_json_has_every_member_and_a_summary_per_activation(finished_sweep):
    results = json.loads((finished_sweep / "results.json").read_text())
    assert [(m["activation"], m["seed"], m["lr"]) for m in results["members"]] == \
        [("elu", 0, 0.002), ("relu", 0, 0.002), ("leaky_relu", 0, 0.002)]
    for m in results["members"]:
        assert {"activation", "seed", "lr", "test_accuracy", "test_loss", "diverged", "epoch_to_99",
                "epoch_to_98"} <= set(m)
        assert 0.5 < m["test_accuracy"] <= 1 and m["diverged"] is False
    assert {s["activation"] for s in results["summary"]} == {"elu", "relu", "leaky_relu"}
    for s in results["summary"]:
        assert {"n", "mean_test_accuracy", "std_test_accuracy", "min_test_accuracy", "max_test_accuracy"} <= set(s)
        assert s["n"] == 1
    assert "± " in (finished_sweep / "results.md").read_text()
    for plot in ("learning_curves.png", "validation_vs_lr.png"):
        assert (finished_sweep / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(line) for line in (finished_sweep / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and all(len(r["members"]) == 3 for r in rows)


def test_four_devices_give_the_same_member_accuracies_as_one(finished_sweep, tmp_path):
    command, env = sweep_subprocess(tmp_path / "four",
                                    {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "on 4 cpu device(s)" in result.stdout and "(1 padding)" in result.stdout
    one = json.loads((finished_sweep / "results.json").read_text())["members"]
    four = json.loads((tmp_path / "four" / "results.json").read_text())["members"]
    assert len(four) == 3  # the padding member never shows
    for a, b in zip(one, four):
        assert (a["activation"], a["seed"]) == (b["activation"], b["seed"])
        assert abs(a["test_accuracy"] - b["test_accuracy"]) <= 2 / 256  # float reassociation at most
        np.testing.assert_allclose(a["test_loss"], b["test_loss"], rtol=1e-3)


def test_a_killed_sweep_resumes_bit_identical(tmp_path):
    def command(workdir):
        argv, env = sweep_subprocess(workdir)
        argv[argv.index("--train-limit") + 1] = "12288"  # long enough epochs to be killed mid-run
        argv[argv.index("--epochs") + 1] = "4"
        return argv, env

    argv, env = command(tmp_path / "straight")
    subprocess.run(argv, env=env, check=True, capture_output=True)
    argv, env = command(tmp_path / "killed")
    kill_after_first_checkpoint_then_resume(argv, env, tmp_path / "killed", "results.json")
    for spec in ("elu,0", "relu,0", "leaky_relu,0"):
        chex.assert_trees_all_equal(load_member(tmp_path / "straight", spec)[0].state,
                                    load_member(tmp_path / "killed", spec)[0].state)


def test_an_exported_member_is_a_single_run_workdir_that_train_accepts(finished_sweep, tmp_path, capsys):
    out = tmp_path / "relu0"
    assert run_cli(sweep.main, "--workdir", finished_sweep, "--export-member", "relu,0,0.002", "--to", out) == 0
    exported = load_run(out)
    chex.assert_trees_all_equal(exported.state, load_member(finished_sweep, "relu,0")[0].state)
    assert exported.step == 3 and int(exported.state.epoch) == 3
    assert exported.member == {"activation": "relu", "seed": 0, "lr": 0.002, "weight_decay": 0.2, "b1": 0.9,
                               "label_smoothing": 0.0}
    capsys.readouterr()
    assert run_cli(train.main, *SMALL, "--epochs", "3", "--lr", "0.002", "--seed", "0", "--workdir", out) == 0
    assert "already holds a finished run" in capsys.readouterr().out


@pytest.mark.parametrize("spec", ["tanh,0", "relu,5"])  # an activation the sweep lacks, a seed it lacks
def test_export_of_an_unknown_member_names_the_members(spec, finished_sweep, tmp_path, capsys):
    assert run_cli(sweep.main, "--workdir", finished_sweep, "--export-member", spec, "--to", tmp_path / "out") == 2
    one_line_error(capsys, f"no member {spec}", "relu,0,0.002")
    assert not (tmp_path / "out").exists()


def test_shared_order_gives_every_member_the_same_batches_and_own_order_differs():
    config = make_config("mlp", hidden=(8,), batch_size=64, epochs=1, train_size=1024)
    hyper = settings.hyper([member("relu", 0, 1e-3), member("elu", 1, 1e-3)])
    orders = {}
    for shared in (True, False):
        state = population.initial_states(config, hyper, shared_order=shared)
        orders[shared] = population.orders(config)(state)
    np.testing.assert_array_equal(orders[True][0], orders[True][1])
    assert not np.array_equal(orders[False][0], orders[False][1])


def test_sweep_flags_that_name_nothing_are_one_line_errors(tmp_path, capsys):
    assert run_cli(sweep.main, "--activations", "relu,tanh", "--workdir", tmp_path) == 2
    one_line_error(capsys, "python -m mnist_jax.sweep: error: argument --activations", "unknown activation 'tanh'",
                   "choose from elu, relu, leaky_relu")
    assert run_cli(sweep.main, "--lrs", "0.1,x", "--workdir", tmp_path) == 2
    one_line_error(capsys, "argument --lrs: '0.1,x' must be a comma-separated list", "(see --help)")
    assert not any(tmp_path.iterdir())  # refused before any work


def test_the_shared_order_fast_path_equals_the_plain_vmap(small_mnist):
    # One step per epoch: over several steps Adam magnifies the two programs' float rounding differences
    # (its update divides by the root of tiny second moments), so only one step can be compared this tightly.
    x_train, y_train = jnp.asarray(small_mnist[0][:64]), jnp.asarray(small_mnist[1][:64])
    config = make_config("lenet", batch_size=64, epochs=2, train_size=64, warmup_epochs=0.0)
    hyper = settings.hyper([member("relu", 0, 1e-3), member("elu", 1, 3e-3)])
    state = population.initial_states(config, hyper, shared_order=True)
    fast = population_epoch(config, shared_order=True, vmap_chunk=None)(state, hyper, x_train, y_train)
    plain = population_epoch(config, shared_order=False, vmap_chunk=None)(state, hyper, x_train, y_train)
    chex.assert_trees_all_close(fast, plain, atol=2e-5, rtol=2e-5)
    np.testing.assert_array_equal(fast.epoch, [1, 1])
