"""The CPU convolution kernels: block-Toeplitz convolution and pooling with a stored argmax, against lax."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax.cpu_conv import Conv, max_pool_2x2


@pytest.mark.parametrize("padding, block", [("SAME", 1), ("SAME", 2), ("SAME", 7), ("VALID", 1), ("VALID", 5)])
@pytest.mark.parametrize("channels_in, features", [(1, 6), (6, 16)])
def test_block_toeplitz_conv_matches_lax_conv_in_values_and_gradients(padding, block, channels_in, features):
    # In float64, so that what is compared is the formulation, not float32 summation order.
    with jax.enable_x64(True):
        _compare_conv_with_lax(padding, block, channels_in, features)


def _compare_conv_with_lax(padding, block, channels_in, features):
    x = jax.random.normal(jax.random.PRNGKey(1), (channels_in, 14, 14, 4), jnp.float64)  # (C, H, W, B)
    conv = Conv(features, kernel_size=5, padding=padding, block=block, dtype=jnp.float64)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), jax.jit(conv.init)(jax.random.PRNGKey(2), x))

    @jax.jit
    def reference(params, x):
        y = jax.lax.conv_general_dilated(x, params["params"]["kernel"], (1, 1), padding,
                                         dimension_numbers=("CHWN", "HWIO", "CHWN"),
                                         precision=jax.lax.Precision.HIGHEST)
        return y + params["params"]["bias"][:, None, None, None]

    chex.assert_trees_all_close(jax.jit(conv.apply)(params, x), reference(params, x), atol=1e-5, rtol=1e-5)
    loss = lambda f: lambda p, x: jnp.sum(jnp.sin(f(p, x)))  # noqa: E731
    grads = jax.jit(jax.grad(loss(conv.apply), argnums=(0, 1)))(params, x)
    expected = jax.jit(jax.grad(loss(reference), argnums=(0, 1)))(params, x)
    chex.assert_trees_all_close(grads, expected, atol=1e-5, rtol=1e-5)


def test_conv_rejects_unknown_padding():
    with pytest.raises(ValueError, match="padding"):
        Conv(4, padding="FULL").init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 1), np.float32))


def test_conv_rejects_a_block_that_does_not_divide_the_output_width():
    with pytest.raises(ValueError, match="block 3 must divide the output width 8"):
        Conv(4, block=3).init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 1), np.float32))


def test_max_pool_takes_the_largest_of_each_2x2_block():
    x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3) * jnp.array([1.0, -1.0, 0.5])
    expected = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    chex.assert_trees_all_equal(max_pool_2x2(x), expected)


def test_max_pool_gradient_matches_autodiff_of_reduce_window():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 2))  # continuous values: no ties
    weights = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 4, 2))
    reference = lambda x: jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")  # noqa: E731
    chex.assert_trees_all_equal(jax.grad(lambda x: jnp.sum(max_pool_2x2(x) * weights))(x),
                                jax.grad(lambda x: jnp.sum(reference(x) * weights))(x))


def test_max_pool_sends_the_gradient_of_equal_maxima_to_the_first_of_them():
    # each 2x2 block in row-major order; equal maxima at positions 1 and 3, at 0 and 2, at all four
    x = jnp.array([[1.0, 5.0, 7.0, 2.0, 3.0, 3.0], [2.0, 5.0, 7.0, 0.0, 3.0, 3.0]]).reshape(1, 2, 6, 1)
    expected = jnp.array([[0.0, 1.0, 1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]).reshape(1, 2, 6, 1)
    chex.assert_trees_all_equal(jax.grad(lambda x: jnp.sum(max_pool_2x2(x)))(x), expected)
