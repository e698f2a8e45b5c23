"""Persisting snapshots on a worker thread, with bounded memory and loud failures.

Policy:

- At most ``max_pending`` snapshots exist at once (being copied, queued or being written); each
  owns a :class:`~weightslab_events.snapshot.BufferPool` that is reused by the next snapshot, so
  peak extra host memory stays near ``max_pending`` times the state.
- When all slots are taken, an *optional* save (periodic) is skipped with ``checkpoint_skipped``
  or waits, as the user chose (``when_busy``); a *required* save (fork, reset, final, explicit)
  always waits, because losing it loses an experiment's starting point.
- One worker thread writes, so checkpoints of a hash are committed in the order they were taken.
- A failed write is logged and reported at once (``checkpoint_failed`` with the reason); it is
  also kept so that ``wait()`` and ``close()`` raise a :class:`CheckpointError` naming it. It
  never raises into the training loop.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from .errors import CheckpointError
from .snapshot import BufferPool
from .store import Store

__all__ = ["SaveJob", "Saver"]

log = logging.getLogger("weightslab_events")


@dataclass
class SaveJob:
    """Everything the worker needs to commit one checkpoint."""

    hash: str
    step: int
    reason: str
    payload: dict[str, Any]
    info: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.hash}_step_{self.step:06d} ({self.reason})"


Notify = Callable[..., None]

WRITER_THREAD = "wle-writer"


def _commit_here(store: Store, job: SaveJob) -> dict[str, Any]:
    """A single process writes the whole checkpoint (distributed ranks use their coordinator's commit)."""
    store.prepare(job.hash, job.info)
    return store.commit(job.hash, job.step, job.reason, job.payload, job.metrics)


class Saver:
    """Owns the snapshot slots and the writer thread."""

    def __init__(
        self,
        store: Store,
        notify: Notify,
        *,
        max_pending: int = 1,
        when_busy: str = "block",
        commit: Callable[[Store, SaveJob], dict[str, Any]] | None = None,
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        if when_busy not in ("skip", "block"):
            raise ValueError(f"when_busy must be 'skip' or 'block', got {when_busy!r}")
        self.store = store
        self.when_busy = when_busy
        self._notify = notify
        self._commit = commit or _commit_here
        self._slots: queue.Queue[BufferPool] = queue.Queue()
        for _ in range(max_pending):
            self._slots.put(BufferPool())
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=WRITER_THREAD)
        self._lock = threading.Lock()
        self._futures: dict[Future[None], str] = {}
        self._failures: list[tuple[str, str]] = []
        self._closed = False

    def reserve(self, required: bool, timeout: float | None = None) -> BufferPool | None:
        """A free slot, waiting if the save is required or the user chose to block."""
        if required or self.when_busy == "block":
            try:
                return self._slots.get(timeout=timeout)
            except queue.Empty:
                return None
        try:
            return self._slots.get_nowait()
        except queue.Empty:
            return None

    def release(self, pool: BufferPool) -> None:
        self._slots.put(pool)

    def submit(self, pool: BufferPool, job: SaveJob) -> None:
        """Hand a copied snapshot to the writer; the slot is released once it is written."""
        pool.trim()
        with self._lock:
            if self._closed:
                self.release(pool)
                raise CheckpointError(f"checkpoint system is closed; {job.label} was not written")
            future = self._executor.submit(self._write, pool, job)
            self._futures[future] = job.label
        future.add_done_callback(self._forget)

    def _forget(self, future: Future[None]) -> None:
        with self._lock:
            self._futures.pop(future, None)

    def _write(self, pool: BufferPool, job: SaveJob) -> None:
        try:
            record = self._commit(self.store, job)
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"
            log.warning("checkpoint %s failed: %s", job.label, reason)
            self.record_failure(job.label, reason)
            self._notify("checkpoint_failed", hash=job.hash, step=job.step, reason=job.reason, error=reason)
            return
        finally:
            job.payload = {}
            self.release(pool)
        try:
            self._notify(
                "checkpoint_saved",
                hash=job.hash,
                step=job.step,
                reason=job.reason,
                path=str(self.store.file_of(job.hash, record)),
                size=record["size"],
                sha256=record["sha256"],
            )
        except Exception:
            log.exception("reporting the commit of %s failed (the checkpoint itself is committed)", job.label)

    def pending(self) -> int:
        with self._lock:
            return len(self._futures)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for every submitted write; ``False`` if some are still running at the timeout.

        Called on the writer thread itself (a ``checkpoint_saved`` handler calling
        ``system.wait()``), it returns at once: waiting there would wait for itself forever.
        """
        if threading.current_thread().name.startswith(WRITER_THREAD):
            return False
        with self._lock:
            futures = list(self._futures)
        if not futures:
            return True
        _, not_done = wait(futures, timeout=timeout)
        return not not_done

    def record_failure(self, label: str, reason: str) -> None:
        with self._lock:
            self._failures.append((label, reason))

    def take_failures(self) -> list[tuple[str, str]]:
        with self._lock:
            failures, self._failures = self._failures, []
        return failures

    def raise_failures(self) -> None:
        failures = self.take_failures()
        if failures:
            named = "; ".join(f"{label}: {reason}" for label, reason in failures)
            raise CheckpointError(f"{len(failures)} checkpoint(s) failed: {named}", failures)

    def close(self, timeout: float | None = 60.0) -> list[str]:
        """Flush with a bounded wait; returns the labels of the writes abandoned unfinished."""
        self.flush(timeout)
        with self._lock:
            self._closed = True
            unfinished = [label for f, label in self._futures.items() if not f.done()]
        self._executor.shutdown(wait=not unfinished, cancel_futures=True)
        return unfinished
