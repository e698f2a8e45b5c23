"""Reading the JSON-lines event log: one ordered history across runs.

The order, and why: every process numbers its events from 1 (``seq``), so ``seq`` alone repeats
after a restart. The log's total order is therefore **(run, seq)**: runs in the order of their
first line in the file, which is their start order, and one run's events by ``seq``. Appending a
new run never moves an earlier event, so the order is stable across any number of restarts, and
two processes writing at once cannot interleave each other's histories. Logs written before
runs existed (format v1, no ``run``) are split into runs at each ``started`` event or wherever
``seq`` starts again; those runs are named ``v1-1``, ``v1-2``, ...

Compact blocks (:mod:`.compactlog`) are expanded into the events they stand for, so readers see
every ``step`` and scheduler move.

Damage: a crash can leave the last line half-written: it is skipped with a warning, because
everything before it is intact (the writer sets such a piece aside before appending, so it never
ends up mid-file). A broken line *before* the end cannot come from a crash, so it is an error
that names the file and line. An unknown format version is an error too.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .compactlog import BlockError, Shape, block_shapes, expand_block
from .events import Event

__all__ = [
    "EventLogError",
    "RunLog",
    "follow_events",
    "group_runs",
    "iter_events",
    "name_v1_runs",
    "order_events",
    "read_events",
    "read_events_partial",
    "read_runs",
]

log = logging.getLogger("weightslab_events")


class EventLogError(ValueError):
    """The event log cannot be read; the message names the file and line."""


def _events_of_line(line: str, path: Path, number: int, tables: dict[Any, list[Shape]]) -> list[Event]:
    """The events of one line; ``tables`` holds each run's last block shape table."""
    record = json.loads(line)
    try:
        if isinstance(record, dict) and "compact" in record:
            shapes = block_shapes(record, tables.get(record.get("run")))
            events = list(expand_block(record, shapes))
            tables[record.get("run")] = shapes
            return events
        if not isinstance(record, dict):
            raise ValueError("a log line must hold a JSON object")
        return [Event.from_dict(record)]
    except (KeyError, ValueError, TypeError, BlockError) as error:
        raise EventLogError(f"{path}, line {number}: {error}") from None


def iter_events(path: str | os.PathLike[str]) -> Iterator[Event]:
    """Every event in file order (blocks expanded); see :func:`read_events` for the log's order."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    except FileNotFoundError:
        raise EventLogError(f"event log {path} does not exist") from None
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    tables: dict[Any, list[Shape]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            events = _events_of_line(line, path, number, tables)
        except json.JSONDecodeError as error:
            if number - 1 == last:
                log.warning("skipping the torn last line %d of %s (a crash mid-write): %s", number, path, error)
                return
            raise EventLogError(f"{path}, line {number}: not valid JSON ({error})") from None
        yield from events


def name_v1_runs(events: Iterable[Event]) -> Iterator[Event]:
    """Give events without a run id the id of the v1 run they belong to (see the module doc)."""
    count, previous_seq = 0, None
    for event in events:
        if event.run is not None:
            yield event
            continue
        if count == 0 or event.type == "started" or (previous_seq is not None and event.seq <= previous_seq):
            count += 1
        previous_seq = event.seq
        yield dataclasses.replace(event, run=f"v1-{count}")


def order_events(events: Iterable[Event]) -> list[Event]:
    """Events in the log's total order: runs by first appearance, then ``seq`` within a run."""
    by_run: dict[str, list[Event]] = {}
    for event in name_v1_runs(events):
        by_run.setdefault(event.run or "", []).append(event)
    ordered: list[Event] = []
    for run_events in by_run.values():
        ordered.extend(sorted(run_events, key=lambda e: e.seq))
    return ordered


def read_events(path: str | os.PathLike[str]) -> list[Event]:
    """Every event of a log, in the log's total order (runs in start order, ``seq`` within)."""
    return order_events(iter_events(path))


def read_events_partial(path: str | os.PathLike[str]) -> tuple[list[Event], EventLogError | None]:
    """The events before any damage, in the log's order, and the damage (``None`` if none).

    For tools that show what they can of a damaged log and then say where it broke.
    """
    events: list[Event] = []
    try:
        for event in iter_events(path):
            events.append(event)
    except EventLogError as error:
        return order_events(events), error
    return order_events(events), None


@dataclass
class RunLog:
    """One run's part of the log: who it was, what it resumed, its events in order."""

    index: int
    id: str
    events: list[Event] = field(default_factory=list)

    def _first(self, type: str) -> Event | None:
        return next((e for e in self.events if e.type == type), None)

    @property
    def started(self) -> Event | None:
        return self._first("started")

    def _started_field(self, name: str) -> Any:
        started = self.started
        return started.data.get(name) if started is not None else None

    @property
    def pid(self) -> int | None:
        return self._started_field("pid")

    @property
    def host(self) -> str | None:
        return self._started_field("host")

    @property
    def argv(self) -> list[str] | None:
        argv = self._started_field("argv")
        return list(argv) if argv is not None else None

    @property
    def started_at(self) -> str | None:
        return self._started_field("started")

    @property
    def resumed(self) -> Event | None:
        """The run's ``resumed`` event, if it resumed from a checkpoint."""
        return self._first("resumed")

    @property
    def resumed_from_run(self) -> str | None:
        resumed = self.resumed
        return resumed.data.get("from_run") if resumed is not None else None

    @property
    def resumed_hash(self) -> str | None:
        resumed = self.resumed
        return resumed.data.get("hash") if resumed is not None else None

    @property
    def resumed_step(self) -> int | None:
        resumed = self.resumed
        return resumed.step if resumed is not None else None

    @property
    def last_step(self) -> int:
        return max((e.step for e in self.events), default=0)

    @property
    def closed(self) -> bool:
        """True when the run reached ``close()`` (a crashed run did not)."""
        return self._first("closing") is not None


def group_runs(events: Iterable[Event]) -> list[RunLog]:
    """Events (in the log's order) grouped into runs, numbered from 1."""
    runs: dict[str, RunLog] = {}
    for event in order_events(events):
        key = event.run or ""
        if key not in runs:
            runs[key] = RunLog(index=len(runs) + 1, id=key)
        runs[key].events.append(event)
    return list(runs.values())


def read_runs(path: str | os.PathLike[str]) -> list[RunLog]:
    """The log's runs in start order, each with its events in ``seq`` order."""
    return group_runs(iter_events(path))


def follow_events(
    path: str | os.PathLike[str], *, interval: float = 0.2, stop: Callable[[], bool] | None = None
) -> Iterator[Event]:
    """Every event from the start of the log, then each one appended, in file order.

    Only complete lines are read, so a line being written is picked up once it is whole. A line
    that cannot be read is skipped with a warning: following must not end on one bad line.
    """
    path = Path(path)
    with open(path, encoding="utf-8", errors="replace") as file:
        buffer, number = "", 0
        tables: dict[Any, list[Shape]] = {}
        while stop is None or not stop():
            chunk = file.readline()
            if not chunk:
                time.sleep(interval)
                continue
            buffer += chunk
            if not buffer.endswith("\n"):
                continue
            line, buffer = buffer, ""
            number += 1
            if not line.strip():
                continue
            try:
                yield from _events_of_line(line, path, number, tables)
            except (json.JSONDecodeError, EventLogError) as error:
                log.warning("skipping line %d of %s: %s", number, path, error)
