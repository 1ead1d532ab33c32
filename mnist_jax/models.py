"""The two networks, with the activation chosen by an integer so that a sweep can vmap over it.

Convolutions are written as im2col: the k*k shifted slices of the input stacked on the channel axis, then one
matmul. It computes exactly what `lax.conv_general_dilated` does, but XLA:CPU runs it several times faster, and
under `vmap` it becomes a batched matmul instead of a grouped convolution.
"""

from __future__ import annotations

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


def im2col(x: jax.Array, size: int) -> jax.Array:
    """(B, H, W, C) -> (B, H-size+1, W-size+1, size*size*C) patches, ordered (row, col, channel) like HWIO kernels."""
    out_h, out_w = x.shape[1] - size + 1, x.shape[2] - size + 1
    return jnp.concatenate([x[:, i:i + out_h, j:j + out_w, :] for i in range(size) for j in range(size)], axis=-1)


class Conv(nn.Module):
    """A stride-1 2D convolution (NHWC, HWIO kernel as in `nn.Conv`) computed as im2col + matmul."""

    features: int
    kernel_size: int = 5
    padding: str = "SAME"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        if self.padding == "SAME":
            x = jnp.pad(x, ((0, 0), ((k - 1) // 2, k // 2), ((k - 1) // 2, k // 2), (0, 0)))
        elif self.padding != "VALID":
            raise ValueError(f"padding must be SAME or VALID, not {self.padding}")
        y = im2col(x, k) @ kernel.reshape(-1, self.features).astype(self.dtype)
        return y + bias.astype(self.dtype)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling with stride 2 as a reshape, which XLA fuses better than reduce_window."""
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


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
    """LeNet-5: conv 6@5x5 SAME, pool, conv 16@5x5 VALID, pool, dense 120, 84, 10."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, activation: jax.Array) -> jax.Array:
        x = normalize(images, self.dtype)[..., None]
        x = max_pool_2x2(activate(activation, Conv(6, padding="SAME", dtype=self.dtype)(x)))
        x = max_pool_2x2(activate(activation, Conv(16, padding="VALID", dtype=self.dtype)(x)))
        x = x.reshape(x.shape[0], -1)
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
