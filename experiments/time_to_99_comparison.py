"""The benchmark's time-to-99% entry alone (bench.measure_time_to_99): the fast recipe (bench.TIME_TO_99_ARGV) and
the tuomaso recipe in PyTorch, alternated seed by seed, with the CPU and the commit; where the whole benchmark takes
too long.

    python experiments/time_to_99_comparison.py --torch-python PYTHON_WITH_TORCH --out comparison.json
"""

import argparse
import json
import subprocess
from pathlib import Path

from mnist_jax import bench
from mnist_jax.data import load_bundled
from mnist_jax.report import environment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch-python", required=True)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    ds = load_bundled()
    result = bench.measure_time_to_99(args.torch_python, args.seeds, ds.x_train, ds.y_train, ds.x_test, ds.y_test)
    result["environment"] = environment()
    result["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                      cwd=Path(__file__).parent).stdout.strip()
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name in ("mnist_jax", "tuomaso"):
        if name in result:
            entry = result[name]
            print(f"{name}: {entry['mean_test_accuracy']:.2%} ± {entry['std_test_accuracy']:.2%} test accuracy, "
                  f"{entry['mean_train_seconds']:.2f} s of training ({len(entry['runs'])} runs)")
    if "train_seconds_ratio" in result:
        print(f"ratio of training times: {result['train_seconds_ratio']:.2f}x")


if __name__ == "__main__":
    main()
