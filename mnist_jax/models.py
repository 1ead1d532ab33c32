"""The two networks, with the activation chosen by an integer so that a sweep can vmap over it.

LeNet works internally in a (channels, height, width, batch) layout - the batch innermost, so that every slice along
height or width is a run of whole contiguous batch vectors - and computes each convolution as im2col: the k*k shifted
slices of the input concatenated on the leading axis, then one (features x k*k*C) @ (k*k*C x pixels) matmul.
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
    """(C, H, W, B) -> (size*size*C, (H-size+1)*(W-size+1)*B) patches, rows ordered (row, col, channel) like HWIO."""
    channels, height, width, batch = x.shape
    out_h, out_w = height - size + 1, width - size + 1
    # concatenate, not stack: under vmap the member axis then stays in front, with no transposing copy.
    shifted = jnp.concatenate([x[:, i:i + out_h, j:j + out_w] for i in range(size) for j in range(size)])
    return shifted.reshape(size * size * channels, out_h * out_w * batch)


def _im2col_fwd(x, size):
    return im2col(x, size), x.shape


def _im2col_bwd(size, shape, d_patches):
    """Adds each shifted slice's gradient into place (col2im) with in-place updates, not 25 padded copies."""
    channels, height, width, batch = shape
    out_h, out_w = height - size + 1, width - size + 1
    d_patches = d_patches.reshape(size * size, channels, out_h, out_w, batch)
    d_x = jnp.zeros(shape, d_patches.dtype)
    for n, (i, j) in enumerate((i, j) for i in range(size) for j in range(size)):
        window = jax.lax.dynamic_slice(d_x, (0, i, j, 0), (channels, out_h, out_w, batch))
        d_x = jax.lax.dynamic_update_slice(d_x, window + d_patches[n], (0, i, j, 0))
    return (d_x,)


im2col.defvjp(_im2col_fwd, _im2col_bwd)


class Conv(nn.Module):
    """A stride-1 2D convolution on (C, H, W, B) inputs with an HWIO kernel (as `nn.Conv` stores it), via im2col."""

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
            x = jnp.pad(x, ((0, 0), ((k - 1) // 2, k // 2), ((k - 1) // 2, k // 2), (0, 0)))
        elif self.padding != "VALID":
            raise ValueError(f"padding must be SAME or VALID, not {self.padding}")
        _, height, width, batch = x.shape
        y = kernel.reshape(-1, self.features).T.astype(self.dtype) @ im2col(x.astype(self.dtype), k)
        y = y.reshape(self.features, height - k + 1, width - k + 1, batch)
        return y + bias.astype(self.dtype)[:, None, None, None]


def _pool_candidates(x: jax.Array):
    return x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2]


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling with stride 2 over axes 1 and 2 (height and width of (C, H, W, B)).

    The backward pass sends each gradient to the position the forward pass chose (the first of equal maxima),
    remembered as a small int8 index, through a broadcast and a mask: autodiff would instead produce interior-padded
    transposes of strided slices that XLA:CPU fuses into, and recomputes inside, the neighbouring layers.
    """
    return _max_pool_with_index(x)[0]


def _max_pool_with_index(x: jax.Array):
    a, b, c, d = _pool_candidates(x)
    top, bottom = jnp.maximum(a, b), jnp.maximum(c, d)
    index = jnp.where(bottom > top, 2 + (d > c), (b > a).astype(jnp.int8)).astype(jnp.int8)
    return jnp.maximum(top, bottom), index


def _upsample_2x2(x: jax.Array) -> jax.Array:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _max_pool_fwd(x):
    pooled, index = _max_pool_with_index(x)
    return pooled, index


def _max_pool_bwd(index, d_pooled):
    height, width = index.shape[1] * 2, index.shape[2] * 2
    position = (2 * (jnp.arange(height) % 2)[:, None, None] + (jnp.arange(width) % 2)[None, :, None]).astype(jnp.int8)
    return (jnp.where(_upsample_2x2(index) == position, _upsample_2x2(d_pooled), 0).astype(d_pooled.dtype),)


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
        x = jnp.transpose(normalize(images, self.dtype), (1, 2, 0))[None]  # (1, 28, 28, B)
        x = activate(activation, max_pool_2x2(Conv(6, padding="SAME", dtype=self.dtype)(x)))
        x = activate(activation, max_pool_2x2(Conv(16, padding="VALID", dtype=self.dtype)(x)))
        x = jnp.transpose(x, (3, 1, 2, 0)).reshape(images.shape[0], -1)  # flattened (h, w, c) as in NHWC
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
