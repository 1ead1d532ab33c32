"""The host loop shared by train and sweep: resume, run epochs in pieces, log, checkpoint. All I/O is here.

What it trains is a `Trainer` (mnist_jax.trainers: one model, or a population of members). An epoch runs as a few
compiled pieces of consecutive steps (its batch order is derived from seed and epoch, so a piece boundary is a clean
place to stop). Ctrl-C or SIGTERM takes effect at the next boundary: the state there is saved in the workdir's
`interrupted/`, and the same command resumes from that step, ending bit-identical to a run that was never stopped.
That place is kept apart from the epoch checkpoints, which are ranked by validation accuracy and which evaluate and
export read: a mid-epoch state has no score and is no model anyone asked for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import select
import shutil
import signal
import sys
import threading
import time
from typing import Any, Callable, Protocol, Sequence

import jax
import numpy as np
from tqdm import tqdm

from mnist_jax import checkpoint, distributed, engine, events, metrics, records
from mnist_jax.errors import Interrupted, UserError
from mnist_jax.workdir import Layout, read_metrics

PIECES_PER_EPOCH = 10


class Trainer(Protocol):
    """What the loop trains. `steps_per_epoch` and `batch_size` shape an epoch; an epoch runs in pieces of about
    `piece_member_steps` steps of one member, counted over the `members_per_device` members each device trains.
    `members` is a population's members ({setting: value} each; None for one model)."""

    label: str
    steps_per_epoch: int
    batch_size: int
    piece_member_steps: int
    members_per_device: int
    members: Sequence[dict] | None

    def init(self) -> Any:
        """The initial state."""

    def abstract(self) -> Any:
        """The state's shapes, dtypes and shardings, to restore a checkpoint into."""

    def order(self, state) -> jax.Array:
        """The batch order of the epoch after `state.epoch`, a compiled program (called once an epoch)."""

    def piece(self, state, order, length: int) -> Callable:
        """The compiled program `(state, order, first) -> (state, {"loss_sum", "correct"})` that runs `length` steps
        of the epoch from its step `first` (`state` and `order` give the shapes)."""

    def evaluate(self, state) -> dict:
        """{split: {metric: value}} for the held-out splits."""

    def learning_rate(self, epoch: int) -> Any:
        """The learning rate (one per member) of that epoch's last step."""

    def describe(self, row: dict) -> str:
        """The line printed after each epoch."""

    def board_runs(self) -> list[tuple[str, dict]]:
        """(TensorBoard run name, hparams) of each member."""


@dataclasses.dataclass
class Fitted:
    state: Any
    rows: list[dict]
    finished_before: bool  # the workdir held a finished run: nothing was trained


def pieces(steps: int, members: int, member_steps: int, start: int = 0) -> list[tuple[int, int]]:
    """(first step, length) of each piece of an epoch of `members` members (on one device): at least PIECES_PER_EPOCH
    of them (fewer only for an epoch of fewer steps), more where that keeps a piece to about `member_steps` steps of
    one member; of one length where one divides the epoch (up to 1.5 times as many pieces), else of two, so that one
    or two programs are compiled. From step `start` on: an epoch
    resumed where another plan stopped it (on another number of devices) first runs to this plan's next boundary."""
    count = max(PIECES_PER_EPOCH, math.ceil(steps * members / member_steps))
    length = max(1, steps // count)
    # where a length down to 2/3 of that divides the epoch, all pieces are of it: one program to compile, not two
    length = next((n for n in range(length, max(1, 2 * length // 3) - 1, -1) if steps % n == 0), length)
    bounds = [*range(0, steps, length), steps]
    return [(max(first, start), end - max(first, start)) for first, end in zip(bounds, bounds[1:]) if end > start]


def fit(layout: Layout, trainer: Trainer, epochs: int, meta: dict, scheduler: Any = None) -> Fitted:
    """Trains `trainer` from its latest checkpoint in `layout` to `epochs`, one metrics row per epoch.

    A `scheduler` (mnist_jax.schedulers) acts on a population after each epoch's row: `after_epoch(epoch, row,
    previous row, state) -> (state, reshaped)` may change the row's entries, the state and which members train
    (`reshaped`: the pieces are compiled again); its `record()` is saved with each checkpoint and given back to its
    `restore(record)` on resume.

    Every process of a multi-process run calls this; process 0 alone writes metrics.jsonl and TensorBoard events and
    draws the progress bar (the others' rows hold only the epochs they trained).
    """
    manager = checkpoint.open_manager(layout.checkpoints, clean=True)  # drops what a lost save left
    board = None
    try:
        start, state, rows, saved = _resume(layout, manager, trainer)
        if scheduler is not None and "schedule" in saved:
            scheduler.restore(saved["schedule"])
        if start >= epochs:
            return Fitted(state, rows, True)
        if distributed.is_primary():  # drops damaged rows and those of epochs whose checkpoint was lost
            records.write_rows(layout.metrics, rows)
            changing = scheduler.changing if scheduler else ()  # hyperparameters that change as it trains (PBT)
            board = _writing_events(layout, lambda: events.Board(layout.root, trainer.board_runs(), start + 1,
                                                                 changing))
        state, place = _resume_place(layout, trainer, start, epochs, state)
        plan = lambda done=0: pieces(trainer.steps_per_epoch, trainer.members_per_device,  # noqa: E731
                                     trainer.piece_member_steps, done)
        programs = _compile(trainer, state, plan())
        with _Progress(trainer, epochs, start) as progress, _StopRequests() as stop:
            for epoch in range(start + 1, epochs + 1):
                started = time.time()
                state, sums = _run_epoch(layout, trainer, programs, plan, state, epoch, place, progress, stop)
                place = None
                state = engine.next_epoch(state)
                jax.block_until_ready(state)
                seconds = time.time() - started  # compiling is not in it: the compile line gives its time
                row = _row(trainer, epoch, sums, state, seconds)
                reshaped = False
                if scheduler is not None:
                    state, reshaped = scheduler.after_epoch(epoch, row, rows[-1] if rows else None, state)
                rows.append(row)
                with progress.closed_on_error():
                    _save_epoch(manager, layout, board, epoch, state, row,
                                meta if scheduler is None else {**meta, "schedule": scheduler.record()})
                if distributed.is_primary() and layout.interrupted.exists():  # that epoch is whole now
                    shutil.rmtree(layout.interrupted, ignore_errors=True)
                progress.write(trainer.describe(row))
                if epoch < epochs and stop.requested():
                    progress.close()
                    raise Interrupted(f"interrupted after epoch {epoch}, which is saved: run the same command to "
                                      "resume")
                if reshaped and epoch < epochs:  # fewer members train from here on: their own programs
                    programs = _compile(trainer, state, plan())
        manager.wait_until_finished()
        if board is not None:
            _writing_events(layout, board.finish)
    finally:
        manager.close()
        if board is not None:
            board.close()
    return Fitted(state, rows, False)


def _resume(layout: Layout, manager, trainer: Trainer) -> tuple[int, Any, list[dict], dict]:
    """(epochs done, state, their metrics rows on process 0, what was saved with the state) from the latest
    checkpoint, or a fresh start."""
    start = manager.latest_step() or 0
    state, saved = checkpoint.restore(manager, start, trainer.abstract()) if start else (trainer.init(), {})
    rows = read_metrics(layout.metrics, start) if distributed.is_primary() else []
    return start, state, rows, saved


def _resume_place(layout: Layout, trainer: Trainer, start: int, epochs: int, state) -> tuple[Any, dict | None]:
    """The state at the place inside epoch `start + 1` where a launch was stopped, if it was; says where it resumes."""
    place = None
    if layout.interrupted.exists():
        partial = checkpoint.open_partial(layout.interrupted, clean=True)
        try:
            if partial.latest_step() == start + 1:
                state, place = checkpoint.restore(partial, start + 1, trainer.abstract())
        finally:
            partial.close()
    if place is not None:
        print(f"resuming {layout.root} in epoch {start + 1} after step {place['next_step']} of "
              f"{trainer.steps_per_epoch}")
    elif start:
        print(f"resuming {layout.root} after epoch {start} of {epochs}")
    return state, place


def _compile(trainer: Trainer, state, plan: list[tuple[int, int]]):
    """The compiled program of each piece length (the batch order's too); says how long they took."""
    started = time.time()
    example = trainer.order(state)
    programs = {length: trainer.piece(state, example, length) for length in sorted({n for _, n in plan})}
    seconds = time.time() - started
    print(f"compiled the epoch's {len(plan)} pieces in {seconds:.1f} s on {jax.default_backend()} (not counted in the "
          "epochs' seconds)")
    return programs


def _run_epoch(layout: Layout, trainer: Trainer, programs: dict, plan, state, epoch: int,
               place: dict | None, progress: "_Progress", stop: "_StopRequests"):
    """Epoch `epoch` in pieces, from the stopped `place` if there is one: (state, its summed loss and correct
    predictions). A stop request at a boundary inside it saves the place and raises Interrupted."""
    sums, done = {"loss_sum": 0.0, "correct": 0.0}, 0
    if place is not None:
        sums = {k: np.asarray(place[k], np.float64) for k in sums}
        done = place["next_step"]
        progress.skip(done)
    epoch_order = trainer.order(state)
    for first, length in plan(done):
        state, piece = programs[length](state, epoch_order, np.int32(first))
        piece = distributed.to_host(piece)
        sums = {k: sums[k] + np.asarray(piece[k], np.float64) for k in sums}
        progress.advance(epoch, first, length)
        if first + length < trainer.steps_per_epoch and stop.requested():
            progress.close(leave=False)
            _save_place(layout, epoch, state, sums, first + length)
            raise Interrupted(f"interrupted in epoch {epoch} after step {first + length} of "
                              f"{trainer.steps_per_epoch}, which is saved: run the same command to resume from there")
    return state, sums


def _row(trainer: Trainer, epoch: int, sums: dict, state, seconds: float) -> dict:
    train = metrics.epoch_means(sums, trainer.steps_per_epoch, trainer.batch_size)
    by_split, diverged = distributed.to_host((trainer.evaluate(state), state.diverged))
    images = trainer.steps_per_epoch * trainer.batch_size * len(trainer.members or [None])
    return metrics.make_row(epoch, {"train": train, **by_split}, trainer.learning_rate(epoch), diverged, seconds,
                            images, trainer.members)


def _save_epoch(manager, layout: Layout, board: events.Board | None, epoch: int, state, row: dict,
                meta: dict) -> None:
    """Process 0 (the one with a board) writes the metrics row and the TensorBoard events; all save the checkpoint."""
    metric, score = metrics.selection_score(row)
    try:
        if board is not None:
            records.append_row(layout.metrics, row)
            board.write(row)
        checkpoint.save(manager, epoch, state, {**meta, "epoch": epoch, "selected_by": {metric: score}},
                        {checkpoint.BEST_METRIC: score})
    except Exception as e:  # Orbax reports a full disk as ValueError, files as OSError
        checkpoint.discard_partial(manager, epoch)
        raise UserError(f"could not save epoch {epoch} in {layout.root} ({records.os_reason(e)}): {records.fix_for(e)}, "
                        f"then run the same command to resume after epoch {epoch - 1}") from None


def _save_place(layout: Layout, epoch: int, state, sums: dict, next_step: int) -> None:
    partial = checkpoint.open_partial(layout.interrupted)
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


def _writing_events(layout: Layout, write: Callable):
    try:
        return write()
    except OSError as e:
        raise UserError(f"could not write TensorBoard events in {layout.root} ({records.os_reason(e)}): "
                        f"{records.fix_for(e)}, then run the same command") from None


class _Progress:
    """Process 0's progress: a bar on a terminal; redirected to a file, a plain line each tenth of an epoch."""

    def __init__(self, trainer: Trainer, epochs: int, start: int):
        self._steps, self._epochs, self._label = trainer.steps_per_epoch, epochs, trainer.label
        primary = distributed.is_primary()
        self._plain = primary and not sys.stderr.isatty()
        self._bar = tqdm(total=epochs * self._steps, initial=start * self._steps, unit="step", desc=self._label,
                         file=sys.stderr, dynamic_ncols=True, disable=not primary or self._plain)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(leave=exc[0] is None)

    def skip(self, steps: int) -> None:
        """Steps done before this launch, in the epoch it resumes."""
        self._bar.update(steps)

    def advance(self, epoch: int, first: int, length: int) -> None:
        """Steps `first` .. `first + length` of `epoch` are done."""
        self._bar.update(length)
        tenths = lambda step: PIECES_PER_EPOCH * step // self._steps  # noqa: E731
        if self._plain and tenths(first + length) > tenths(first):
            done = (epoch - 1) * self._steps + first + length
            print(f"{self._label}: epoch {epoch}, step {first + length}/{self._steps} "
                  f"({done}/{self._epochs * self._steps} in all)", file=sys.stderr, flush=True)

    def write(self, line: str) -> None:
        self._bar.write(line)

    @contextlib.contextmanager
    def closed_on_error(self):
        try:
            yield
        except BaseException:
            self.close(leave=False)
            raise

    def close(self, leave: bool = True) -> None:
        self._bar.leave = self._bar.leave and leave
        self._bar.close()


class _StopRequests:
    """Ctrl-C and SIGTERM become a request to stop at the next piece boundary; a second Ctrl-C stops at once.

    A watcher thread hears the signals too (signal.set_wakeup_fd), since Python's handlers run only when the main
    thread does: if no boundary is reached within `grace` seconds of a request (the process is stuck in native code,
    e.g. an allocation that never returns), or a second Ctrl-C is not acted on within seconds, it ends the process
    itself with one line.
    """

    GRACE = 10.0  # seconds; at least three times the longest gap between boundaries seen so far

    def __init__(self):
        self.signal = None
        self._previous = {}
        self._boundaries, self._last_boundary, self._longest_gap = 0, time.monotonic(), 0.0
        self._pipe = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._request)
            self._pipe = os.pipe()
            os.set_blocking(self._pipe[1], False)
            self._previous_wakeup = signal.set_wakeup_fd(self._pipe[1], warn_on_full_buffer=False)
            threading.Thread(target=self._watch, args=(self._pipe[0],), daemon=True).start()
        return self

    def _request(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._pipe is not None:
            signal.set_wakeup_fd(self._previous_wakeup)
            os.close(self._pipe[1])  # ends the watcher, which closes the read end

    def requested(self) -> bool:
        """Whether to stop, agreed by every process (process 0's word counts). Called at each boundary."""
        now = time.monotonic()
        self._longest_gap = max(self._longest_gap, now - self._last_boundary)
        self._boundaries, self._last_boundary = self._boundaries + 1, now
        return distributed.primary_says(self.signal is not None)

    def _watch(self, read_end: int) -> None:
        requested_at, boundaries_then, interrupts = None, 0, 0
        try:
            while True:
                ready, _, _ = select.select([read_end], [], [], 0.5)
                if ready:
                    received = os.read(read_end, 64)
                    if not received:
                        return
                    for signum in received:
                        if signum in (signal.SIGINT, signal.SIGTERM) and requested_at is None:
                            requested_at, boundaries_then = time.monotonic(), self._boundaries
                        interrupts += signum == signal.SIGINT
                    if interrupts >= 2:
                        time.sleep(3.0)  # the main thread's KeyboardInterrupt, where it can run, ends it cleanly
                        self._abandon("a second Ctrl-C")
                grace = max(self.GRACE, 3 * self._longest_gap)
                if requested_at is not None and self._boundaries == boundaries_then and \
                        time.monotonic() - requested_at > grace:
                    self._abandon(f"no step finished within {grace:.0f} s of the request, so the process was stuck "
                                  "(often memory that cannot be had: lower --hidden, --batch-size or --vmap-chunk)")
        finally:
            os.close(read_end)

    @staticmethod
    def _abandon(why: str) -> None:
        print(f"interrupted: {why}; the place inside this epoch is not saved, the same command resumes from the last "
              "saved epoch", file=sys.stderr, flush=True)
        os._exit(130)
