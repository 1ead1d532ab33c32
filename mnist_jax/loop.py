"""The host loop shared by train and sweep: resume, compile, run epochs in pieces, log, checkpoint. All I/O is here.

An epoch runs as a few compiled pieces of consecutive steps (its batch order is derived from seed and epoch, so a
piece boundary is a clean place to stop). Ctrl-C or SIGTERM takes effect at the next boundary: the state there is
saved, and the same command resumes from that step, ending bit-identical to a run that was never stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np
from tqdm import tqdm

from mnist_jax import checkpoint, distributed, events, metrics, records
from mnist_jax.errors import Interrupted, UserError
from mnist_jax.workdir import read_metrics

PIECES_PER_EPOCH = 10


@dataclasses.dataclass(frozen=True)
class Run:
    """What `fit` trains: one model, or a sweep's stacked members.

    `order(state)` is the batch order of the epoch after `state.epoch`, computed once per epoch, and
    `steps(state, *epoch_args, order, first, steps=n) -> (state, {"loss_sum", "correct"})` runs `n` steps of that
    epoch from its step `first` (jitted by `fit`, once per piece length); the data travel in `epoch_args` rather than
    inside the program. `evaluate(state)` returns {split: {metric: value}} for the held-out splits, and
    `learning_rate(epoch)` the learning rate (one per member) of that epoch's last step. `label` names the progress
    bar and `describe(row)` is the line printed after each epoch. `hparams` has one entry per member, naming its
    TensorBoard run (activation, seed, lr) and what the HParams tab shows of it. An epoch runs in pieces of about
    `piece_member_steps` steps of one member (the model's, models.MODELS), counted over the members each device
    trains.
    """

    init: Callable[[], Any]
    abstract: Any
    order: Callable
    steps: Callable
    epoch_args: tuple
    steps_per_epoch: int
    batch_size: int
    evaluate: Callable[[Any], dict]
    learning_rate: Callable[[int], Any]
    label: str
    describe: Callable[[dict], str]
    hparams: Sequence[dict]
    piece_member_steps: int
    members_per_device: int = 1
    members: Sequence[dict] | None = None


def pieces(steps: int, members: int, member_steps: int, start: int = 0) -> list[tuple[int, int]]:
    """(first step, length) of each piece of an epoch of `members` members (on one device): at least PIECES_PER_EPOCH
    of them (fewer only for an epoch of fewer steps), more where that keeps a piece to about `member_steps` steps of
    one member; of at most two lengths, so that at most two programs are compiled. From step `start` on: an epoch
    resumed where another plan stopped it (on another number of devices) first runs to this plan's next boundary."""
    count = max(PIECES_PER_EPOCH, math.ceil(steps * members / member_steps))
    length = max(1, steps // count)
    bounds = [*range(0, steps, length), steps]
    return [(max(first, start), end - max(first, start)) for first, end in zip(bounds, bounds[1:]) if end > start]


def _tenths(step: int, steps: int) -> int:
    """How many whole tenths of an epoch of `steps` steps are done after `step` steps."""
    return PIECES_PER_EPOCH * step // steps


class _StopRequests:
    """Ctrl-C and SIGTERM become a request to stop at the next piece boundary; a second Ctrl-C stops at once."""

    def __init__(self):
        self.signal = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._request)
        return self

    def _request(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self) -> bool:
        """Whether to stop, agreed by every process (process 0's word counts)."""
        return distributed.primary_says(self.signal is not None)


def fit(workdir: Path, run: Run, epochs: int, meta: dict) -> tuple[Any, list[dict], bool]:
    """Trains `run` from its latest checkpoint in `workdir` to `epochs`, one metrics row per epoch.

    Every process of a multi-process run calls this; process 0 alone writes metrics.jsonl and draws the progress
    bar (the others' rows hold only the epochs they trained). Returns (state, rows, whether it was already finished).
    """
    primary = distributed.is_primary()
    manager = checkpoint.open_manager(workdir / "checkpoints")
    stopped_at = workdir / "interrupted"  # the place inside an epoch where a run was stopped, if it was
    board = None
    try:
        start = manager.latest_step() or 0
        if start:
            state, _ = checkpoint.restore(manager, start, run.abstract)
        else:
            state = run.init()
        metrics_path = workdir / "metrics.jsonl"
        rows = read_metrics(metrics_path, start) if primary else []
        if start >= epochs:
            return state, rows, True
        if primary:  # drops damaged rows and those of epochs whose checkpoint was lost
            records.write_rows(metrics_path, rows)
            with _writing_events(workdir):
                board = events.Board(workdir / events.DIRECTORY, run.hparams, start + 1)
        resumed = None
        if stopped_at.exists():
            partial = checkpoint.open_partial(stopped_at)
            try:
                if partial.latest_step() == start + 1:
                    state, resumed = checkpoint.restore(partial, start + 1, run.abstract)
            finally:
                partial.close()
        if resumed is not None:
            print(f"resuming {workdir} in epoch {start + 1} after step {resumed['next_step']} of "
                  f"{run.steps_per_epoch}")
        elif start:
            print(f"resuming {workdir} after epoch {start} of {epochs}")

        plan = functools.partial(pieces, run.steps_per_epoch, run.members_per_device, run.piece_member_steps)
        compile_started = time.time()
        order_program = jax.jit(run.order)
        orders = order_program(state)

        @functools.cache
        def program(length: int):
            return jax.jit(functools.partial(run.steps, steps=length)).lower(
                state, *run.epoch_args, orders, np.int32(0)).compile()

        for length in sorted({n for _, n in plan()}):
            program(length)
        compile_seconds = time.time() - compile_started
        print(f"compiled the epoch's {len(plan())} pieces in {compile_seconds:.1f} s on {jax.default_backend()}")

        # Redirected to a file, stderr gets a plain line each tenth of an epoch instead of the bar's carriage returns.
        plain = primary and not sys.stderr.isatty()
        bar = tqdm(total=epochs * run.steps_per_epoch, initial=start * run.steps_per_epoch, unit="step",
                   desc=run.label, file=sys.stderr, dynamic_ncols=True, disable=not primary or plain)
        with _StopRequests() as stop:
            for epoch in range(start + 1, epochs + 1):
                epoch_started = time.time()
                sums, done = {"loss_sum": 0.0, "correct": 0.0}, 0
                if resumed is not None:
                    sums = {k: np.asarray(resumed[k], np.float64) for k in sums}
                    done, resumed = resumed["next_step"], None
                    bar.update(done)
                orders = order_program(state)
                for first, length in plan(done):
                    state, piece = program(length)(state, *run.epoch_args, orders, np.int32(first))
                    piece = distributed.to_host(piece)
                    sums = {k: sums[k] + np.asarray(piece[k], np.float64) for k in sums}
                    bar.update(length)
                    if plain and _tenths(first + length, run.steps_per_epoch) > _tenths(first, run.steps_per_epoch):
                        done_all = (epoch - 1) * run.steps_per_epoch + first + length
                        print(f"{run.label}: epoch {epoch}, step {first + length}/{run.steps_per_epoch} "
                              f"({done_all}/{epochs * run.steps_per_epoch} in all)", file=sys.stderr, flush=True)
                    if first + length < run.steps_per_epoch and stop.requested():
                        _save_partial(stopped_at, epoch, state, sums, first + length, bar)
                        raise Interrupted(f"interrupted in epoch {epoch} after step {first + length} of "
                                          f"{run.steps_per_epoch}, which is saved: run the same command to resume "
                                          "from there")
                state = state.replace(epoch=state.epoch + 1)
                jax.block_until_ready(state)
                seconds = time.time() - epoch_started + (compile_seconds if epoch == 1 else 0.0)
                train = metrics.epoch_means(sums, run.steps_per_epoch, run.batch_size)
                by_split, diverged = distributed.to_host((run.evaluate(state), state.diverged))
                row = metrics.make_row(epoch, {"train": train, **by_split}, run.learning_rate(epoch), diverged,
                                       seconds, run.steps_per_epoch * run.batch_size * len(run.members or [None]),
                                       run.members)
                rows.append(row)
                _save_epoch(manager, workdir, metrics_path, board, epoch, state, row, meta, bar)
                if primary and stopped_at.exists():  # that epoch is whole now
                    shutil.rmtree(stopped_at, ignore_errors=True)
                bar.write(run.describe(row))
                if epoch < epochs and stop.requested():
                    bar.close()
                    raise Interrupted(f"interrupted after epoch {epoch}, which is saved: run the same command to "
                                      "resume")
        bar.close()
        manager.wait_until_finished()
        if board is not None:
            with _writing_events(workdir):
                board.finish()
    finally:
        manager.close()
        if board is not None:
            board.close()
    return state, rows, False


@contextlib.contextmanager
def _writing_events(workdir: Path):
    try:
        yield
    except OSError as e:
        raise UserError(f"could not write TensorBoard events in {workdir / events.DIRECTORY} "
                        f"({records.os_reason(e)}): free space or make it writable, then run the same command") from None


def _save_epoch(manager, workdir: Path, metrics_path: Path, board: events.Board | None, epoch: int, state,
                row: dict, meta: dict, bar) -> None:
    """Process 0 (the one with a board) writes the metrics row and the TensorBoard events; all save the checkpoint."""
    metric, score = metrics.selection_score(row)
    try:
        if board is not None:
            records.append_row(metrics_path, row)
            board.write(row)
        checkpoint.save(manager, epoch, state, {**meta, "epoch": epoch, "selected_by": {metric: score}},
                        {checkpoint.BEST_METRIC: score})
    except Exception as e:  # Orbax reports a full disk as ValueError, files as OSError
        bar.leave = False
        bar.close()
        checkpoint.discard_partial(manager, epoch)
        raise UserError(f"could not save epoch {epoch} in {workdir} ({records.os_reason(e)}): free space or make it "
                        f"writable, then run the same command to resume after epoch {epoch - 1}") from None


def _save_partial(directory: Path, epoch: int, state, sums: dict, next_step: int, bar) -> None:
    bar.leave = False
    bar.close()
    partial = checkpoint.open_partial(directory)
    try:
        checkpoint.save(partial, epoch, state, {"epoch": epoch, "next_step": next_step,
                                                **{k: np.asarray(v).tolist() for k, v in sums.items()}}, {})
        partial.wait_until_finished()
    except Exception as e:
        checkpoint.discard_partial(partial, epoch)
        raise UserError(f"interrupted, but could not save the place in epoch {epoch} ({records.os_reason(e)}): the "
                        f"same command resumes after epoch {epoch - 1}") from None
    finally:
        partial.close()
