"""Feeding a recorded event log through a fresh, isolated bus.

Replay touches no global state, no model and no file: it builds its own :class:`Bus`, connects
the built-in hashing and checkpointing handlers in dry mode (they decide, nothing is written)
plus the caller's handlers, and dispatches the recorded *input* events. Events the built-in
handlers produce (hash changes, checkpoint decisions and outcomes) are not fed back; they are
made anew, which is what a test compares with the recording.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .bus import Bus
from .eventlog import read_events
from .events import Event
from .handlers.checkpointing import CheckpointingHandler
from .handlers.hashing import HashingHandler
from .signals import ALL

__all__ = ["OUTPUT_TYPES", "ReplayResult", "read_events", "replay"]

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
    }
)


@dataclass
class ReplayResult:
    """What a replay produced: every event, the hashes in order, and the save decisions."""

    events: list[Event] = field(default_factory=list)

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
    """Replay a log (a path or events) and return what it produced.

    ``handlers`` is a list of handlers for every event, or a mapping of signal name to handler.
    ``clock`` stamps the produced events (a fake clock makes results fully deterministic).
    """
    events = read_events(source) if isinstance(source, (str, os.PathLike)) else sorted(source, key=lambda e: e.seq)
    bus = Bus(strict=strict, clock=clock or (lambda: 0.0))
    result = ReplayResult()
    bus.connect(ALL, result.events.append, group="sink")
    builtins: list[Any] = []
    if builtin:
        builtins = [HashingHandler().connect(bus), CheckpointingHandler(checkpoint_frequency).connect(bus)]
    routes = handlers.items() if isinstance(handlers, Mapping) else ((ALL, h) for h in handlers)
    for signal, handler in routes:
        bus.connect(signal, handler)
    try:
        for event in events:
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
