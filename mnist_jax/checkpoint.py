"""Orbax checkpoints of a training state: one step per epoch, the latest few and the best kept.

The state is restored against an abstract target that carries this process's shardings, so a checkpoint written
on a TPU or GPU restores on a CPU, and a sweep's stacked state restores onto whatever mesh it runs on now.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from mnist_jax import distributed
from mnist_jax.errors import UserError, first_line

# The score each step is saved with (validation accuracy, or the epoch where there is no validation split: see
# metrics.selection_score); the best step is the one with the highest.
BEST_METRIC = "selection"


def open_manager(directory: str | os.PathLike, keep_latest: int = 3, clean: bool = False) -> ocp.CheckpointManager:
    """A manager that keeps the latest `keep_latest` steps plus the best by its selection score; with `clean` (a
    launch that trains, holding the workdir), first removes what saves that never finished left (`discard_lost`).

    Saves are synchronous: a checkpoint takes a fraction of an epoch to write, and an async save running beside the
    next epoch slowed that epoch far more on a 2-core CPU (docs/performance.md).
    """
    if clean:
        discard_lost(directory)
    best = lambda metrics: metrics[BEST_METRIC]  # noqa: E731
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy(
            [policies.LatestN(keep_latest), policies.BestN(get_metric_fn=best, n=1)]),
        best_fn=best, best_mode="max", create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options, item_names=("state", "meta"))


def open_partial(directory: str | os.PathLike, clean: bool = False) -> ocp.CheckpointManager:
    """A manager for the one place inside an epoch where a run was stopped (step = that epoch); `clean` as for
    open_manager."""
    if clean:
        discard_lost(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options, item_names=("state", "meta"))


def discard_lost(directory: str | os.PathLike) -> None:
    """Removes the temporary folders (`<step>.orbax-checkpoint-tmp*`) of saves that never finished, e.g. of a process
    killed or a peer lost mid-save; the steps themselves are untouched. Process 0 does it for all: the workdir is
    shared, and no save is under way when a launch opens it."""
    if distributed.is_primary():
        for partial in Path(directory).glob("*.orbax-checkpoint-tmp*"):
            shutil.rmtree(partial, ignore_errors=True)


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict, metrics: dict) -> None:
    """Saves `state` and its JSON metadata as step `step`; `metrics` rank it for the best-kept policy.

    A failed write raises here, for the caller to say in one line; what Orbax's and TensorStore's threads print about
    it meanwhile (a traceback each) is dropped. What a save that succeeds prints still reaches stderr.
    """
    with distributed.exchange(f"saving checkpoint {step}"), _quiet_unless_ok():
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                     metrics={k: float(v) for k, v in metrics.items()})


@contextlib.contextmanager
def _quiet_unless_ok():
    """Holds back stderr and the absl and asyncio loggers for the block: replayed if it succeeds, dropped if it
    raises. Reports of calls into Orbax's closed event loop are dropped from the start of the block
    (`_drop_late_reports`): a failing write's TensorStore threads make them while the failure is on its way, and one
    still being printed when the block ends would otherwise finish after the caller's one-line error. After a failure
    the two loggers stay quiet, those reports stay dropped, and so do the warnings of the write's abandoned
    coroutines: they report the same failure again later, while the caller is saying it in one line and ending."""
    sys.stderr.flush()
    saved = os.dup(2)
    loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
    levels = [logger.level for logger in loggers]
    hooks = _drop_late_reports()
    failed = False
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
        try:
            yield
        except BaseException:
            failed = True
            # The write's coroutines that never ran are reported when the interpreter ends: the same failure again.
            warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited", category=RuntimeWarning)
            gc.collect()
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if not failed:
                for logger, level in zip(loggers, levels):
                    logger.setLevel(level)
                sys.unraisablehook, threading.excepthook, sys.excepthook = hooks
                held.seek(0)
                text = held.read().decode(errors="replace")
                if text:
                    sys.stderr.write(text)


def _closed_loop(error: BaseException | None) -> bool:
    return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


def _drop_late_reports() -> tuple:
    """Drops the reports of 'RuntimeError: Event loop is closed', whichever hook Python reports them with (an
    unraisable exception, one in a thread, one printed from native code), until the hooks it returns are put back:
    once a save fails, the abandoned write's TensorStore threads go on calling back into Orbax's event loop, now
    closed, each with a traceback. Every other error is reported as before."""
    hooks = unraisable, in_thread, uncaught = sys.unraisablehook, threading.excepthook, sys.excepthook

    def unraisable_hook(report):
        if not _closed_loop(report.exc_value):
            unraisable(report)

    def thread_hook(report):
        if not _closed_loop(report.exc_value):
            in_thread(report)

    def uncaught_hook(kind, error, traceback):
        if not _closed_loop(error):
            uncaught(kind, error, traceback)

    sys.unraisablehook, threading.excepthook, sys.excepthook = unraisable_hook, thread_hook, uncaught_hook
    return hooks


def discard_partial(manager: ocp.CheckpointManager, step: int) -> None:
    """Removes what a failed save of `step` left (its temporary folder), giving back the space it took."""
    for partial in Path(manager.directory).glob(f"{step}.orbax-checkpoint-tmp*"):
        shutil.rmtree(partial, ignore_errors=True)


def with_sharding(abstract: Any, sharding: jax.sharding.Sharding) -> Any:
    """Puts `sharding` on every leaf of an abstract (ShapeDtypeStruct) tree."""
    return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), abstract)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores step `step` into the structure, dtypes and shardings of `abstract_state`."""
    try:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types for a damaged step; the user needs which step it was
        reason = first_line(e, 200)
        raise UserError(f"checkpoint step {step} in {manager.directory} is corrupted ({reason}): delete "
                        f"{Path(manager.directory) / str(step)} to resume from the step before, or use --fresh") from None
    return restored["state"], restored["meta"]


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict:
    """The JSON metadata of one step, without touching its arrays."""
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
