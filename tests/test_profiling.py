"""The step profile (mnist_jax.profiling) puts each instruction's time where it belongs."""

import jax
import jax.numpy as jnp
import pytest

from mnist_jax import bench, engine, profiling

from conftest import run_cli


def test_wall_time_is_shared_among_the_instructions_running_at_once():
    shares, busy = profiling.wall_shares([(0, 10, "a"), (5, 15, "b"), (20, 30, "a")])
    assert busy == 25  # 15..20 nothing ran
    assert shares == {"a": 5 + 2.5 + 10, "b": 2.5 + 5}


@pytest.mark.parametrize("model, layers", [("lenet", {"conv1", "conv2", "dense"}), ("mlp", {"dense"})])
def test_every_matmul_of_a_step_belongs_to_its_layer_and_the_optimizer_and_loss_are_found(model, layers):
    config = bench.recipe(model, 256)
    hyper = bench.one_member("elu")
    state = engine.initial_state(config, hyper)
    x, y = jnp.zeros((256, 28, 28), jnp.uint8), jnp.zeros((256,), jnp.int32)
    step = jax.jit(lambda s: engine.train_steps(config, s, hyper, x, y, engine.epoch_order(config, s), 0, 2,
                                                guarded=True))
    text = step.lower(state).compile().as_text()
    parts = profiling.instruction_parts(text)
    dots = [line.split(" = ")[0].split()[-1].lstrip("%") for line in text.splitlines()
            if " = " in line and "dot_general" in line and "/while/body/" in line]
    assert dots and {parts[d] for d in dots} <= layers | {"optimizer"}  # adamw's decay of the kernels is no matmul
    assert layers <= {parts[d] for d in dots}
    assert {"optimizer", "loss", "guard", "activations", "batch"} <= set(parts.values())
    assert model == "mlp" or "pooling" in set(parts.values())


def test_the_profiling_command_prints_the_parts_of_the_step_of_the_settings_given(capsys):
    assert run_cli(profiling.main, "--model", "mlp", "--hidden", "32", "--train-limit", "512",
                   "--batch-size", "64") == 0
    out = capsys.readouterr().out
    assert "| mlp step part |" in out and "| dense |" in out and "| optimizer |" in out and "whole step" in out
