"""The benchmark's epoch timings alone: mnist_jax's LeNet-5 and MLP epochs alternating with the PyTorch reference
(bench.measure_epochs), and the matmul peak; for a CPU on which the whole benchmark would take over an hour.

    python experiments/epoch_ratios.py --torch-python PYTHON_WITH_TORCH --out epoch_ratios.json
"""

import argparse
import json
from pathlib import Path

import jax

from mnist_jax import bench, cli
from mnist_jax.data import load_bundled
from mnist_jax.report import cpu_name, has_avx512


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch-python", required=True)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per round (fastest kept)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    cli.enable_compile_cache(True)
    ds = load_bundled()
    x, y = jax.device_put((ds.x_train, ds.y_train))
    name, avx512 = cpu_name(), has_avx512()
    result = {"cpu": name, "avx512f": avx512, "matmul_peak_gflops": bench.matmul_peak_gflops(),
              **bench.measure_epochs(x, y, ds.x_train, ds.y_train, args.epochs, args.torch_python, args.rounds)}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for model, figures in result["mnist_jax"].items():
        torch = ("PyTorch reference did not run" if result["torch"] is None else
                 f"vs PyTorch {figures['torch_epoch_seconds']:.3f} s = {figures['speedup_over_torch']:.2f}x")
        print(f"{model}: {figures['epoch_seconds']:.3f} s {torch} on {name} (avx512f: {avx512})")


if __name__ == "__main__":
    main()
