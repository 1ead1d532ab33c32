"""Other ways to compute LeNet-5's training step on CPU, timed against the one mnist_jax uses (docs/performance.md,
"What was tried for LeNet on CPU").

    python experiments/lenet_speed/alternatives.py [--rounds 4] [--activation elu] [--only blocks,pooling]

Each alternative replaces one piece of `mnist_jax.cpu_conv` or `mnist_jax.models` for the length of its compilation;
all are compiled first, then one epoch of each (55,000 images, batch 128, the default recipe) is timed in turn,
`--rounds` times, and the fastest is kept. "same result" says whether its parameters after those epochs are
bit-identical to the current form's. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import bench, cpu_conv, engine, models
from mnist_jax.data import load_bundled


def blocked_features(conv1_block: int, conv2_block: int):
    """The current layout with other Toeplitz block widths."""
    def features(x, pool_and_activate, dtype):
        x = jnp.transpose(x, (1, 2, 0))[None]
        conv1 = cpu_conv.Conv(6, padding="SAME", block=conv1_block, dtype=dtype)
        x = pool_and_activate(cpu_conv.max_pool_2x2, conv1(x))
        conv2 = cpu_conv.Conv(16, padding="VALID", block=conv2_block, dtype=dtype)
        x = pool_and_activate(cpu_conv.max_pool_2x2, conv2(x))
        return jnp.transpose(x, (3, 1, 2, 0)).reshape(x.shape[-1], -1)
    return features


class RightConv(nn.Module):
    """Batch-outermost (NHWC) form: windows (B*H*blocks, k*(block+k-1)*C) @ Toeplitz (.., block*F), whose output
    reshapes to NHWC with no transpose."""

    features: int
    padding: str
    block: int

    @nn.compact
    def __call__(self, x):
        k = 5
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        if self.padding == "SAME":
            x = jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
        b, height, width, _ = x.shape
        out_h, blocks = height - k + 1, (width - k + 1) // self.block
        select = np.zeros((self.block + k - 1, self.block, k), np.float32)
        for v in range(self.block):
            select[v:v + k, v, :] = np.eye(k, dtype=np.float32)
        toeplitz = jnp.einsum("uvj,ijcf->iucvf", select, kernel).reshape(-1, self.block * self.features)
        columns = jnp.stack([x[:, :, n * self.block:n * self.block + self.block + k - 1] for n in range(blocks)], 2)
        windows = jnp.stack([columns[:, i:i + out_h] for i in range(k)], axis=3).reshape(b * out_h * blocks, -1)
        return (windows @ toeplitz).reshape(b, out_h, width - k + 1, self.features) + bias


def nhwc_features(x, pool_and_activate, dtype):
    x = pool_and_activate(cpu_conv.max_pool_2x2, RightConv(6, "SAME", 4, name="Conv_0")(x[..., None]))
    x = pool_and_activate(cpu_conv.max_pool_2x2, RightConv(16, "VALID", 5, name="Conv_1")(x))
    return x.reshape(x.shape[0], -1)


def sliced_windows(x, size, block):
    """The same windows as cpu_conv.block_windows, as one stack of strided slices."""
    channels, height, width, _ = x.shape
    out_h, blocks = height - size + 1, (width - size + 1) // block
    rows = [x[c, i:i + out_h, u:u + block * (blocks - 1) + 1:block] for i in range(size) for c in range(channels)
            for u in range(block + size - 1)]
    return jnp.stack(rows).reshape(len(rows), -1)


def gathered_windows(x, size, block):
    """The same windows, as one gather of batch vectors."""
    channels, height, width, batch = x.shape
    out_h, blocks = height - size + 1, (width - size + 1) // block
    i, c, u, h, n = np.meshgrid(np.arange(size), np.arange(channels), np.arange(block + size - 1), np.arange(out_h),
                                np.arange(blocks), indexing="ij")
    rows = ((c * height + h + i) * width + n * block + u).reshape(-1)
    return x.reshape(-1, batch)[rows].reshape(size * channels * (block + size - 1), -1)


def every_activation_selected(index, x):
    """Branch-free: every registered activation computed, the member's selected (what vmap makes of the switch)."""
    fns = [a.fn for a in models.ACTIVATION_REGISTRY.values()]
    out = fns[-1](x)
    for i in range(len(fns) - 2, -1, -1):
        out = jnp.where(index == i, fns[i](x), out)
    return out


def elu_by_exp(x):
    return jnp.where(x > 0, x, jnp.exp(jnp.where(x > 0, 0.0, x)) - 1)


@jax.named_scope("max_pool")
def elementwise_pool_index(x):
    """Max pooling's position by elementwise compares and selects, as it was (XLA:CPU fuses it into the backward)."""
    a, b, c, d = cpu_conv._pool_candidates(x)
    top, bottom = jnp.maximum(a, b), jnp.maximum(c, d)
    return jnp.maximum(top, bottom), jnp.where(bottom > top, 2 + (d > c), (b > a).astype(jnp.int8)).astype(jnp.int8)


@contextlib.contextmanager
def replaced(obj, name, value, key=None):
    old = getattr(obj, name) if key is None else getattr(obj, name)[key]
    if key is None:
        setattr(obj, name, value)
    else:
        getattr(obj, name)[key] = value
    try:
        yield
    finally:
        if key is None:
            setattr(obj, name, old)
        else:
            getattr(obj, name)[key] = old


ALTERNATIVES = {
    "current (blocks 4 and 5)": contextlib.nullcontext,
    **{f"blocks {a} and {b}": (lambda a=a, b=b: replaced(models, "CONV_FORMS", blocked_features(a, b), "toeplitz"))
       for a, b in ((2, 5), (7, 5), (14, 5), (1, 5), (4, 2), (4, 10), (2, 2), (2, 1))},
    "NHWC, Toeplitz on the right (no transposes)": lambda: replaced(models, "CONV_FORMS", nhwc_features, "toeplitz"),
    "windows as one stack of strided slices": lambda: replaced(cpu_conv, "block_windows", sliced_windows),
    "windows as one gather": lambda: replaced(cpu_conv, "block_windows", gathered_windows),
    "activation branch-free (every one computed)": lambda: replaced(models, "activate", every_activation_selected),
    "ELU as exp(x) - 1 instead of expm1(x)": lambda: replaced(models, "ACTIVATION_REGISTRY",
                                                              models.Activation(elu_by_exp, True), "elu"),
    "pooling's position by elementwise selects": lambda: replaced(cpu_conv, "_max_pool_with_index",
                                                                  elementwise_pool_index),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--activation", default="elu", choices=models.ACTIVATIONS)
    parser.add_argument("--only", default="", metavar="TEXT,...",
                        help="time only the alternatives whose name contains one of these (and the current form)")
    args = parser.parse_args()
    ds = load_bundled()
    x, y = jax.device_put((ds.x_train[:55000], ds.y_train[:55000]))
    config = bench.recipe("lenet", 55000, conv="toeplitz")
    hyper = bench.one_member(args.activation)
    programs = {}
    current = next(iter(ALTERNATIVES))
    for name, alternative in ALTERNATIVES.items():
        if name != current and not any(text in name for text in args.only.split(",")):
            continue
        with alternative():
            state = engine.init_member(config, hyper)
            programs[name] = (jax.jit(bench.whole_epoch(config)).lower(state, hyper, x, y).compile(), state)
    best, params = dict.fromkeys(programs, float("inf")), {}
    for round_ in range(args.rounds):
        for name, (compiled, state) in programs.items():
            seconds, trained = bench.timed_epochs(compiled, state, (hyper, x, y), 1, warm_up=round_ == 0)
            best[name] = min(best[name], seconds)
            params[name] = [np.asarray(p) for p in jax.tree.leaves(trained.params)]
    print(f"| LeNet-5 training ({args.activation}), one epoch | seconds | vs current | same result |")
    print("| --- | --- | --- | --- |")
    for name in programs:
        same = all(np.array_equal(a, b) for a, b in zip(params[name], params[current]))
        print(f"| {name} | {best[name]:.3f} | {best[name] / best[current] - 1:+.0%} | {'yes' if same else 'no'} |")


if __name__ == "__main__":
    main()
