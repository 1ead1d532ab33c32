"""Traced programs kept across launches (mnist_jax.traced): the same bits as tracing, found again only under the
same key, and a damaged entry made again."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import sweep, traced, train, workdir
from mnist_jax.workdir import Layout, read_metrics

RUN = dict(model="lenet", epochs=2, train_limit=512, test_limit=200, validation_size=200, batch_size=64)
SMALL_RUN = dict(model="mlp", hidden="32", epochs=1, train_limit=512, test_limit=200, validation_size=200)


@pytest.fixture
def kept(tmp_path, monkeypatch):
    """Traced programs kept, as in a process started as a command line, in a compilation cache of this test's own
    (where `train` puts it, and for `traced.compile` called directly)."""
    previous = jax.config.jax_compilation_cache_dir
    monkeypatch.setenv("MNIST_JAX_CACHE_DIR", str(tmp_path / "cache"))
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "cache"))
    monkeypatch.setattr(traced, "_enabled", False)
    traced.enable()
    yield tmp_path / "cache" / "traced"
    jax.config.update("jax_compilation_cache_dir", previous)


def entries(directory):
    return {path.name: path.read_bytes() for path in directory.glob("*")} if directory.exists() else {}


def run_numbers(directory):
    """The metrics rows without their timings, and the final parameters."""
    rows = [{k: v for k, v in row.items() if k not in ("epoch_seconds", "images_per_second")}
            for row in read_metrics(Layout(directory).metrics, 99)]
    return rows, workdir.load_model(directory).state.params


def assert_same_numbers(a, b):
    assert a[0] == b[0]
    chex.assert_trees_all_equal(a[1], b[1])


def test_a_second_launch_loads_the_kept_programs_and_trains_the_same_bits_as_tracing(tmp_path, kept, monkeypatch):
    train.run(workdir=tmp_path / "first", **RUN)
    first = entries(kept)
    assert len(first) >= 3  # the initial state, the piece of an epoch, the evaluation
    train.run(workdir=tmp_path / "second", **RUN)
    assert entries(kept) == first  # found again, none traced anew
    monkeypatch.setattr(traced, "_enabled", False)
    train.run(workdir=tmp_path / "traced", **RUN)
    assert entries(kept) == first
    for name in ("first", "second"):
        assert_same_numbers(run_numbers(tmp_path / name), run_numbers(tmp_path / "traced"))


def test_a_sweeps_second_launch_loads_its_programs_and_trains_the_same_members(tmp_path, kept):
    run = dict(model="mlp", hidden="16", activations="elu,relu", seeds=1, epochs=2, train_limit=512, test_limit=200,
               validation_size=200, scheduler="halving", first_rung=1)
    sweep.run(workdir=tmp_path / "first", **run)
    first = entries(kept)
    assert len(first) >= 3  # the initial states, the piece of all members, the piece of those halving kept
    sweep.run(workdir=tmp_path / "second", **run)
    assert entries(kept) == first
    for member in ("elu,0", "relu,0"):
        chex.assert_trees_all_equal(*(workdir.load_member(tmp_path / name, member)[0].state
                                      for name in ("first", "second")))


def test_a_damaged_entry_is_made_again_and_the_run_is_the_same(tmp_path, kept):
    train.run(workdir=tmp_path / "first", **SMALL_RUN)
    made = entries(kept)
    for name in made:
        (kept / name).write_bytes(b"cut short")
    train.run(workdir=tmp_path / "second", **SMALL_RUN)
    remade = entries(kept)
    assert remade.keys() == made.keys() and b"cut short" not in remade.values()
    assert_same_numbers(run_numbers(tmp_path / "first"), run_numbers(tmp_path / "second"))


def scaled(factor, x):
    return x * factor


def test_a_program_is_kept_per_function_arguments_shapes_and_source(kept, monkeypatch):
    x = jnp.arange(4.0)
    assert float(traced.compile(functools.partial(scaled, 2.0), x)(x)[3]) == 6.0
    assert len(entries(kept)) == 1
    assert float(traced.compile(functools.partial(scaled, 2.0), x)(x)[3]) == 6.0  # loaded
    assert len(entries(kept)) == 1
    assert float(traced.compile(functools.partial(scaled, 3.0), x)(x)[3]) == 9.0  # another fixed argument
    assert float(traced.compile(functools.partial(scaled, 2.0), x[:3])(x[:3])[2]) == 4.0  # another shape
    assert len(entries(kept)) == 3
    monkeypatch.setattr(traced, "_code", lambda: "this package's source, edited")
    assert float(traced.compile(functools.partial(scaled, 2.0), x)(x)[3]) == 6.0
    assert len(entries(kept)) == 4


def test_what_cannot_be_told_from_outside_is_traced_every_time(kept):
    factor = 5.0
    x = jnp.arange(4.0)
    assert float(traced.compile(lambda x: x * factor, x)(x)[1]) == 5.0  # a closure: what it holds is not in a key
    assert float(traced.compile(functools.partial(jnp.multiply, 5.0), x)(x)[1]) == 5.0  # not a plain function
    # an array among the fixed arguments (a large one's repr leaves values out)
    assert float(traced.compile(functools.partial(scaled, np.full(4, 5.0)), x)(x)[1]) == 5.0
    assert entries(kept) == {}
