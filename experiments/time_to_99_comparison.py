"""The benchmark's time-to-99% entry alone (bench.measure_time_to_99): the fast recipe (bench.TIME_TO_99_ARGV) and
the tuomaso recipe in PyTorch, alternated seed by seed, with the CPU and the commit; where the whole benchmark takes
too long.

    python experiments/time_to_99_comparison.py --torch-python PYTHON_WITH_TORCH --out comparison.json
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from mnist_jax import bench, cli, records
from mnist_jax.data import load_bundled
from mnist_jax.report import environment


def commit() -> str | None:
    """The checked-out commit of this clone, where git can say."""
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent)
    except OSError:
        return None
    return done.stdout.strip() or None


def main(argv=None) -> int:
    parser = cli.Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch-python", required=True)
    parser.add_argument("--seeds", type=cli.argument_type(bench.time_to_99_runs), default=5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    records.check_writable(args.out.parent)  # before minutes of runs, not after them
    measured_at = commit()
    ds = load_bundled()
    result = bench.measure_time_to_99(args.torch_python, args.seeds, ds.x_train, ds.y_train, ds.x_test, ds.y_test)
    rows = bench.time_to_99_rows(result)
    result["environment"] = environment()
    result["commit"] = measured_at
    records.write_json(args.out, result)
    cpu = result["environment"]
    print("\n".join([f"on the CPU {cpu['cpu']!r} (avx512f: {cpu['avx512f']}), at commit {measured_at}:", "",
                      *bench.TABLE_HEADER, *rows]))
    return 0


if __name__ == "__main__":
    cli.run(main)
