"""Every event -> one JSON line in ``root/logs/events.jsonl``.

The handler only appends the event to a deque; a dedicated thread wakes every
``WRITE_INTERVAL`` seconds (or when asked to flush), encodes and writes what has queued up, and
flushes. Encoding and writing a line on the training thread cost about 20 us a step in a real
loop (cold caches after backward), most of the instrumentation's cost; waking a thread for every
event costs even more (the GIL hand-off); an append costs well under a microsecond.

A crash therefore loses at most the lines of the last few milliseconds and leaves at most a torn
last line, which the reader skips with a warning. ``seq`` orders lines; ``flush()`` waits until
everything queued before it is written.
"""

from __future__ import annotations

import threading
from collections import deque
from pathlib import Path
from typing import IO

from weightslab_events.bus import Bus, Subscription
from weightslab_events.events import Event
from weightslab_events.signals import ALL

__all__ = ["EventLogHandler", "WRITE_INTERVAL"]

WRITE_INTERVAL = 0.05


class EventLogHandler:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._pending: deque[Event] = deque()
        self._wake = threading.Event()
        self._written = threading.Condition()
        self._batches = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._file: IO[str] | None = None
        self._subscription: Subscription | None = None

    def connect(self, bus: Bus) -> EventLogHandler:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        self._thread = threading.Thread(target=self._run, name="wle-event-log", daemon=True)
        self._thread.start()
        self._subscription = bus.connect(ALL, self.on_event, group="sink")
        return self

    def on_event(self, event: Event) -> None:
        self._pending.append(event)

    def _run(self) -> None:
        assert self._file is not None
        file = self._file
        while True:
            self._wake.wait(WRITE_INTERVAL)
            self._wake.clear()
            stopping = self._stopping
            batch = []
            while self._pending:
                batch.append(self._pending.popleft())
            if batch:
                # Threads emit concurrently; within a batch, lines go out in seq order.
                batch.sort(key=lambda event: event.seq)
                file.write("".join(event.to_json() + "\n" for event in batch))
                file.flush()
            with self._written:
                self._batches += 1
                self._written.notify_all()
            if stopping:
                return

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event queued before this call is written; ``False`` on timeout."""
        if self._thread is None or not self._thread.is_alive():
            return True
        with self._written:
            target = self._batches + 2
            self._wake.set()
            return self._written.wait_for(lambda: self._batches >= target or not self._thread, timeout)

    def close(self) -> None:
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None
        if self._thread is not None:
            self._stopping = True
            self._wake.set()
            self._thread.join()
            self._thread = None
        if self._file is not None:
            self._file.close()
            self._file = None
