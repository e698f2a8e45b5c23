"""When and where ``CheckpointSystem.close()`` runs, and the one deadline it keeps.

Policy, and why:

- One deadline for the whole close: waiting for a snapshot slot, the writer, the async handlers
  each take what is left of ``close_timeout``, never a fresh ``close_timeout`` each, so
  ``close()`` returns within it.
- A ``close()`` called from a sync handler on the training thread (early stopping on a ``step``
  or ``metric`` event) runs once the current event has been handled: run-to-completion means the
  ``closing`` event it emits must come after the event being handled, and only then can the
  checkpointing handler see it and decide the final checkpoint.
- A ``close()`` called from a handler on one of our own threads (the writer, the async loop, the
  failure reporter) runs on a fresh thread: closing waits for those threads, and a thread cannot
  wait for itself. The fresh thread is not a daemon, so the process still waits (within the
  deadline) for the final checkpoint before it exits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .bus import Bus

__all__ = ["Deadline", "OWN_THREAD_PREFIX", "run_close_later"]

#: Every thread this library starts is named with this prefix.
OWN_THREAD_PREFIX = "wle-"


class Deadline:
    """A point in time ``seconds`` from now (``None``: never); ``left()`` is what remains."""

    def __init__(self, seconds: float | None) -> None:
        self._end = None if seconds is None else time.monotonic() + seconds

    def left(self) -> float | None:
        return None if self._end is None else max(0.0, self._end - time.monotonic())


def run_close_later(bus: Bus, close: Callable[[], None]) -> bool:
    """Put off a ``close()`` called from inside a handler (see the policy); ``True`` if put off."""
    own_thread = threading.current_thread().name.startswith(OWN_THREAD_PREFIX)
    if bus.in_async_handler() or (own_thread and bus.dispatching()):
        threading.Thread(target=close, name=f"{OWN_THREAD_PREFIX}close").start()
        return True
    return bus.after_dispatch(close)
