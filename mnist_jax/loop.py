"""The host loop shared by train and sweep: resume, compile, run epochs, log, checkpoint. All I/O lives here."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
from tqdm import tqdm

from mnist_jax import checkpoint
from mnist_jax.workdir import read_metrics


def fit(workdir: Path, epochs: int, init: Callable[[], Any], abstract: Any, epoch_fn: Callable, epoch_args: tuple,
        make_row: Callable[[int, Any, dict, float], dict], describe_row: Callable[[dict], str],
        best_of_row: Callable[[dict], float], meta: dict, label: str) -> tuple[Any, list[dict], bool]:
    """Trains `state` from its latest checkpoint in `workdir` to `epochs`.

    `epoch_fn(state, *epoch_args) -> (state, train_metrics)` is jitted here; `make_row` turns an epoch's result into
    its metrics.jsonl row (evaluation included). Returns (state, rows, whether it was already finished).
    """
    manager = checkpoint.open_manager(workdir / "checkpoints")
    try:
        start = manager.latest_step() or 0
        if start:
            state, _ = checkpoint.restore(manager, start, abstract)
            print(f"resuming {workdir} after epoch {start} of {epochs}")
        else:
            state = init()
        metrics_path = workdir / "metrics.jsonl"
        rows = read_metrics(metrics_path, start)
        metrics_path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        if start >= epochs:
            return state, rows, True

        compile_started = time.time()
        compiled = jax.jit(epoch_fn).lower(state, *epoch_args).compile()
        compile_seconds = time.time() - compile_started
        print(f"compiled the epoch program in {compile_seconds:.1f} s on {jax.default_backend()}")

        bar = tqdm(range(start, epochs), initial=start, total=epochs, unit="epoch", desc=label, file=sys.stderr,
                   dynamic_ncols=True)
        for epoch in range(start + 1, epochs + 1):
            epoch_started = time.time()
            state, train_metrics = compiled(state, *epoch_args)
            jax.block_until_ready(state)
            seconds = time.time() - epoch_started + (compile_seconds if epoch == 1 else 0.0)
            row = make_row(epoch, state, train_metrics, seconds)
            rows.append(row)
            with metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            checkpoint.save(manager, epoch, state, {**meta, "epoch": epoch}, {checkpoint.BEST_METRIC: best_of_row(row)})
            bar.update()
            bar.write(describe_row(row))
        bar.close()
        manager.wait_until_finished()
    finally:
        manager.close()
    return state, rows, False
