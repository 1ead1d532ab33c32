"""Orbax checkpoints: round trip, what is kept, and a damaged step named in the error."""

import chex
import jax
import pytest

from mnist_jax import checkpoint, engine
from mnist_jax.errors import UserError
from mnist_jax.workdir import abstract_member

from conftest import make_config, make_hyper

CONFIG = make_config("mlp", hidden=(16,), batch_size=32, epochs=2, train_size=256)
HYPER = make_hyper("elu", 1e-3, 7)
ONE_DEVICE = jax.sharding.SingleDeviceSharding(jax.devices()[0])


def test_state_and_metadata_round_trip_through_an_abstract_target(tmp_path):
    state = engine.init_member(CONFIG, HYPER).replace(epoch=jax.numpy.int32(3))
    manager = checkpoint.open_manager(tmp_path)
    checkpoint.save(manager, 3, state, {"epoch": 3, "note": "x"}, {checkpoint.BEST_METRIC: 0.5})
    manager.wait_until_finished()
    restored, meta = checkpoint.restore(manager, 3, abstract_member(CONFIG, HYPER, ONE_DEVICE))
    manager.close()
    chex.assert_trees_all_equal(restored, state)
    chex.assert_trees_all_equal_dtypes(restored, state)
    assert meta == {"epoch": 3, "note": "x"}


def test_keeps_the_latest_three_and_the_best(tmp_path):
    state = engine.init_member(CONFIG, HYPER)
    manager = checkpoint.open_manager(tmp_path)
    for step, accuracy in enumerate([0.5, 0.9, 0.6, 0.7, 0.8, 0.75], start=1):
        checkpoint.save(manager, step, state, {"epoch": step}, {checkpoint.BEST_METRIC: accuracy})
    manager.wait_until_finished()
    assert manager.all_steps() == [2, 4, 5, 6]
    assert manager.latest_step() == 6
    assert manager.best_step() == 2
    manager.close()


def test_a_damaged_step_is_named_in_the_error(tmp_path):
    state = engine.init_member(CONFIG, HYPER)
    manager = checkpoint.open_manager(tmp_path)
    checkpoint.save(manager, 1, state, {"epoch": 1}, {checkpoint.BEST_METRIC: 0.5})
    manager.wait_until_finished()
    for path in (tmp_path / "1" / "state").rglob("*"):
        if path.is_file() and path.stat().st_size > 0:
            path.write_bytes(b"\0" * 7)
    with pytest.raises(UserError, match="checkpoint step 1 .* corrupted"):
        checkpoint.restore(manager, 1, abstract_member(CONFIG, HYPER, ONE_DEVICE))
    manager.close()
