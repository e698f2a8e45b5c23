"""One long-lived anyio event-loop thread on which ``async def`` handlers run.

The training thread only submits coroutines and returns at once, so an async handler never
blocks a step. Every submitted task is tracked until it has finished *and* its failure (if any)
has been reported, so ``drain``/``wait`` mean "nothing of mine is still running". Failures are
reported from a separate reporter thread, never from the loop thread: reporting runs sync
handlers, which may themselves wait on the loop, and doing that on the loop thread deadlocks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from typing import Any

import anyio.from_thread

__all__ = ["AsyncRunner"]


class AsyncRunner:
    """Runs coroutine functions on a private event-loop thread, started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stack: ExitStack | None = None
        self._portal: anyio.from_thread.BlockingPortal | None = None
        self._reporter: ThreadPoolExecutor | None = None
        self._pending: set[Future[Any]] = set()
        self._idle = threading.Condition(self._lock)

    def _ensure_started(self) -> anyio.from_thread.BlockingPortal:
        if self._portal is None:
            stack = ExitStack()
            self._portal = stack.enter_context(anyio.from_thread.start_blocking_portal())
            self._reporter = ThreadPoolExecutor(1, thread_name_prefix="wle-async-report")
            self._stack = stack
        return self._portal

    def submit(
        self,
        fn: Callable[..., Any],
        arg: Any,
        on_error: Callable[[BaseException], None],
    ) -> Future[Any]:
        """Start ``fn(arg)`` on the loop; ``on_error`` is called from the reporter thread."""
        with self._lock:
            portal = self._ensure_started()
            reporter = self._reporter
            done: Future[Any] = Future()
            self._pending.add(done)

        def finished(task: Future[Any]) -> None:
            error = None if task.cancelled() else task.exception()
            if error is None:
                self._settle(done)
                return
            assert reporter is not None

            def report() -> None:
                try:
                    on_error(error)
                finally:
                    self._settle(done)

            reporter.submit(report)

        portal.start_task_soon(fn, arg).add_done_callback(finished)
        return done

    def _settle(self, done: Future[Any]) -> None:
        with self._lock:
            self._pending.discard(done)
            done.set_result(None)
            self._idle.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every submitted handler has finished; ``False`` on timeout."""
        with self._lock:
            futures = list(self._pending)
        if not futures:
            return True
        _, not_done = wait(futures, timeout=timeout)
        return not not_done

    def close(self, timeout: float | None = 10.0) -> None:
        """Wait (bounded) for handlers in flight, then stop the loop thread."""
        self.wait(timeout)
        with self._lock:
            stack, self._stack, self._portal = self._stack, None, None
            reporter, self._reporter = self._reporter, None
        if reporter is not None:
            reporter.shutdown(wait=True)
        if stack is not None:
            stack.close()
