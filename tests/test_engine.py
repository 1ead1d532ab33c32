"""The pure engine: one step, one epoch, evaluation, determinism and divergence."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mnist_jax import engine, population, settings

from conftest import LEGACY, USERS_EMITTERS, make_config, make_hyper, member, population_epoch, train_epoch


def small_config(model="mlp", **overrides):
    return make_config(model, hidden=(64,), batch_size=64, epochs=3, train_size=2048, eval_batch_size=200,
                       **overrides)


class TrainStepTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_train_step_jitted_equals_not_jitted(self):
        config = small_config("mlp")  # op by op, LeNet's step took 43 s on a slow CPU
        hyper = make_hyper("elu", 1e-3, 3)
        state = engine.initial_state(config, hyper)
        images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (64, 28, 28), np.uint8))
        labels = jnp.arange(64, dtype=jnp.int32) % 10
        step = self.variant(functools.partial(engine.train_step, config))
        new_state, (loss, correct) = step(state, hyper, images, labels)
        reference, (ref_loss, ref_correct) = jax.jit(engine.train_step, static_argnums=0)(
            config, state, hyper, images, labels)
        chex.assert_trees_all_close(new_state, reference, atol=1e-6, rtol=1e-6)
        chex.assert_trees_all_close(loss, ref_loss, atol=1e-6)
        assert int(correct) == int(ref_correct)
        assert not bool(new_state.diverged)


@pytest.mark.parametrize("model", ["mlp", "lenet"])
def test_a_short_run_really_learns(small_mnist, model):
    x_train, y_train, x_test, y_test = map(jnp.asarray, small_mnist)
    config = small_config(model)
    hyper = make_hyper("relu", 2e-3, 0)
    state = engine.initial_state(config, hyper)
    before = engine.evaluate(config, state.params, hyper, x_test, y_test)
    epoch = jax.jit(train_epoch, static_argnums=0)
    losses = []
    for _ in range(config.epochs):
        state, metrics = epoch(config, state, hyper, x_train, y_train)
        losses.append(float(metrics["loss"]))
    after = engine.evaluate(config, state.params, hyper, x_test, y_test)
    assert int(state.epoch) == config.epochs
    assert losses[-1] < losses[0] < 2.5
    assert float(after["loss"]) < float(before["loss"])
    assert float(after["accuracy"]) > 0.8  # chance is 0.1


def test_initial_states_and_orders_compiled_quickly_are_the_default_compilations_bits():
    """train compiles these programs with engine.QUICK_COMPILE (seconds less on a slow CPU): the same numbers. LeNet's
    initial state draws what the MLP's does (dense layers) and more (convolution kernels)."""
    config = make_config("lenet")
    members = [member(a, s, 1e-3) for a, s in (("elu", 0), ("relu", 1), ("leaky_relu", 123456))]
    hyper = settings.hyper(members)
    users = USERS_EMITTERS  # the default compilation as train runs it, not as conftest sets the tests' (elsewhere)
    default = jax.jit(functools.partial(population.init, config, shared_order=False), compiler_options=users)(hyper)
    chex.assert_trees_all_equal(population.initial_states(config, hyper, shared_order=False), default)
    chex.assert_trees_all_equal(engine.initial_state(config, settings.hyper(members[2])),
                                jax.jit(engine.init_member, static_argnums=0, compiler_options=users)(
                                    config, settings.hyper(members[2])))
    np.testing.assert_array_equal(jax.jit(population.orders(config), compiler_options=users)(default),
                                  population.batch_orders(config, default))
    single = engine.initial_state(config, settings.hyper(members[2]))
    np.testing.assert_array_equal(jax.jit(engine.epoch_order, static_argnums=0, compiler_options=users)(
        config, single), engine.batch_order(config, single))


def test_batch_order_is_derived_from_seed_and_epoch_only():
    config = small_config()
    state = engine.initial_state(config, make_hyper("relu", 1e-3, 5))
    again = engine.initial_state(config, make_hyper("elu", 3e-3, 5))
    other_seed = engine.initial_state(config, make_hyper("relu", 1e-3, 6))
    order = engine.epoch_order(config, state)
    chex.assert_shape(order, (config.steps_per_epoch, config.batch_size))
    np.testing.assert_array_equal(order, engine.epoch_order(config, again))
    assert not np.array_equal(order, engine.epoch_order(config, other_seed))
    assert not np.array_equal(order, engine.epoch_order(config, state.replace(epoch=state.epoch + 1)))
    assert len(np.unique(order)) == order.size  # a permutation: no image twice in an epoch


def test_same_seed_gives_bit_identical_training(small_mnist):
    x_train, y_train, _, _ = map(jnp.asarray, small_mnist)
    config = small_config()
    hyper = make_hyper("leaky_relu", 1e-3, 11)
    run = lambda: jax.jit(train_epoch, static_argnums=0)(  # noqa: E731
        config, engine.initial_state(config, hyper), hyper, x_train, y_train)[0]
    chex.assert_trees_all_equal(run().params, run().params)


def test_a_diverging_member_freezes_with_finite_parameters(small_mnist):
    x_train, y_train, _, _ = map(jnp.asarray, small_mnist)
    config = small_config()
    hyper = make_hyper("relu", 1e4, 0)
    state, _ = jax.jit(train_epoch, static_argnums=0)(config, engine.initial_state(config, hyper), hyper,
                                                             x_train, y_train)
    assert bool(state.diverged)
    chex.assert_tree_all_finite(state.params)
    frozen = state
    state, _ = jax.jit(train_epoch, static_argnums=0)(config, state, hyper, x_train, y_train)
    chex.assert_trees_all_equal(state.params, frozen.params)


def test_evaluate_covers_every_image_when_the_split_is_not_a_multiple_of_the_eval_batch(small_mnist):
    _, _, x_test, y_test = map(jnp.asarray, small_mnist)
    config = small_config()
    hyper = make_hyper("relu", 1e-3, 0)
    params = engine.initial_state(config, hyper).params
    n = 437
    result = engine.evaluate(config, params, hyper, x_test[:n], y_test[:n])
    logits = engine.apply(config, params, hyper, x_test[:n])
    chex.assert_shape(engine.predict_logits(config, params, hyper, x_test[:n]), (n, 10))
    np.testing.assert_allclose(result["accuracy"], np.mean(np.argmax(logits, -1) == np.asarray(y_test[:n])))


def test_learning_rate_is_data_so_members_can_differ(small_mnist):
    # A constant schedule, so that the first step already moves by the peak learning rate (warmup starts at 0).
    config = small_config(schedule="constant")
    x, y = jnp.asarray(small_mnist[0][:64]), jnp.asarray(small_mnist[1][:64])
    step = jax.jit(engine.train_step, static_argnums=0)  # the learning rate is a traced argument of the step
    start = engine.initial_state(config, make_hyper("relu", 0.01, 0)).params
    after, moved = {}, {}
    for lr in (0.01, 0.02):
        hyper = make_hyper("relu", lr, 0)
        state = engine.initial_state(config, hyper)
        chex.assert_trees_all_equal(state.params, start)  # same seed: only the learning rate differs
        after[lr] = step(config, state, hyper, x, y)[0].params
        moved[lr] = jax.tree.map(jnp.subtract, after[lr], start)
    assert all(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(after[0.01]), jax.tree.leaves(after[0.02])))
    # AdamW's first update (the normalised gradient plus the decay) scales with the learning rate: twice as far.
    chex.assert_trees_all_close(moved[0.02], jax.tree.map(lambda d: 2 * d, moved[0.01]), atol=1e-6, rtol=1e-3)
    lrs = engine.learning_rate(config, np.array([0.01, 0.02]), 1)
    np.testing.assert_allclose(lrs, [0.01, 0.02], rtol=1e-6)  # each member's own, as the rows record


@pytest.mark.parametrize("schedule", sorted(engine.SCHEDULES))
def test_the_learning_rate_a_row_records_is_the_one_the_steps_applied_to_the_bit(schedule):
    # 12 epochs of 429 steps: run op by op outside a jit, the warmup-cosine schedule differed from the steps' value in
    # the last bit at two of these epochs' ends
    config = make_config("mlp", 55000, epochs=12, schedule=schedule, batch_size=128)
    scale = optax.scale_by_schedule(engine.schedule(config))  # how the optimizer applies it (engine.make_optimizer)

    def multipliers(state):
        def step(state, _):
            update, state = scale.update(jnp.ones(()), state)
            return state, update
        return jax.lax.scan(step, state, length=config.epochs * config.steps_per_epoch)[1]

    applied = np.asarray(jax.jit(multipliers)(scale.init(jnp.ones(()))))
    ends = np.arange(1, config.epochs + 1) * config.steps_per_epoch - 1
    recorded = [engine.learning_rate(config, 1.0, epoch) for epoch in range(1, config.epochs + 1)]
    np.testing.assert_array_equal(np.float32(recorded), applied[ends])


@pytest.mark.parametrize("model", ["lenet", "mlp"])
def test_jitted_gradients_equal_op_by_op_gradients(small_mnist, model):
    # Guards the hand-written backward passes: a mask recomputed differently inside a fused kernel once dropped
    # part of LeNet's conv1 gradient under jit while op-by-op execution was right.
    x, y = jnp.asarray(small_mnist[0][:64]), jnp.asarray(small_mnist[1][:64])
    config = small_config(model)
    hyper = make_hyper("relu", 1e-3, 0)
    params = engine.initial_state(config, hyper).params
    grad = jax.grad(lambda p: engine.loss_and_logits(p, config, hyper, x, y)[0])
    chex.assert_trees_all_close(jax.jit(grad)(params), grad(params), atol=1e-6, rtol=1e-5)


@pytest.mark.skipif(not LEGACY, reason="the tests compile with XLA:CPU's default emitters here (conftest)")
@pytest.mark.parametrize("model", ["lenet", "mlp"])
def test_the_emitters_the_tests_compile_with_compute_the_bits_users_get(small_mnist, model):
    """conftest compiles the tests' programs with XLA:CPU's elemental emitters (faster to compile); train and sweep
    compile with its default fusion emitters. The initial states, an epoch of each activation and an evaluation must
    be the same bits."""
    config = make_config(model)
    hyper = settings.hyper([member(a, 0, 1e-3) for a in ("elu", "relu", "leaky_relu")])
    state = population.initial_states(config, hyper, shared_order=False)
    x, y, x_test, y_test = map(jnp.asarray, small_mnist)
    epoch = population_epoch(config, vmap_chunk=1)  # the members loop, as sweep runs them on CPU
    evaluate = jax.jit(jax.vmap(functools.partial(engine.evaluate, config), (0, 0, None, None)))
    default = USERS_EMITTERS
    chex.assert_trees_all_equal(state, jax.jit(functools.partial(population.init, config, shared_order=False),
                                               compiler_options={**engine.QUICK_COMPILE, **default})(hyper))
    trained = epoch(state, hyper, x, y)
    trained_default = jax.jit(epoch, compiler_options=default)(state, hyper, x, y)
    chex.assert_trees_all_equal(trained, trained_default)
    chex.assert_trees_all_equal(evaluate(trained.params, hyper, x_test, y_test),
                                jax.jit(evaluate, compiler_options=default)(trained.params, hyper, x_test, y_test))
