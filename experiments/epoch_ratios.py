"""The benchmark's epoch timings alone: mnist_jax's LeNet-5 and MLP epochs alternating with the PyTorch reference
(bench.measure_epochs), and the matmul peak; for a CPU on which the whole benchmark would take over an hour.

    python experiments/epoch_ratios.py --torch-python PYTHON_WITH_TORCH --out epoch_ratios.json
"""

import argparse
import json
import platform
import subprocess
from pathlib import Path

import jax

from mnist_jax import bench, cli
from mnist_jax.data import load_bundled


def cpu_name() -> tuple[str, bool]:
    """The CPU as lscpu names it, and whether it has AVX-512 (avx512f)."""
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model name")),
                platform.processor())
    return name, "avx512f" in Path("/proc/cpuinfo").read_text()


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
    name, avx512 = cpu_name()
    result = {"cpu": name, "avx512f": avx512, "matmul_peak_gflops": bench.matmul_peak_gflops(),
              **bench.measure_epochs(x, y, ds.x_train, ds.y_train, args.epochs, args.torch_python, args.rounds)}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for model, figures in result["mnist_jax"].items():
        print(f"{model}: {figures['epoch_seconds']:.3f} s vs PyTorch {figures.get('torch_epoch_seconds', 0):.3f} s"
              f" = {figures.get('speedup_over_torch', 0):.2f}x on {name} (avx512f: {avx512})")


if __name__ == "__main__":
    main()
