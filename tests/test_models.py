"""The networks: sizes, shapes, the activation switch and the block-Toeplitz convolution."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax.models import ACTIVATIONS, Conv, activate, make_model, max_pool_2x2, normalize


def count_params(params) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(params))


@pytest.mark.parametrize("name, expected", [("lenet", 61_706), ("mlp", 235_146)])
def test_parameter_counts_match_the_classic_architectures(name, expected):
    params = make_model(name).init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28), jnp.uint8), 0)
    assert count_params(params) == expected


@pytest.mark.parametrize("name", ["lenet", "mlp"])
@pytest.mark.parametrize("batch", [1, 7, 128])
def test_models_map_uint8_images_to_ten_logits(name, batch):
    model = make_model(name)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28), jnp.uint8), 0)
    logits = model.apply(params, jnp.full((batch, 28, 28), 200, jnp.uint8), 1)
    chex.assert_shape(logits, (batch, 10))
    chex.assert_type(logits, jnp.float32)
    chex.assert_tree_all_finite(logits)


def test_mlp_hidden_sizes_are_configurable():
    params = make_model("mlp", hidden=(32,)).init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28), jnp.uint8), 0)
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


@pytest.mark.parametrize("padding, block", [("SAME", 1), ("SAME", 2), ("SAME", 7), ("VALID", 1), ("VALID", 5)])
@pytest.mark.parametrize("channels_in, features", [(1, 6), (6, 16)])
def test_block_toeplitz_conv_matches_lax_conv_in_values_and_gradients(padding, block, channels_in, features):
    # In float64, so that what is compared is the formulation, not float32 summation order.
    with jax.enable_x64(True):
        _compare_conv_with_lax(padding, block, channels_in, features)


def _compare_conv_with_lax(padding, block, channels_in, features):
    x = jax.random.normal(jax.random.PRNGKey(1), (channels_in, 14, 14, 4), jnp.float64)  # (C, H, W, B)
    conv = Conv(features, kernel_size=5, padding=padding, block=block, dtype=jnp.float64)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), conv.init(jax.random.PRNGKey(2), x))

    def reference(params, x):
        y = jax.lax.conv_general_dilated(x, params["params"]["kernel"], (1, 1), padding,
                                         dimension_numbers=("CHWN", "HWIO", "CHWN"),
                                         precision=jax.lax.Precision.HIGHEST)
        return y + params["params"]["bias"][:, None, None, None]

    chex.assert_trees_all_close(conv.apply(params, x), reference(params, x), atol=1e-5, rtol=1e-5)
    loss = lambda f: lambda p, x: jnp.sum(jnp.sin(f(p, x)))  # noqa: E731
    grads = jax.grad(loss(conv.apply), argnums=(0, 1))(params, x)
    expected = jax.grad(loss(reference), argnums=(0, 1))(params, x)
    chex.assert_trees_all_close(grads, expected, atol=1e-5, rtol=1e-5)


def test_conv_rejects_unknown_padding():
    with pytest.raises(ValueError, match="padding"):
        Conv(4, padding="FULL").init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 1), np.float32))


def test_conv_rejects_a_block_that_does_not_divide_the_output_width():
    with pytest.raises(ValueError, match="block 3 must divide the output width 8"):
        Conv(4, block=3).init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 1), np.float32))


def test_lenet_float32_forward_and_gradients_match_a_lax_conv_lenet():
    """The whole LeNet in float32 against the same network written with lax convolutions and reduce_window."""
    model = make_model("lenet")
    images = jax.random.randint(jax.random.PRNGKey(0), (8, 28, 28), 0, 256).astype(jnp.uint8)
    params = model.init(jax.random.PRNGKey(1), images, jnp.int32(0))

    def reference(params, images):
        p = params["params"]
        x = normalize(images)[..., None]  # NHWC
        for name, padding in (("Conv_0", "SAME"), ("Conv_1", "VALID")):
            x = jax.lax.conv_general_dilated(x, p[name]["kernel"], (1, 1), padding,
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                             precision=jax.lax.Precision.HIGHEST) + p[name]["bias"]
            x = nn.elu(jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"))
        x = x.reshape(len(images), -1)
        for name in ("Dense_0", "Dense_1"):
            x = nn.elu(x @ p[name]["kernel"] + p[name]["bias"])
        return x @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"]

    chex.assert_trees_all_close(model.apply(params, images, jnp.int32(0)), reference(params, images), atol=1e-4)
    loss = lambda f: lambda p: jnp.sum(jax.nn.log_softmax(f(p)))  # noqa: E731
    chex.assert_trees_all_close(jax.grad(loss(lambda p: model.apply(p, images, jnp.int32(0))))(params),
                                jax.grad(loss(lambda p: reference(p, images)))(params), atol=1e-4, rtol=1e-4)


def test_max_pool_takes_the_largest_of_each_2x2_block():
    x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3) * jnp.array([1.0, -1.0, 0.5])
    expected = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    chex.assert_trees_all_equal(max_pool_2x2(x), expected)


@pytest.mark.parametrize("index", range(3))
def test_pooling_before_the_activation_is_the_same_function(index):
    x = jax.random.normal(jax.random.PRNGKey(index), (3, 8, 8, 2))
    chex.assert_trees_all_equal(max_pool_2x2(activate(index, x)), activate(index, max_pool_2x2(x)))


def test_max_pool_gradient_matches_autodiff_of_reduce_window():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 2))  # continuous values: no ties
    weights = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 4, 2))
    reference = lambda x: jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")  # noqa: E731
    chex.assert_trees_all_equal(jax.grad(lambda x: jnp.sum(max_pool_2x2(x) * weights))(x),
                                jax.grad(lambda x: jnp.sum(reference(x) * weights))(x))
