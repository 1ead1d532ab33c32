"""The files a run leaves, written so that a crash or a full disk can only cut the last row short.

Every JSON file is strict JSON (a non-finite number, which only a diverged run produces, is written as null),
rewrites go to a temporary file that then replaces the old one, and rows are appended one whole line per write.
Reading tolerates what a crash can leave: an incomplete or garbled row is dropped with a one-line warning.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from mnist_jax.errors import UserError, first_line


_OS_REASONS = ("No space left on device", "Read-only file system", "Permission denied", "No such file or directory",
               "Disk quota exceeded", "Not a directory", "File exists", "Is a directory", "Operation not permitted")


def os_reason(error: BaseException) -> str:
    """What went wrong with a file, in the OS's words, from an OSError or from a library's message around one."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error)
    return next((reason for reason in _OS_REASONS if reason in text), first_line(error))


_HINTS = {"No space left on device": "free space", "Disk quota exceeded": "free space or raise the quota",
          "Read-only file system": "write to a writable filesystem", "Permission denied": "make it writable",
          "Operation not permitted": "make it writable", "Not a directory": "move the file that is in the way",
          "File exists": "move the file that is in the way", "Is a directory": "move the folder that is in the way",
          "No such file or directory": "check the path"}


def fix_for(error: BaseException) -> str:
    """What to do about a failed file operation, fitting its reason: free space, make it writable, ..."""
    return _HINTS.get(os_reason(error), "free space or make it writable")


def strict(value: Any) -> Any:
    """`value` with every NaN and infinity replaced by None, so that json.dumps(allow_nan=False) accepts it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def dumps(value: Any, **kwargs) -> str:
    return json.dumps(strict(value), allow_nan=False, **kwargs)


def temporary_of(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_text(path: Path, text: str) -> None:
    """Replaces `path` with `text` (UTF-8) atomically, as write_bytes."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: Path, data: bytes) -> None:
    """Replaces `path` with `data` atomically: readers see the old file or the new one, never a part. A failure is a
    one-line UserError naming `path`, and leaves no temporary file."""
    path = Path(path)
    temporary = temporary_of(path)
    try:
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as e:
        temporary.unlink(missing_ok=True)
        raise UserError(f"could not write {path} ({os_reason(e)}): {fix_for(e)}, then run the same command again") \
            from None


def remove_temporaries(directory: Path) -> None:
    """Removes what write_text calls that were killed left behind in `directory` (.<name>.<pid>.tmp)."""
    for leftover in Path(directory).glob(".*.*.tmp"):
        if leftover.is_file():
            leftover.unlink(missing_ok=True)


def check_writable(directory: Path) -> None:
    """Raises the OSError, naming `directory`, that writing a file in it would: before the work whose result goes
    there."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(directory)) from None


def write_json(path: Path, value: Any) -> None:
    write_text(path, dumps(value, indent=2) + "\n")


def write_rows(path: Path, rows: list[dict]) -> None:
    write_text(path, "".join(dumps(row) + "\n" for row in rows))


def append_row(path: Path, row: dict) -> None:
    """Adds one row as one line; a crash in the middle leaves at most an incomplete last line."""
    with open(path, "a") as f:
        f.write(dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def is_whole_png(path: Path) -> bool:
    """Whether `path` is a PNG written to its end (its signature first, its IEND chunk last)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(-12, os.SEEK_END)
            tail = f.read()
    except OSError:
        return False
    return head == b"\x89PNG\r\n\x1a\n" and tail[4:] == b"IEND\xaeB`\x82"


def read_json_or_none(path: Path) -> Any:
    """A JSON file as `read_json` reads it, or None where it is missing or damaged."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def read_rows(path: Path) -> list[dict]:
    """The rows of a .jsonl file; lines that are not whole JSON objects are dropped, with a warning."""
    path = Path(path)
    if not path.exists():
        return []
    rows, dropped = [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict) and "epoch" in row:
            rows.append(row)
        else:
            dropped.append(number)
    if dropped:
        print(f"warning: {path}: dropped damaged line(s) {', '.join(map(str, dropped))} (an interrupted write); "
              "the epochs they held are trained again if no checkpoint has them", file=sys.stderr)
    return rows


def read_json(path: Path) -> Any:
    """A JSON file the project wrote, or a one-line error naming it if it is damaged."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is damaged ({type(e).__name__}: {e}): restore it from a copy, or start the run "
                        "again with --fresh (which deletes the run)") from None
