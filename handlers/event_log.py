"""Every event -> ``root/logs/events.jsonl``, safely shared by runs, compact, and disk-fault proof.

The handler only appends the event to a deque; a dedicated thread wakes every
``WRITE_INTERVAL`` seconds (or when asked to flush), encodes what has queued up and writes it.
Encoding and writing on the training thread cost about 20 us a step in a real loop; an append
costs well under a microsecond.

Policy, and why:

- **Several processes, one file.** Each batch is written with one ``O_APPEND`` write while
  holding an exclusive ``flock`` on the file, so two live runs never interleave inside a line.
- **Torn tails.** A process killed mid-write leaves a last line without its newline. Before
  anything is appended (at open, and before each batch, since another run may have died since),
  the piece after the last newline is moved to ``events.jsonl.torn-<run id>`` with a warning that
  names it. The torn piece therefore never ends up in the middle of the log.
- **Compact.** Step progress and scheduler moves are gathered into blocks
  (:mod:`weightslab_events.compactlog`): a block is written when another event comes, after
  ``BLOCK_SECONDS`` or ``MAX_BLOCK_EVENTS`` events, on ``flush()`` and on close. So what a crash
  leaves of a run's inputs is always a prefix of them (every decision is on disk after the steps
  that caused it, and replay of a crashed run reproduces what it logged); it loses at most the
  steps after the last other event. ``OUTCOMES`` (a save's result, from the writer thread) are
  inputs of nothing, so they are written at once without ending the block. Live subscribers are
  not affected: they get every event from the bus.
- **Write errors** (a full disk) never stop the thread. The batch is kept (the file is cut back
  to where the failed write began, so no half batch stays) and written again every
  ``RETRY_SECONDS`` (and on ``flush()``), so logging resumes when space returns. At most
  ``MAX_UNWRITTEN`` events are kept meanwhile; beyond that new ones are dropped and counted.
  When writing works again the log gets an ``events_lost`` record (count, seq range, error), and
  ``close()`` warns with the count, which :attr:`EventLogHandler.lost` also holds.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from weightslab_events.bus import Bus, Subscription
from weightslab_events.compactlog import Block, Shape, is_compactable
from weightslab_events.events import Event
from weightslab_events.signals import ALL

__all__ = [
    "BLOCK_SECONDS",
    "EventLogHandler",
    "MAX_BLOCK_EVENTS",
    "MAX_UNWRITTEN",
    "RETRY_SECONDS",
    "WRITE_INTERVAL",
    "set_aside_torn_tail",
]

log = logging.getLogger("weightslab_events")

WRITE_INTERVAL = 0.05
BLOCK_SECONDS = 10.0
MAX_UNWRITTEN = 20_000
MAX_BLOCK_EVENTS = 4_096
RETRY_SECONDS = 1.0
_TAIL_CHUNK = 1 << 16

Writer = Callable[[int, bytes], int]

#: Reports of what the writer and handlers did: replay never takes them as input, so one may be
#: written before the steps of an open block without breaking a crash's prefix (see the policy).
OUTCOMES = frozenset(
    {
        "checkpoint_saved",
        "checkpoint_failed",
        "checkpoint_skipped",
        "checkpoint_deleted",
        "checkpoint_corrupted",
        "handler_failed",
    }
)


def set_aside_torn_tail(fd: int, log_path: Path, run_id: str | None) -> Path | None:
    """Move a torn last line (no final newline) out of the log; returns where it went.

    The caller holds the log's ``flock``, so no live writer is mid-line.
    """
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return None
    end = size
    while end > 0:
        start = max(0, end - _TAIL_CHUNK)
        chunk = os.pread(fd, end - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            cut = start + newline + 1
            break
        end = start
    else:
        cut = 0
    piece = os.pread(fd, size - cut, cut)
    aside = log_path.with_name(f"{log_path.name}.torn-{run_id or 'unknown'}")
    with open(aside, "ab") as file:
        file.write(piece + b"\n")
        file.flush()
        os.fsync(file.fileno())
    os.ftruncate(fd, cut)
    log.warning(
        "the event log %s ended in a torn line (%d bytes, a crash mid-write); set it aside in %s",
        log_path,
        len(piece),
        aside,
    )
    return aside


class EventLogHandler:
    def __init__(self, path: str | Path, *, run_id: str | None = None, write: Writer = os.write) -> None:
        self.path = Path(path)
        self.run_id = run_id
        self._write = write
        self._pending: deque[Event] = deque()
        self._wake = threading.Event()
        self._written = threading.Condition()
        self._batches = 0
        self._stopping = False
        self._flush_asked = False
        self._thread: threading.Thread | None = None
        self._fd: int | None = None
        self._subscription: Subscription | None = None
        self._block: Block | None = None
        self._block_opened = 0.0
        self._last_shapes: list[Shape] = []
        self._unwritten: list[tuple[str, int, int, int]] = []  # (line, events, first seq, last seq)
        self._unwritten_events = 0
        self._dropped = 0
        self._dropped_seqs: tuple[int, int] | None = None
        self._error: str | None = None
        self._retry_at = 0.0
        #: Events that never reached the log (dropped while writes failed, or unwritten at close).
        self.lost = 0
        #: The last write error, if any write failed.
        self.last_error: str | None = None
        #: Torn pieces this handler set aside.
        self.set_aside: list[Path] = []

    def connect(self, bus: Bus) -> EventLogHandler:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            self._repair_locked()
        except OSError as error:
            log.error("could not set aside the torn tail of %s (retried before each write): %s", self.path, error)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread = threading.Thread(target=self._run, name="wle-event-log", daemon=True)
        self._thread.start()
        self._subscription = bus.connect(ALL, self.on_event, group="sink")
        return self

    def on_event(self, event: Event) -> None:
        self._pending.append(event)

    # -- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(WRITE_INTERVAL)
            self._wake.clear()
            stopping, flushing = self._stopping, self._flush_asked
            self._flush_asked = False
            try:
                self._write_pending(close_block=stopping or flushing)
            except Exception as error:  # never let the log thread die
                log.error("the event log writer failed: %s: %s", type(error).__name__, error)
            with self._written:
                self._batches += 1
                self._written.notify_all()
            if stopping:
                return

    def _write_pending(self, close_block: bool) -> None:
        batch = []
        while self._pending:
            batch.append(self._pending.popleft())
        batch.sort(key=lambda event: event.seq)  # threads emit concurrently
        lines: list[tuple[str, int, int, int]] = []
        for event in batch:
            if event.type in OUTCOMES:
                lines.append((event.to_json() + "\n", 1, event.seq, event.seq))
                continue
            if is_compactable(event):
                if self._block is not None and self._block.count < MAX_BLOCK_EVENTS and self._block.add(event):
                    continue
                self._end_block(lines)
                # While writes fail a block may be dropped, so blocks then carry their own shapes.
                shapes = self._last_shapes if self._error is None else ()
                self._block, self._block_opened = Block(event, shapes), time.monotonic()
                self._block.add(event)
                continue
            self._end_block(lines)
            lines.append((event.to_json() + "\n", 1, event.seq, event.seq))
        if self._block is not None and (close_block or time.monotonic() - self._block_opened >= BLOCK_SECONDS):
            self._end_block(lines)
        if self._unwritten and self._retry_due(close_block):
            self._try_write()  # space may have come back: write what waited before keeping more
        self._keep(lines)
        if self._unwritten and self._retry_due(close_block):
            self._try_write()

    def _retry_due(self, forced: bool) -> bool:
        return self._error is None or forced or time.monotonic() >= self._retry_at

    def _end_block(self, lines: list[tuple[str, int, int, int]]) -> None:
        block, self._block = self._block, None
        if block is not None and block.count:
            self._last_shapes = block.shapes
            lines.append(
                (
                    json.dumps(block.to_record(), separators=(",", ":")) + "\n",
                    block.count,
                    block.first_seq,
                    block.last_seq,
                )
            )

    def _keep(self, lines: list[tuple[str, int, int, int]]) -> None:
        """Queue lines for writing, dropping (and counting) those past the memory bound."""
        for line in lines:
            if self._unwritten_events + line[1] > MAX_UNWRITTEN:
                self._dropped += line[1]
                first = self._dropped_seqs[0] if self._dropped_seqs else line[2]
                self._dropped_seqs = (first, line[3])
                continue
            self._unwritten.append(line)
            self._unwritten_events += line[1]

    def _gap_line(self) -> str:
        assert self._dropped_seqs is not None
        first, last = self._dropped_seqs
        gap = Event(
            type="events_lost",
            seq=first,
            ts=time.time(),
            run=self.run_id,
            src="event_log",
            data={"count": self._dropped, "first_seq": first, "last_seq": last, "error": self._error},
        )
        return gap.to_json() + "\n"

    def _try_write(self) -> None:
        assert self._fd is not None
        text = "".join(line for line, *_ in self._unwritten)
        if self._dropped:
            text += self._gap_line()
        data = text.encode("utf-8")
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            start: int | None = None
            try:
                self._repair_locked()
                start = os.fstat(self._fd).st_size
                written = 0
                while written < len(data):
                    written += self._write(self._fd, data[written:])
            except OSError as error:
                self._failed(error, start)
                return
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        if self._error is not None:
            log.warning("the event log %s is writable again (%d events were lost)", self.path, self._dropped)
        self.lost += self._dropped
        self._unwritten, self._unwritten_events = [], 0
        self._dropped, self._dropped_seqs, self._error = 0, None, None

    def _failed(self, error: OSError, start: int | None) -> None:
        """Cut the log back to where the failed write began, and keep the batch for later."""
        assert self._fd is not None
        if start is not None:
            try:
                os.ftruncate(self._fd, start)
            except OSError:
                pass  # the torn piece is set aside before the next write instead
        if self._error is None:
            reason = "the disk is full" if error.errno == errno.ENOSPC else "the write failed"
            log.error("cannot write the event log %s (%s: %s); keeping events and retrying", self.path, reason, error)
        self._error = self.last_error = f"{type(error).__name__}: {error}"
        self._retry_at = time.monotonic() + RETRY_SECONDS

    def _repair_locked(self) -> None:
        """Set a torn tail aside; the caller holds the log's ``flock``."""
        assert self._fd is not None
        aside = set_aside_torn_tail(self._fd, self.path, self.run_id)
        if aside is not None:
            self.set_aside.append(aside)

    @property
    def unwritten(self) -> int:
        """Events kept in memory because writing failed (at most ``MAX_UNWRITTEN``)."""
        return self._unwritten_events

    # -- waiting and closing ----------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event queued before this call is written; ``False`` on timeout."""
        if self._thread is None or not self._thread.is_alive():
            return True
        with self._written:
            target = self._batches + 2
            self._flush_asked = True
            self._wake.set()
            return self._written.wait_for(lambda: self._batches >= target or not self._thread, timeout)

    def close(self) -> int:
        """Write what is queued, stop the thread; returns how many events never reached the log."""
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None
        if self._thread is not None:
            self._stopping = True
            self._wake.set()
            self._thread.join()
            self._thread = None
        if self._unwritten_events or self._dropped:
            self.lost += self._unwritten_events + self._dropped
            self._unwritten, self._unwritten_events, self._dropped = [], 0, 0
        if self.lost:
            log.warning("the event log %s lost %d events (last error: %s)", self.path, self.lost, self.last_error)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        return self.lost
