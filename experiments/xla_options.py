"""One epoch of a model (bench.whole_epoch: full MNIST, batch 128) compiled under XLA:CPU options and with the step's
scan unrolled, timed interleaved against the defaults, with whether each computes the same parameters to the bit.

    python experiments/xla_options.py --model mlp --rounds 3

An option this jaxlib does not know is reported and skipped.
"""

import argparse
import time

import jax
import numpy as np

from mnist_jax import bench, engine
from mnist_jax.data import load_bundled
from mnist_jax.report import cpu_name, has_avx512

OPTIONS = {
    "default": {},
    "one matmul thread": {"xla_cpu_multi_thread_eigen": False},
    "oneDNN": {"xla_cpu_use_onednn": True},
    "XNNPACK": {"xla_cpu_use_xnnpack": True},
    "concurrency-optimized scheduler": {"xla_cpu_enable_concurrency_optimized_scheduler": True},
    "concurrency-optimized scheduler off": {"xla_cpu_enable_concurrency_optimized_scheduler": False},
    "fusion emitters off": {"xla_cpu_use_fusion_emitters": False},
}
UNROLLS = (2, 4, 8)


def compiled_epoch(config, state, hyper, x, y, options: dict, unroll: int = 1):
    """bench.whole_epoch compiled with `options`, its scan unrolled `unroll` steps."""
    scan = jax.lax.scan
    jax.lax.scan = lambda f, init, xs=None, length=None, **kw: scan(f, init, xs, length, unroll=unroll, **kw)
    try:
        return jax.jit(bench.whole_epoch(config), compiler_options=options).lower(state, hyper, x, y).compile()
    finally:
        jax.lax.scan = scan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("mlp", "lenet"), default="mlp")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ds = load_bundled()
    x, y = jax.device_put((ds.x_train, ds.y_train))
    config, hyper = bench.recipe(args.model, len(y)), bench.one_member()
    state = engine.initial_state(config, hyper)
    variants = {**{name: (options, 1) for name, options in OPTIONS.items()},
                **{f"scan unrolled {n} steps": ({}, n) for n in UNROLLS}}
    programs, reference = {}, None
    for name, (options, unroll) in variants.items():
        try:
            program = compiled_epoch(config, state, hyper, x, y, options, unroll)
        except Exception as e:  # noqa: BLE001  (an option this jaxlib does not have)
            print(f"{name}: skipped ({str(e).splitlines()[0]})")
            continue
        params = [np.asarray(leaf) for leaf in jax.tree.leaves(program(state, hyper, x, y)[0].params)]
        reference = params if reference is None else reference
        same = all(np.array_equal(a, b) for a, b in zip(reference, params))
        programs[name] = (program, same)
    best = dict.fromkeys(programs, float("inf"))
    for _ in range(args.rounds):
        for name, (program, _) in programs.items():
            started = time.perf_counter()
            jax.block_until_ready(program(state, hyper, x, y))
            best[name] = min(best[name], time.perf_counter() - started)
    print(f"{args.model} epoch on {cpu_name()} (avx512f: {has_avx512()}), fastest of {args.rounds}, interleaved:")
    for name, seconds in best.items():
        print(f"  {name}: {seconds:.3f} s ({seconds / best['default'] - 1:+.1%}), same parameters: "
              f"{programs[name][1]}")


if __name__ == "__main__":
    main()
