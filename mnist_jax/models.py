"""The two networks, with the activation chosen by an integer so that a sweep can vmap over it.

LeNet works internally in a (channels, batch, height, width) layout and computes each convolution as im2col: the
k*k shifted slices of the input concatenated on the leading axis, then one (features x k*k*C) @ (k*k*C x pixels)
matmul.
That computes exactly what `lax.conv_general_dilated` does, but XLA:CPU runs it several times faster (long
contiguous rows instead of 1- or 6-wide channel vectors), and under `vmap` it stays a batched matmul instead of a
grouped convolution.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

ACTIVATIONS = ("elu", "relu", "leaky_relu")
_ACTIVATION_FNS = (nn.elu, nn.relu, nn.leaky_relu)
MODELS = ("mlp", "lenet")
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def activate(index: jax.Array, x: jax.Array) -> jax.Array:
    """Applies ACTIVATIONS[index]; `index` may be traced, so it is data, not code."""
    return jax.lax.switch(index, _ACTIVATION_FNS, x)


def normalize(images: jax.Array, dtype=jnp.float32) -> jax.Array:
    """uint8 images -> standardised floats, done on device so the dataset stays uint8."""
    return ((images.astype(jnp.float32) / 255.0 - MNIST_MEAN) / MNIST_STD).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def im2col(x: jax.Array, size: int) -> jax.Array:
    """(C, B, H, W) -> (size*size*C, B*(H-size+1)*(W-size+1)) patches, rows ordered (row, col, channel) like HWIO."""
    channels, batch, height, width = x.shape
    out_h, out_w = height - size + 1, width - size + 1
    # concatenate, not stack: under vmap the member axis then stays in front, with no transposing copy.
    shifted = jnp.concatenate([x[:, :, i:i + out_h, j:j + out_w] for i in range(size) for j in range(size)])
    return shifted.reshape(size * size * channels, batch * out_h * out_w)


def _im2col_fwd(x, size):
    return im2col(x, size), x.shape


def _im2col_bwd(size, shape, d_patches):
    """Adds each shifted slice's gradient into place (col2im) with in-place updates, not 25 padded copies."""
    channels, batch, height, width = shape
    out_h, out_w = height - size + 1, width - size + 1
    d_patches = d_patches.reshape(size * size, channels, batch, out_h, out_w)
    d_x = jnp.zeros(shape, d_patches.dtype)
    for n, (i, j) in enumerate((i, j) for i in range(size) for j in range(size)):
        window = jax.lax.dynamic_slice(d_x, (0, 0, i, j), (channels, batch, out_h, out_w))
        d_x = jax.lax.dynamic_update_slice(d_x, window + d_patches[n], (0, 0, i, j))
    return (d_x,)


im2col.defvjp(_im2col_fwd, _im2col_bwd)


class Conv(nn.Module):
    """A stride-1 2D convolution on (C, B, H, W) inputs with an HWIO kernel (as `nn.Conv` stores it), via im2col."""

    features: int
    kernel_size: int = 5
    padding: str = "SAME"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[0], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        if self.padding == "SAME":
            x = jnp.pad(x, ((0, 0), (0, 0), ((k - 1) // 2, k // 2), ((k - 1) // 2, k // 2)))
        elif self.padding != "VALID":
            raise ValueError(f"padding must be SAME or VALID, not {self.padding}")
        _, batch, height, width = x.shape
        y = kernel.reshape(-1, self.features).T.astype(self.dtype) @ im2col(x.astype(self.dtype), k)
        y = y.reshape(self.features, batch, height - k + 1, width - k + 1)
        return y + bias.astype(self.dtype)[:, None, None, None]


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling with stride 2 over the last two axes.

    The backward pass routes each gradient to the position that held the maximum (to each, on an exact tie)
    through a mask and a broadcast, instead of the interior-padded transposes of strided slices that autodiff
    would produce and that XLA:CPU fuses into, and recomputes inside, the neighbouring layers' backward passes.
    """
    rows = jnp.maximum(x[..., 0::2, :], x[..., 1::2, :])
    return jnp.maximum(rows[..., 0::2], rows[..., 1::2])


def _upsample_2x2(x: jax.Array) -> jax.Array:
    return jnp.repeat(jnp.repeat(x, 2, axis=-2), 2, axis=-1)


def _max_pool_fwd(x):
    pooled = max_pool_2x2(x)
    return pooled, (x, pooled)


def _max_pool_bwd(residuals, d_pooled):
    x, pooled = residuals
    return (jnp.where(x == _upsample_2x2(pooled), _upsample_2x2(d_pooled), 0.0).astype(x.dtype),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


class MLP(nn.Module):
    """784 -> hidden... -> 10, the activation between the dense layers."""

    hidden: Sequence[int] = (256, 128)
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, activation: jax.Array) -> jax.Array:
        x = normalize(images, self.dtype).reshape(images.shape[0], -1)
        for width in self.hidden:
            x = activate(activation, nn.Dense(width, dtype=self.dtype)(x))
        return nn.Dense(10, dtype=self.dtype)(x).astype(jnp.float32)


class LeNet(nn.Module):
    """LeNet-5: conv 6@5x5 SAME, pool, conv 16@5x5 VALID, pool, dense 120, 84, 10.

    Pooling comes before the activation: every activation here is non-decreasing, so max-pooling commutes with it
    and the network computes the same function on a quarter of the elements.
    """

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, activation: jax.Array) -> jax.Array:
        x = normalize(images, self.dtype)[None]  # (1, B, 28, 28)
        x = activate(activation, max_pool_2x2(Conv(6, padding="SAME", dtype=self.dtype)(x)))
        x = activate(activation, max_pool_2x2(Conv(16, padding="VALID", dtype=self.dtype)(x)))
        x = jnp.transpose(x, (1, 2, 3, 0)).reshape(images.shape[0], -1)  # flattened (h, w, c) as in NHWC
        for width in (120, 84):
            x = activate(activation, nn.Dense(width, dtype=self.dtype)(x))
        return nn.Dense(10, dtype=self.dtype)(x).astype(jnp.float32)


def make_model(name: str, hidden: Sequence[int] = (256, 128), dtype: jnp.dtype = jnp.float32) -> nn.Module:
    """The Flax module for a model name in MODELS."""
    if name == "mlp":
        return MLP(tuple(hidden), dtype=dtype)
    if name == "lenet":
        return LeNet(dtype=dtype)
    raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
