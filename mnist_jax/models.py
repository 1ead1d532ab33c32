"""The two networks, with the activation chosen by an integer so that a sweep can vmap over it."""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnist_jax import cpu_conv


@dataclasses.dataclass(frozen=True)
class Activation:
    fn: Callable[[jax.Array], jax.Array]
    non_decreasing: bool  # then max pooling commutes with it (a test checks every registered one)


ACTIVATION_REGISTRY = {"elu": Activation(nn.elu, True), "relu": Activation(nn.relu, True),
                       "leaky_relu": Activation(nn.leaky_relu, True)}
ACTIVATIONS = tuple(ACTIVATION_REGISTRY)
# Pooling first computes the activation on a quarter of the elements; it is the same network only if every
# activation a member may pick is non-decreasing.
POOL_BEFORE_ACTIVATION = all(a.non_decreasing for a in ACTIVATION_REGISTRY.values())
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def activate(index: jax.Array, x: jax.Array) -> jax.Array:
    """Applies ACTIVATIONS[index]; `index` may be traced, so it is data, not code."""
    with jax.named_scope("activation"):
        return jax.lax.switch(index, [a.fn for a in ACTIVATION_REGISTRY.values()], x)


def normalize(images: jax.Array, dtype=jnp.float32) -> jax.Array:
    """uint8 images -> standardised floats, done on device so the dataset stays uint8."""
    return ((images.astype(jnp.float32) / 255.0 - MNIST_MEAN) / MNIST_STD).astype(dtype)


def _lax_features(x: jax.Array, pool_and_activate: Callable, dtype: jnp.dtype) -> jax.Array:
    """The standard form: NHWC `nn.Conv` and `nn.max_pool`, what GPUs and TPUs are built for."""
    pool = jax.named_scope("max_pool")(lambda y: nn.max_pool(y, (2, 2), strides=(2, 2)))
    x = pool_and_activate(pool, nn.Conv(6, (5, 5), padding="SAME", dtype=dtype)(x[..., None]))
    x = pool_and_activate(pool, nn.Conv(16, (5, 5), padding="VALID", dtype=dtype)(x))
    return x.reshape(x.shape[0], -1)


# LeNet's convolution forms: (normalised images, pool_and_activate, dtype) -> (B, 400), one parameter tree for all.
CONV_FORMS = {"lax": _lax_features, "toeplitz": cpu_conv.lenet_features}


def default_conv() -> str:
    """The form for this backend: the block-Toeplitz matmuls on CPU, the standard convolution on GPU and TPU."""
    return "toeplitz" if jax.default_backend() == "cpu" else "lax"


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
    """LeNet-5: conv 6@5x5 SAME, pool, conv 16@5x5 VALID, pool, dense 120, 84, 10; `conv` names the form."""

    dtype: jnp.dtype = jnp.float32
    conv: str = "lax"

    @nn.compact
    def __call__(self, images: jax.Array, activation: jax.Array) -> jax.Array:
        def pool_and_activate(pool, x):
            return activate(activation, pool(x)) if POOL_BEFORE_ACTIVATION else pool(activate(activation, x))

        x = CONV_FORMS[self.conv](normalize(images, self.dtype), pool_and_activate, self.dtype)
        for width in (120, 84):
            x = activate(activation, nn.Dense(width, dtype=self.dtype)(x))
        return nn.Dense(10, dtype=self.dtype)(x).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Model:
    """A model of the registry: how to build it, and how many member-steps make a piece of an epoch (loop.pieces).

    A piece of that size trains for a second or two on a laptop-class CPU, so that even a large sweep's progress bar
    moves, and Ctrl-C takes effect, within seconds, and is long enough that the fixed part of a piece stays out of
    sight (the benchmark's `sweep_pieces` measures it; docs/performance.md has the figures).
    """

    build: Callable[[Sequence[int], jnp.dtype, str], nn.Module]
    piece_member_steps: int


MODELS = {"mlp": Model(lambda hidden, dtype, conv: MLP(tuple(hidden), dtype=dtype), piece_member_steps=3000),
          "lenet": Model(lambda hidden, dtype, conv: LeNet(dtype=dtype, conv=conv), piece_member_steps=500)}


def make_model(name: str, hidden: Sequence[int] = (256, 128), dtype: jnp.dtype = jnp.float32,
               conv: str = "lax") -> nn.Module:
    """The Flax module for a model name in MODELS; `conv` (a CONV_FORMS name) matters for LeNet only."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    return MODELS[name].build(hidden, dtype, conv)
