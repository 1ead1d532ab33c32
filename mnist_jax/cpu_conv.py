"""LeNet's convolutions and pooling in the form XLA:CPU runs fastest (`--conv toeplitz`, the default on CPU).

The layout is (channels, height, width, batch): the batch innermost, so that every slice along height or width is a
run of whole contiguous batch vectors. Each convolution is one matmul of a block-Toeplitz form of the kernel with the
input windows (see `Conv`): it computes exactly what `lax.conv_general_dilated` does, but XLA:CPU runs it several
times faster, and under `vmap` it stays a batched matmul instead of becoming a grouped convolution. The blocks (4
output columns for conv1, 5 for conv2) were chosen by timing training steps on a 2-core x86 CPU. Max pooling keeps the
forward's choice as an int8 index for its backward pass. The parameters are those of `nn.Conv` (HWIO kernel, bias),
so a checkpoint moves between this form and the standard one.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def block_toeplitz(kernel: jax.Array, block: int) -> jax.Array:
    """(k, k, C, F) HWIO kernel -> (F*block, k*C*(block+k-1)) matrix with rows (f, v) and columns (i, c, u).

    Entry [(f, v), (i, c, u)] is kernel[i, u - v, c, f] where 0 <= u - v < k, else 0: row (f, v) computes output
    column v of a block of `block` adjacent output columns from the (block+k-1)-wide input window the block reads.
    """
    k, _, channels, features = kernel.shape
    select = np.zeros((block + k - 1, block, k), np.float32)  # [u, v, j] = 1 where u == v + j
    for v in range(block):
        select[v:v + k, v, :] = np.eye(k, dtype=np.float32)
    return jnp.einsum("uvj,ijcf->fvicu", select.astype(kernel.dtype), kernel).reshape(features * block, -1)


def block_windows(x: jax.Array, size: int, block: int) -> jax.Array:
    """(C, H, W, B) -> (size*C*(block+size-1), out_h*(out_w/block)*B) input windows, rows (i, c, u) as in
    block_toeplitz and columns (output row, block of output columns, image)."""
    channels, height, width, _ = x.shape
    out_h, blocks = height - size + 1, (width - size + 1) // block
    columns = jnp.stack([x[:, :, n * block:n * block + block + size - 1] for n in range(blocks)], axis=2)
    rows = jnp.stack([columns[:, i:i + out_h] for i in range(size)])  # (i, c, h, n, u, b)
    return jnp.transpose(rows, (0, 1, 4, 2, 3, 5)).reshape(size * channels * (block + size - 1), -1)


class Conv(nn.Module):
    """A stride-1 2D convolution on (C, H, W, B) inputs with an HWIO kernel (as `nn.Conv` stores it), as one matmul.

    Each output row is cut into blocks of `block` columns, and one block-Toeplitz (F*block x k*C*(block+k-1)) matrix
    maps every block's input window to all of the block's outputs. With `block` 1 this is plain im2col (a
    (F x k*k*C) @ (k*k*C x pixels) matmul); a wider block does some multiplications by zero but turns LeNet's
    short contractions (25 for conv1) into matmuls shaped for the CPU and writes fewer window elements than im2col.
    """

    features: int
    kernel_size: int = 5
    padding: str = "SAME"
    block: int = 1
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
        out_h, out_w = height - k + 1, width - k + 1
        if out_w % self.block:
            raise ValueError(f"block {self.block} must divide the output width {out_w}")
        y = block_toeplitz(kernel.astype(self.dtype), self.block) @ block_windows(x.astype(self.dtype), k, self.block)
        y = y.reshape(self.features, self.block, out_h, out_w // self.block, batch)
        y = jnp.transpose(y, (0, 2, 3, 1, 4)).reshape(self.features, out_h, out_w, batch)
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


@jax.named_scope("max_pool")
def _max_pool_with_index(x: jax.Array):
    candidates = _pool_candidates(x)
    a, b, c, d = candidates
    # The position as a reduce (argmax: the first of equal maxima), not as elementwise compares and selects: XLA:CPU
    # fuses an elementwise index into the backward pass, which then computes it again from the convolution's output
    # for each of the four gradient positions it fills (a sixth of LeNet's step on an AVX2 CPU); a reduce is kept.
    return jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d)), jnp.argmax(jnp.stack(candidates), 0).astype(jnp.int8)


def _upsample_2x2(x: jax.Array) -> jax.Array:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _max_pool_fwd(x):
    pooled, index = _max_pool_with_index(x)
    return pooled, index


@jax.named_scope("max_pool")
def _max_pool_bwd(index, d_pooled):
    height, width = index.shape[1] * 2, index.shape[2] * 2
    position = (2 * (jnp.arange(height) % 2)[:, None, None] + (jnp.arange(width) % 2)[None, :, None]).astype(jnp.int8)
    return (jnp.where(_upsample_2x2(index) == position, _upsample_2x2(d_pooled), 0).astype(d_pooled.dtype),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


def lenet_features(x: jax.Array, pool_and_activate: Callable, dtype: jnp.dtype) -> jax.Array:
    """LeNet's two conv+pool stages on normalised (B, 28, 28) images -> (B, 400) features in NHWC (h, w, c) order.

    `pool_and_activate(pool, x)` applies the activation and `pool` in the order the model chose.
    """
    x = jnp.transpose(x, (1, 2, 0))[None]  # (1, 28, 28, B)
    x = pool_and_activate(max_pool_2x2, Conv(6, padding="SAME", block=4, dtype=dtype)(x))
    x = pool_and_activate(max_pool_2x2, Conv(16, padding="VALID", block=5, dtype=dtype)(x))
    return jnp.transpose(x, (3, 1, 2, 0)).reshape(x.shape[-1], -1)  # flattened (h, w, c) as in NHWC
