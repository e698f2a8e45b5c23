"""Reading the JSON-lines event log.

A crash can leave the last line half-written: it is skipped with a warning, because the run
before it is intact. A broken line *before* the end cannot come from a crash, so it is an error
that names the file and line. An unknown format version is an error too.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from .events import Event

__all__ = ["EventLogError", "iter_events", "read_events"]

log = logging.getLogger("weightslab_events")


class EventLogError(ValueError):
    """The event log cannot be read; the message names the file and line."""


def iter_events(path: str | os.PathLike[str]) -> Iterator[Event]:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise EventLogError(f"event log {path} does not exist") from None
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number - 1 == last:
                log.warning("skipping the torn last line %d of %s (a crash mid-write): %s", number, path, error)
                return
            raise EventLogError(f"{path}, line {number}: not valid JSON ({error})") from None
        try:
            yield Event.from_dict(record)
        except (KeyError, ValueError, TypeError) as error:
            raise EventLogError(f"{path}, line {number}: {error}") from None


def read_events(path: str | os.PathLike[str]) -> list[Event]:
    """Every event of a log, in ``seq`` order."""
    return sorted(iter_events(path), key=lambda e: e.seq)
