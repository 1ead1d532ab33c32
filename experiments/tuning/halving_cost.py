"""What a successive-halving rung costs: an epoch of the k members still going out of n (gathered, trained, scattered
back into the whole stack), against an epoch of a population of just those k, and the recompile at the rung.

    python experiments/tuning/halving_cost.py [--model lenet] [--members 75] [--going 15] [--repeats 3]

Both run the same pieces the sweep's loop runs (trainers.Population.piece), interleaved, fastest of --repeats.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from mnist_jax import bench, population, report
from mnist_jax.data import load_bundled
from mnist_jax.trainers import Population


def epoch_seconds(trainer: Population, state, pieces: int) -> tuple[float, float]:
    """(seconds of one epoch in `pieces` pieces, seconds to compile its piece)."""
    started = time.time()
    order = trainer.order(state)
    length = trainer.steps_per_epoch // pieces
    program = trainer.piece(state, order, length)
    compile_seconds = time.time() - started
    started = time.time()
    for first in range(0, pieces * length, length):
        state, sums = program(state, order, np.int32(first))
    jax.block_until_ready((state, sums))
    return time.time() - started, compile_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="lenet", choices=("lenet", "mlp"))
    parser.add_argument("--members", type=int, default=75)
    parser.add_argument("--going", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ds = load_bundled()
    x, y = np.asarray(ds.x_train[:55000]), np.asarray(ds.y_train[:55000])
    splits = {"train": (x, y), "val": (np.asarray(ds.x_test[:1000]), np.asarray(ds.y_test[:1000]))}
    config = bench.recipe(args.model, len(y))
    activations = ("elu", "relu", "leaky_relu")
    members = [bench.member(activations[i % 3], 2e-3, i // 3) for i in range(args.members)]
    going = [i < args.going for i in range(args.members)]
    chunk = population.default_vmap_chunk()
    pieces = 10
    some = Population(config, members, splits, shared_order=False, vmap_chunk=chunk)
    some.train_only(going)
    alone = Population(config, members[:args.going], splits, shared_order=False, vmap_chunk=chunk)
    some_state, alone_state = some.init(), alone.init()
    times = {"gathered": [], "alone": []}
    compiles = {"gathered": [], "alone": []}
    for _ in range(args.repeats):
        for name, trainer, state in (("gathered", some, some_state), ("alone", alone, alone_state)):
            seconds, compiled = epoch_seconds(trainer, state, pieces)
            times[name].append(seconds)
            compiles[name].append(compiled)
    out = {"model": args.model, "members": args.members, "going": args.going, "cpu": report.cpu_name(),
           "backend": jax.default_backend(), "vmap_chunk": chunk,
           "epoch_seconds": {k: min(v) for k, v in times.items()},
           "compile_seconds": {k: min(v) for k, v in compiles.items()}}
    out["overhead"] = out["epoch_seconds"]["gathered"] / out["epoch_seconds"]["alone"] - 1
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
