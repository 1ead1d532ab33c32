"""The host loop shared by train and sweep: resume, compile, run epochs, log, checkpoint. All I/O lives here."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
from tqdm import tqdm

from mnist_jax import checkpoint, distributed, metrics, records
from mnist_jax.errors import UserError
from mnist_jax.workdir import read_metrics


@dataclasses.dataclass(frozen=True)
class Run:
    """What `fit` trains: one model, or a sweep's stacked members.

    `epoch(state, *epoch_args) -> (state, train metrics)` is jitted by `fit`; the data travel in `epoch_args` rather
    than inside the program. `evaluate(state)` returns {split: {metric: value}} for the held-out splits. `label`
    names the progress bar and `describe(row)` is the line printed after each epoch.
    """

    init: Callable[[], Any]
    abstract: Any
    epoch: Callable
    epoch_args: tuple
    evaluate: Callable[[Any], dict]
    images_per_epoch: int
    label: str
    describe: Callable[[dict], str]
    members: Sequence[dict] | None = None


def fit(workdir: Path, run: Run, epochs: int, meta: dict) -> tuple[Any, list[dict], bool]:
    """Trains `run` from its latest checkpoint in `workdir` to `epochs`, one metrics row per epoch.

    Every process of a multi-process run calls this; process 0 alone writes metrics.jsonl and draws the progress
    bar (the others' rows hold only the epochs they trained). Returns (state, rows, whether it was already finished).
    """
    primary = distributed.is_primary()
    manager = checkpoint.open_manager(workdir / "checkpoints")
    try:
        start = manager.latest_step() or 0
        if start:
            state, _ = checkpoint.restore(manager, start, run.abstract)
            print(f"resuming {workdir} after epoch {start} of {epochs}")
        else:
            state = run.init()
        metrics_path = workdir / "metrics.jsonl"
        rows = read_metrics(metrics_path, start) if primary else []
        if primary and start < epochs:  # drops damaged rows and those of epochs whose checkpoint was lost
            records.write_rows(metrics_path, rows)
        if start >= epochs:
            return state, rows, True

        compile_started = time.time()
        compiled = jax.jit(run.epoch).lower(state, *run.epoch_args).compile()
        compile_seconds = time.time() - compile_started
        print(f"compiled the epoch program in {compile_seconds:.1f} s on {jax.default_backend()}")

        bar = tqdm(range(start, epochs), initial=start, total=epochs, unit="epoch", desc=run.label, file=sys.stderr,
                   dynamic_ncols=True, disable=not primary)
        for epoch in range(start + 1, epochs + 1):
            epoch_started = time.time()
            state, train_metrics = compiled(state, *run.epoch_args)
            jax.block_until_ready(state)
            seconds = time.time() - epoch_started + (compile_seconds if epoch == 1 else 0.0)
            by_split, diverged = distributed.to_host(({"train": train_metrics, **run.evaluate(state)}, state.diverged))
            row = metrics.make_row(epoch, by_split, diverged, seconds, run.images_per_epoch, run.members)
            rows.append(row)
            metric, score = metrics.selection_score(row)
            try:
                if primary:
                    records.append_row(metrics_path, row)
                checkpoint.save(manager, epoch, state, {**meta, "epoch": epoch, "selected_by": {metric: score}},
                                {checkpoint.BEST_METRIC: score})
            except Exception as e:  # Orbax reports a full disk as ValueError, files as OSError
                bar.leave = False
                bar.close()
                checkpoint.discard_partial(manager, epoch)
                raise UserError(f"could not save epoch {epoch} in {workdir} ({records.os_reason(e)}): free space or "
                                f"make it writable, then run the same command to resume after epoch {epoch - 1}") \
                    from None
            bar.update()
            bar.write(run.describe(row))
        bar.close()
        manager.wait_until_finished()
    finally:
        manager.close()
    return state, rows, False
