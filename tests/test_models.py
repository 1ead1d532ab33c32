"""The networks: sizes, shapes, the activation switch, both convolution forms, pooling before the activation."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from mnist_jax import models
from mnist_jax.models import ACTIVATION_REGISTRY, ACTIVATIONS, CONV_FORMS, activate, make_model, normalize


def count_params(params) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(params))


@pytest.mark.parametrize("name, expected", [("lenet", 61_706), ("mlp", 235_146)])
def test_parameter_counts_match_the_classic_architectures(name, expected):
    params = jax.eval_shape(make_model(name).init, jax.random.PRNGKey(0), jnp.zeros((1, 28, 28), jnp.uint8), 0)
    assert count_params(params) == expected


@pytest.mark.parametrize("name", ["lenet", "mlp"])
@pytest.mark.parametrize("batch", [1, 7, 128])
def test_models_map_uint8_images_to_ten_logits(name, batch):
    model = make_model(name)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28), jnp.uint8), 0)
    logits = jax.jit(model.apply)(params, jnp.full((batch, 28, 28), 200, jnp.uint8), 1)
    chex.assert_shape(logits, (batch, 10))
    chex.assert_type(logits, jnp.float32)
    chex.assert_tree_all_finite(logits)


def test_mlp_hidden_sizes_are_configurable():
    params = jax.eval_shape(make_model("mlp", hidden=(32,)).init, jax.random.PRNGKey(0),
                            jnp.zeros((1, 28, 28), jnp.uint8), 0)
    assert count_params(params) == 784 * 32 + 32 + 32 * 10 + 10


@pytest.mark.parametrize("index, direct", list(enumerate([nn.elu, nn.relu, nn.leaky_relu])))
def test_switch_activation_equals_each_direct_activation(index, direct):
    x = jnp.linspace(-4.0, 4.0, 101)
    chex.assert_trees_all_equal(activate(index, x), direct(x))
    chex.assert_trees_all_equal(jax.jit(activate)(jnp.int32(index), x), direct(x))
    assert ACTIVATIONS[index] == direct.__name__


def test_activation_index_is_data_so_one_vmap_covers_all_activations():
    x = jnp.linspace(-2.0, 2.0, 9)
    stacked = jax.vmap(activate, in_axes=(0, None))(jnp.arange(3), x)
    chex.assert_trees_all_equal(stacked, jnp.stack([nn.elu(x), nn.relu(x), nn.leaky_relu(x)]))


@pytest.mark.parametrize("conv", list(CONV_FORMS))
def test_lenet_in_either_form_matches_a_hand_written_lax_lenet_in_float32(conv):
    """The whole LeNet in float32 against the same network written with lax convolutions and reduce_window."""
    model = make_model("lenet", conv=conv)
    images = jax.random.randint(jax.random.PRNGKey(0), (8, 28, 28), 0, 256).astype(jnp.uint8)
    params = jax.jit(model.init)(jax.random.PRNGKey(1), images, jnp.int32(0))

    @jax.jit
    def reference(params, images):
        p = params["params"]
        x = normalize(images)[..., None]  # NHWC
        for name, padding in (("Conv_0", "SAME"), ("Conv_1", "VALID")):
            x = jax.lax.conv_general_dilated(x, p[name]["kernel"], (1, 1), padding,
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                             precision=jax.lax.Precision.HIGHEST) + p[name]["bias"]
            x = jax.lax.reduce_window(nn.elu(x), -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        x = x.reshape(len(images), -1)
        for name in ("Dense_0", "Dense_1"):
            x = nn.elu(x @ p[name]["kernel"] + p[name]["bias"])
        return x @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"]

    chex.assert_trees_all_close(jax.jit(model.apply)(params, images, jnp.int32(0)), reference(params, images),
                                atol=1e-4)
    loss = lambda f: lambda p: jnp.sum(jax.nn.log_softmax(f(p)))  # noqa: E731
    chex.assert_trees_all_close(jax.jit(jax.grad(loss(lambda p: model.apply(p, images, jnp.int32(0)))))(params),
                                jax.jit(jax.grad(loss(lambda p: reference(p, images))))(params), atol=1e-4, rtol=1e-4)


def test_both_conv_forms_share_one_parameter_tree_and_compute_the_same_logits_and_gradients():
    images = jax.random.randint(jax.random.PRNGKey(3), (16, 28, 28), 0, 256).astype(jnp.uint8)
    models = {conv: make_model("lenet", conv=conv) for conv in CONV_FORMS}
    trees = {conv: jax.jit(model.init)(jax.random.PRNGKey(4), images, jnp.int32(1)) for conv, model in models.items()}
    chex.assert_trees_all_equal(*trees.values())  # same names, shapes and initial values
    params = trees["lax"]
    # One program per form, the activation an argument: compiled once, not op by op for every activation.
    apply = {conv: jax.jit(model.apply) for conv, model in models.items()}
    grad = {conv: jax.jit(jax.grad(lambda p, i, model=model: jnp.sum(jax.nn.log_softmax(model.apply(p, images, i)))))
            for conv, model in models.items()}
    for index in range(len(ACTIVATIONS)):
        outputs = {conv: apply[conv](params, images, jnp.int32(index)) for conv in models}
        chex.assert_trees_all_close(outputs["toeplitz"], outputs["lax"], atol=2e-4, rtol=2e-4)
        grads = {conv: grad[conv](params, jnp.int32(index)) for conv in models}
        chex.assert_trees_all_close(grads["toeplitz"], grads["lax"], atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_every_activation_marked_non_decreasing_is_and_commutes_with_max_pooling(name):
    x = jnp.linspace(-30.0, 30.0, 60001)
    fn = ACTIVATION_REGISTRY[name].fn
    if ACTIVATION_REGISTRY[name].non_decreasing:
        assert bool(jnp.all(jnp.diff(fn(x)) >= 0)), f"{name} is marked non-decreasing but decreases somewhere"
        grid = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 2)) * 5
        pool = lambda y: nn.max_pool(y, (2, 2), strides=(2, 2))  # noqa: E731
        chex.assert_trees_all_equal(pool(fn(grid)), fn(pool(grid)))


def test_lenet_pools_after_the_activation_when_an_activation_is_not_non_decreasing(monkeypatch):
    images = jax.random.randint(jax.random.PRNGKey(5), (4, 28, 28), 0, 256).astype(jnp.uint8)
    model = make_model("lenet", conv="lax")
    params = jax.jit(model.init)(jax.random.PRNGKey(6), images, jnp.int32(0))
    apply = lambda: jax.jit(lambda p: model.apply(p, images, jnp.int32(0)))(params)  # noqa: E731  (traced anew)
    pooled_first = apply()
    monkeypatch.setattr(models, "POOL_BEFORE_ACTIVATION", False)
    chex.assert_trees_all_close(apply(), pooled_first, atol=1e-5)
