"""One long-lived event-loop thread on which ``async def`` handlers run.

The loop is a plain asyncio loop, so handlers may use anyio (``anyio.to_thread``, ``anyio.sleep``)
as well as asyncio. Submitting never waits for the loop (``call_soon_threadsafe``): the training
thread and the writer hand work over and return at once, so an async handler never blocks a step
or a save, not even one that blocks the loop thread by mistake. Every submitted task is tracked
until it has finished *and* its failure (if any) has been reported, so ``drain``/``wait`` mean
"nothing of mine is still running". Failures are reported from a separate reporter thread, never
from the loop thread: reporting runs sync handlers, which may themselves wait on the loop, and
doing that on the loop thread deadlocks.

Waiting from inside a handler, the policy and why:

- A handler that waits (``await wle.drain()``, which waits on a worker thread) waits for every
  other handler, never for itself, and never for another handler that is itself waiting: two
  handlers waiting for each other would otherwise wait forever. A context variable set in each
  handler's task says which handler is asking.
- A handler that blocks the loop thread (``system.wait()`` called straight from ``async def``)
  cannot wait for other async handlers at all: none of them can run until it returns. That wait
  skips them (and returns ``False``); ``await wle.drain()`` is the way to wait from async code.
- ``close(timeout)`` returns within ``timeout`` whatever the handlers do: it waits that long,
  then cancels what is left, asks the loop to stop without waiting for it (a handler blocking the
  loop would block the stop too) and returns the handlers it abandoned. The loop thread is a
  daemon thread, so an abandoned handler never keeps the process alive.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

__all__ = ["AsyncRunner", "current_handler"]

#: The completion future of the async handler whose task is running in this context, if any.
_running: contextvars.ContextVar[Future[Any] | None] = contextvars.ContextVar("wle_async_handler", default=None)


def current_handler() -> Future[Any] | None:
    """The async handler this code runs for (in its task or a thread it awaits), or ``None``."""
    return _running.get()


class AsyncRunner:
    """Runs coroutine functions on a private event-loop thread, started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._reporter: ThreadPoolExecutor | None = None
        self._pending: dict[Future[Any], Any] = {}
        self._tasks: dict[Future[Any], asyncio.Task[Any]] = {}
        self._waiting: set[Future[Any]] = set()
        self._closed = False

    def _ensure_started(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._run_loop, args=(loop,), name="wle-async-handlers", daemon=True)
            self._thread.start()
            self._reporter = ThreadPoolExecutor(1, thread_name_prefix="wle-async-report")
            self._loop = loop
        return self._loop

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def submit(
        self,
        fn: Callable[..., Any],
        arg: Any,
        on_error: Callable[[BaseException], None],
        label: Any = None,
    ) -> Future[Any]:
        """Start ``fn(arg)`` on the loop without waiting; ``on_error`` runs on the reporter thread.

        ``label`` names the work in what ``close`` returns as abandoned. After ``close`` nothing
        starts: the work is dropped (the future is already done).
        """
        done: Future[Any] = Future()
        with self._lock:
            if self._closed:
                done.set_result(None)
                return done
            loop = self._ensure_started()
            reporter = self._reporter
            self._pending[done] = label if label is not None else getattr(fn, "__qualname__", repr(fn))
        assert reporter is not None

        async def run() -> Any:
            _running.set(done)  # each task runs in its own copy of the context
            return await fn(arg)

        def finished(task: asyncio.Task[Any]) -> None:
            error = None if task.cancelled() else task.exception()
            if error is None:
                self._settle(done)
                return

            def report() -> None:
                try:
                    on_error(error)
                finally:
                    self._settle(done)

            try:
                reporter.submit(report)
            except RuntimeError:  # the reporter was shut down by close(): nobody is left to tell
                self._settle(done)

        def start() -> None:
            task = loop.create_task(run())
            with self._lock:
                self._tasks[done] = task
            task.add_done_callback(finished)

        loop.call_soon_threadsafe(start)
        return done

    def _settle(self, done: Future[Any]) -> None:
        with self._lock:
            self._pending.pop(done, None)
            self._tasks.pop(done, None)
            if not done.done():
                done.set_result(None)
            self._idle.notify_all()

    def on_loop_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the handlers submitted so far have finished; ``False`` on timeout.

        Called for a handler (see the module's policy), that handler and handlers that are
        themselves waiting are not waited for; on the loop thread, no handler is.
        """
        me = _running.get()
        if self.on_loop_thread():
            with self._lock:
                return not any(f is not me for f in self._pending)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            targets = list(self._pending)
            if me is not None:
                self._waiting.add(me)
                self._idle.notify_all()  # a handler waiting for this one may stop waiting now
            try:
                while True:
                    excused = self._waiting if me is not None else set()
                    if all(f not in self._pending or f in excused for f in targets):
                        return True
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._idle.wait(remaining)
            finally:
                self._waiting.discard(me)  # type: ignore[arg-type]

    def close(self, timeout: float | None = 10.0) -> list[Any]:
        """Wait up to ``timeout`` for handlers in flight, then stop; returns what was abandoned."""
        deadline = None if timeout is None else time.monotonic() + timeout
        finished = self.wait(timeout)
        me = _running.get()
        with self._lock:
            self._closed = True
            loop, self._loop = self._loop, None
            thread, self._thread = self._thread, None
            reporter, self._reporter = self._reporter, None
            abandoned = [label for f, label in self._pending.items() if f is not me]
            tasks = [task for f, task in self._tasks.items() if f is not me]
        if reporter is not None:
            reporter.shutdown(wait=finished, cancel_futures=not finished)
        if loop is None or thread is None:
            return abandoned

        def stop() -> None:
            for task in tasks:
                task.cancel()
            loop.call_soon(loop.stop)  # after the cancelled tasks have had a turn to unwind

        loop.call_soon_threadsafe(stop)
        if thread is not threading.current_thread():
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return abandoned
