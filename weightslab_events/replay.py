"""Feeding a recorded event log through fresh, isolated buses, one run at a time.

Replay touches no global state, no model and no file: it builds its own :class:`Bus`, connects
the built-in hashing and checkpointing handlers in dry mode (they decide, nothing is written)
plus the caller's handlers, and dispatches the recorded *input* events. Events the built-in
handlers produce (hash changes, checkpoint decisions and outcomes) are not fed back; they are
made anew, which is what a test compares with the recording.

A log holds several runs (a crash and a restart, a rerun). Each live run started with fresh
handlers, so each is replayed on a fresh bus with fresh built-in handlers, in the log's order;
the caller's handlers see every run. The produced events carry their run's id and
:attr:`ReplayResult.runs` gives each run's own decisions.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .bus import Bus
from .eventlog import group_runs, iter_events, read_events
from .events import Event
from .handlers.checkpointing import CheckpointingHandler
from .handlers.hashing import HashingHandler
from .signals import ALL

__all__ = ["OUTPUT_TYPES", "ReplayResult", "RunReplay", "read_events", "replay"]

#: Event types made by the built-in handlers or the writer, never replayed as input.
OUTPUT_TYPES = frozenset(
    {
        "hash_changed",
        "checkpoint_scheduled",
        "checkpoint_saved",
        "checkpoint_failed",
        "checkpoint_skipped",
        "checkpoint_deleted",
        "checkpoint_corrupted",
        "handler_failed",
        "events_lost",
    }
)


class _Decisions:
    """The views over produced events that a replay and each of its runs offer."""

    events: list[Event]

    @property
    def hashes(self) -> list[str | None]:
        return [e.data["new_hash"] for e in self.events if e.type == "hash_changed"]

    @property
    def hash_changes(self) -> list[tuple[str | None, str | None, str]]:
        return [
            (e.data["old_hash"], e.data["new_hash"], e.data["cause"]) for e in self.events if e.type == "hash_changed"
        ]

    @property
    def checkpoints(self) -> list[tuple[str, int, str]]:
        """``(hash, step, reason)`` of each ``checkpoint_scheduled`` decision."""
        return [(e.data["hash"], e.step, e.data["reason"]) for e in self.events if e.type == "checkpoint_scheduled"]

    def of_type(self, type: str) -> list[Event]:
        return [e for e in self.events if e.type == type]


@dataclass
class RunReplay(_Decisions):
    """One run's part of a replay: its id, its number in the log (from 1), what it produced."""

    index: int
    id: str
    events: list[Event] = field(default_factory=list)
    #: ``events_lost`` records of this run: the log has a gap, so decisions may differ after it.
    gaps: list[Event] = field(default_factory=list)


@dataclass
class ReplayResult(_Decisions):
    """What a replay produced: every event of every run, and each run apart in :attr:`runs`."""

    events: list[Event] = field(default_factory=list)
    runs: list[RunReplay] = field(default_factory=list)

    @property
    def gaps(self) -> list[Event]:
        return [gap for run in self.runs for gap in run.gaps]


Handlers = Iterable[Callable[[Event], Any]] | Mapping[str, Callable[[Event], Any]]


def replay(
    source: str | os.PathLike[str] | Iterable[Event],
    handlers: Handlers = (),
    *,
    clock: Callable[[], float] | None = None,
    checkpoint_frequency: int | None = None,
    builtin: bool = True,
    strict: bool = False,
) -> ReplayResult:
    """Replay a log (a path or events) and return what it produced, run by run.

    ``handlers`` is a list of handlers for every event, or a mapping of signal name to handler.
    ``clock`` stamps the produced events (a fake clock makes results fully deterministic).
    """
    recorded = iter_events(source) if isinstance(source, (str, os.PathLike)) else source
    routes = list(handlers.items() if isinstance(handlers, Mapping) else ((ALL, h) for h in handlers))
    result = ReplayResult()
    for run_log in group_runs(recorded):
        run = RunReplay(index=run_log.index, id=run_log.id)
        result.runs.append(run)
        bus = Bus(strict=strict, clock=clock or (lambda: 0.0))
        bus.run = run_log.id
        bus.connect(ALL, run.events.append, group="sink")
        bus.connect(ALL, result.events.append, group="sink")
        builtins: list[Any] = []
        if builtin:
            builtins = [HashingHandler().connect(bus), CheckpointingHandler(checkpoint_frequency).connect(bus)]
        for signal, handler in routes:
            bus.connect(signal, handler)
        try:
            for event in run_log.events:
                if event.type == "events_lost":
                    run.gaps.append(event)
                if event.type in OUTPUT_TYPES:
                    continue
                bus.state.step = event.step
                bus.emit(event.type, src=event.src, step=event.step, exp=bus.state.exp, **event.to_dict()["data"])
        finally:
            bus.wait_handlers()
            for handler in builtins:
                handler.close()
            bus.close()
    return result
