"""TensorBoard event files: one TensorBoard run per trained member: a single run's in its workdir, a sweep member's in
`<workdir>/<member folder>`, so that `tensorboard --logdir checkpoints/` names them `<workdir>` and
`<workdir>/<member folder>`.

Each epoch's metrics row becomes scalars at step = epoch (`train/loss`, `val/accuracy`, ..., `learning_rate`,
`time/epoch_seconds`, `time/images_per_second`; a sweep's timing is the whole sweep's), and each run carries the
hparams summary of its member, so TensorBoard's HParams tab compares members by activation, seed and lr. Events are
written synchronously by the host loop (an error is raised where it can be reported, not lost in a thread), with
tensorboardX's writer, which needs no TensorFlow. Each launch opens a new event file that starts a session at its
first epoch, which makes TensorBoard drop what earlier launches wrote from that epoch on: epochs written before a
crash and trained again appear once.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from tensorboardX import summary
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.proto.summary_pb2 import Summary

from mnist_jax import metrics

TIMING = {"epoch_seconds": "time/epoch_seconds", "images_per_second": "time/images_per_second"}


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """A single run's metrics row as TensorBoard tags and values (None, a non-finite loss, becomes NaN)."""
    tags = {name: name.replace("_", "/", 1) for name in metrics.metric_names(row)}
    tags |= {"learning_rate": "learning_rate", **TIMING}
    return {tag: math.nan if row[name] is None else float(row[name]) for name, tag in tags.items() if name in row}


class Board:
    """The event files of one launch: one writer per member, written once per epoch."""

    def __init__(self, directory: Path, runs: Sequence[tuple[str, Mapping[str, Any]]], first_epoch: int,
                 changing: Sequence[str] = ()):
        """`runs[i]` is member i's (run name, hparams); epochs before `first_epoch` are trained already, and any
        event at `first_epoch` or later is from a launch that stopped before that epoch's checkpoint. The
        hyperparameters in `changing` (population-based training's) are written each epoch too, as
        `hyperparameters/<name>`: the values that epoch trained with."""
        self._writers, self._changing = [], tuple(changing)
        for name, hparams in runs:
            writer, launches = _open(directory, name)
            self._writers.append(writer)
            if not launches:
                # The session's hparams alone, no experiment summary: TensorBoard then builds the experiment from
                # every run's sessions and marks which hparams differ (given one run's experiment, it takes that as
                # everyone's and shows the seed as if all runs shared it).
                _, start, _ = summary.hparams({k: shown(v) for k, v in hparams.items()}, {})
                _write(writer, start, step=0)
            # Every launch starts a session at its first epoch: TensorBoard drops the events of earlier launches from
            # that step on (a launch's first session is no restart to its Python reader, hence one in each launch).
            writer.write_event(Event(wall_time=time.time(), step=first_epoch,
                                     session_log=SessionLog(status=SessionLog.START)))
            writer.flush()

    def write(self, row: Mapping[str, Any]) -> None:
        """One epoch's metrics row (a sweep's: one run per member)."""
        rows = [metrics.member_row(row, i) for i in range(len(row["members"]))] if "members" in row else [row]
        for writer, member_row, entry in zip(self._writers, rows, row.get("members", [row])):
            if metrics.PRUNED in entry and entry[metrics.PRUNED] < row["epoch"]:
                continue  # a member that no longer trains: its curve ends where it stopped
            values = [Summary.Value(tag=tag, simple_value=value) for tag, value in scalars(member_row).items()]
            values += [Summary.Value(tag=f"hyperparameters/{name}", simple_value=float(entry[name]))
                       for name in self._changing]
            _write(writer, Summary(value=values), step=row["epoch"])
            writer.flush()

    def finish(self) -> None:
        """Marks every member's session as finished (the HParams tab's status)."""
        _, _, end = summary.hparams({}, {})
        for writer in self._writers:
            _write(writer, end, step=0)
            writer.flush()

    def close(self) -> None:
        """Closes the files; a failure here was already reported by the write that left data behind."""
        for writer in self._writers:
            with contextlib.suppress(OSError):
                writer.close()


EVENT_FILES = "events.out.tfevents.*"


def shown(value: Any) -> Any:
    """An hparam as the HParams tab shows it well: a whole number as text (it prints numbers as 128.00), so that a
    seed or a batch size reads as itself and groups as a category."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _open(directory: Path, name: str) -> tuple[EventsWriter, int]:
    """A new event file for run `name` ("" for the directory itself), and how many launches wrote there before.
    Files are named by the second they were opened in (TensorBoard reads them in name order); the suffix keeps two
    launches of one second apart."""
    run = directory / name if name else directory
    run.mkdir(parents=True, exist_ok=True)
    launches = len(list(run.glob(EVENT_FILES)))
    return EventsWriter(str(run / "events"), filename_suffix=f".{launches}"), launches


def _write(writer: EventsWriter, piece: Summary, step: int) -> None:
    writer.write_event(Event(wall_time=time.time(), step=step, summary=piece))


def mark_finished(directory: Path, runs: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    """The session-end marks of a finished run whose launch stopped before writing them (a new event file each)."""
    _, _, end = summary.hparams({}, {})
    for name, _ in runs:
        writer, _ = _open(directory, name)
        try:
            _write(writer, end, step=0)
            writer.flush()
        finally:
            with contextlib.suppress(OSError):
                writer.close()
