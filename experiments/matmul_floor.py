"""How fast an epoch could be if it were nothing but its matmuls: the matmuls of one training step (batch 128), as XLA
runs them, repeated for an epoch's steps in one program, timed in rounds alternating with the real epoch
(bench.whole_epoch) and the PyTorch reference's. The ratio "at the floor" is the most any change outside the
matmuls could give against PyTorch on this CPU.

    python experiments/matmul_floor.py --torch-python PYTHON_WITH_TORCH --out matmul_floor_avx2.json

The shapes are those of the `dot` instructions in the compiled step (`jax.jit(...).lower(...).compile().as_text()`),
as (rows, contraction, columns), all row-major here. `lenet` is the block-Toeplitz form train runs on CPU (its
matrices multiply by zeros); `lenet_im2col` has the same layers as plain im2col matmuls with no zeros, the fewest
multiplications a matmul-based convolution can do, to say what a convolution of another form could reach at best.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from mnist_jax import bench, cli, engine
from mnist_jax.data import load_bundled
from mnist_jax.report import cpu_name, has_avx512

DENSE = {"mlp": [(784, 256), (256, 128), (128, 10)], "lenet": [(400, 120), (120, 84), (84, 10)]}


def dense_matmuls(layers, batch: int = 128) -> list:
    """Forward (batch x in @ in x out), weight gradients (in x batch @ batch x out), and the input gradients of all
    but the first layer (batch x out @ out x in)."""
    return ([(batch, i, o) for i, o in layers] + [(i, batch, o) for i, o in layers]
            + [(batch, o, i) for i, o in layers[1:]])


def conv_matmuls(rows: int, contraction: int, columns: int, input_gradient: bool) -> list:
    """A convolution as (rows x contraction) @ (contraction x columns): forward, weight gradient, input gradient."""
    return ([(rows, contraction, columns), (rows, columns, contraction)]
            + ([(contraction, rows, columns)] if input_gradient else []))


STEP_MATMULS = {
    "mlp": dense_matmuls(DENSE["mlp"]),
    # conv1: blocks of 4 output columns, (6 x 4) x (5 rows x 1 channel x 8 columns) over 28 x 7 blocks x 128 images;
    # conv2: blocks of 5, (16 x 5) x (5 x 6 x 9) over 10 x 2 x 128
    "lenet": (conv_matmuls(24, 40, 28 * 7 * 128, False) + conv_matmuls(80, 270, 10 * 2 * 128, True)
              + dense_matmuls(DENSE["lenet"])),
    # conv1: 6 x (5 x 5 x 1) over 28 x 28 x 128 pixels; conv2: 16 x (5 x 5 x 6) over 10 x 10 x 128
    "lenet_im2col": (conv_matmuls(6, 25, 28 * 28 * 128, False) + conv_matmuls(16, 150, 10 * 10 * 128, True)
                     + dense_matmuls(DENSE["lenet"])),
}


def floor_program(shapes, steps: int):
    """A program that runs the matmuls of `shapes` `steps` times (each step's inputs depend on the last's outputs,
    so nothing is hoisted out of the loop), and its arguments."""
    keys = jax.random.split(jax.random.PRNGKey(0), 2 * len(shapes))
    operands = [(jax.random.normal(keys[2 * i], (m, k)), jax.random.normal(keys[2 * i + 1], (k, n)))
                for i, (m, k, n) in enumerate(shapes)]

    def run(operands):
        def step(_, carry):
            return sum(jnp.sum((a + carry) @ b) * 1e-30 for a, b in operands)
        return jax.lax.fori_loop(0, steps, step, jnp.float32(0))
    return jax.jit(run).lower(operands).compile(), operands


def fastest(run, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(run())
        best = min(best, time.perf_counter() - started)
    return best


TORCH_FIX = "give --torch-python an interpreter that has torch (pip install torch==2.13.0 in a virtualenv of its own)"


def require_torch(python: str) -> None:
    """Ends the script in one line where `python` cannot import torch, before minutes of compiling and timing."""
    try:
        reason = None if subprocess.run([python, "-c", "import torch"], capture_output=True).returncode == 0 else \
            "it cannot import torch"
    except OSError as e:
        reason = e.strerror
    if reason:
        sys.exit(f"error: {python}: {reason}: {TORCH_FIX}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch-python", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    require_torch(args.torch_python)
    cli.enable_compile_cache(True)
    ds = load_bundled()
    x, y = jax.device_put((ds.x_train, ds.y_train))
    steps = len(ds.y_train) // 128  # the reference's epoch; bench.recipe's on all 60,000 images is the same
    floors = {name: floor_program(shapes, steps) for name, shapes in STEP_MATMULS.items()}
    epochs = {}
    for model in ("mlp", "lenet"):
        config, hyper = bench.recipe(model, len(y)), bench.one_member()
        assert config.steps_per_epoch == steps
        state = engine.initial_state(config, hyper)
        epochs[model] = (jax.jit(bench.whole_epoch(config)).lower(state, hyper, x, y).compile(), state, hyper)
    for program, operands in floors.values():  # a first run of each, untimed
        jax.block_until_ready(program(operands))
    for program, state, hyper in epochs.values():
        jax.block_until_ready(program(state, hyper, x, y))
    times = {name: [] for name in [*floors, "mlp_epoch", "lenet_epoch", "mlp_torch", "lenet_torch"]}
    with bench.torch_reference(args.torch_python, ds.x_train, ds.y_train) as reference:
        for _ in range(args.rounds):
            for name, (program, operands) in floors.items():
                times[name].append(fastest(lambda: program(operands)))
            for model, (program, state, hyper) in epochs.items():
                times[f"{model}_epoch"].append(fastest(lambda: program(state, hyper, x, y)))
            torch = reference and reference("--epochs", "2")
            if torch is None:  # the reference has said what failed
                sys.exit(f"error: the PyTorch reference stopped: {TORCH_FIX}")
            for model in epochs:
                times[f"{model}_torch"].append(torch[model]["epoch_seconds"])
    best = {name: min(values) for name, values in times.items()}
    result = {"cpu": cpu_name(), "avx512f": has_avx512(), "steps": steps,
              "step_matmuls": STEP_MATMULS, "seconds": times, "fastest": best,
              "gflops_per_second": {name: 2 * steps * sum(m * k * n for m, k, n in shapes) / best[name] / 1e9
                                    for name, shapes in STEP_MATMULS.items()}}
    for model, floor in (("mlp", "mlp"), ("lenet", "lenet"), ("lenet", "lenet_im2col")):
        result[f"{floor}_ratio_at_floor"] = best[f"{model}_torch"] / best[floor]
        print(f"{floor}: the matmuls alone {best[floor]:.3f} s ({result['gflops_per_second'][floor]:.0f} GFLOP/s), "
              f"the {model} epoch {best[f'{model}_epoch']:.3f} s, PyTorch {best[f'{model}_torch']:.3f} s: "
              f"{best[f'{model}_torch'] / best[f'{model}_epoch']:.2f}x now, at most "
              f"{result[f'{floor}_ratio_at_floor']:.2f}x at the floor")
    print(f"on {result['cpu']} (avx512f: {result['avx512f']})")
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
