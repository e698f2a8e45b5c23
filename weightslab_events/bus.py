"""The event bus: blinker as the routing table, our own dispatch on top.

Policy, and why:

- Receivers are held strongly unless asked otherwise: blinker holds them weakly by default and
  an inline lambda then silently stops firing once collected.
- A receiver that raises never stops the others nor training: blinker's ``send`` stops at the
  first error. The error is logged and emitted as ``handler_failed`` (never for a failing
  ``handler_failed`` receiver, so it cannot loop). ``strict=True`` re-raises instead, for tests:
  a sync handler's error in the emitting thread, an async handler's from ``wait_handlers``.
- Order is fixed: the ``core`` group (hashing) runs first, then ``user`` receivers, then the
  ``sink`` group (checkpointing, the log); connection order within a group.
- Run to completion: an event emitted while this thread is dispatching is queued and dispatched
  after the current one, so a live run and its replay see the same order.
- ``async def`` receivers run on one anyio loop thread (:mod:`.asyncrunner`), concurrently, and
  never block the emitting thread.
- Work that must not run in the middle of an event (closing the system from a handler) is put
  off with :meth:`Bus.after_dispatch` until this thread has dispatched everything queued.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from blinker import ANY, Namespace, Signal
from blinker._utilities import make_id

from . import signals as _signals
from .asyncrunner import AsyncRunner, current_handler
from .events import Event

__all__ = ["GROUPS", "Bus", "BusState", "Subscription", "is_async_handler"]

log = logging.getLogger("weightslab_events")

GROUPS: tuple[str, ...] = ("core", "user", "sink")

Handler = Callable[[Event], Any]


def is_async_handler(fn: Any) -> bool:
    """True for an ``async def`` function or an object whose ``__call__`` is one."""
    if inspect.iscoroutinefunction(fn):
        return True
    return callable(fn) and inspect.iscoroutinefunction(type(fn).__call__)


def _describe(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__qualname__


@dataclass
class BusState:
    """What stamps each new event: the hash in force and the current step."""

    exp: str | None = None
    step: int = 0


class Subscription:
    """A connection of one handler to one signal; ``close()`` or a ``with`` block ends it."""

    def __init__(
        self, signal: Signal, handler: Handler, name: str, on_close: Callable[[], None], weak: bool = False
    ) -> None:
        self._signal = signal
        self._handler: Any = weakref.ref(handler) if weak else handler
        self._weak = weak
        self.signal_name = name
        self._on_close = on_close

    @property
    def handler(self) -> Handler | None:
        """The handler, or ``None`` once a weakly held one has been collected."""
        return self._handler() if self._weak else self._handler

    def close(self) -> None:
        handler = self.handler
        if handler is not None:
            self._signal.disconnect(handler)
        self._on_close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Bus:
    """Routes events to receivers; one per system, plus isolated ones for replay and tests."""

    def __init__(self, *, strict: bool = False, clock: Callable[[], float] = time.time) -> None:
        self.strict = strict
        self.clock = clock
        self.state = BusState()
        #: The run id stamped on every event this bus emits (``None`` for replay and tests).
        self.run: str | None = None
        self._routes = Namespace()
        self._order: dict[Any, int] = {}
        self._counter = itertools.count()
        self._seq = itertools.count(1)
        self._local = threading.local()
        self._async = AsyncRunner()
        self._async_errors: list[BaseException] = []
        self._cache: dict[tuple[str, Any], tuple[tuple[Handler, bool], ...]] = {}

    # -- connecting -------------------------------------------------------------------------

    def connect(
        self,
        signal: Signal | str,
        handler: Handler,
        *,
        sender: Any = ANY,
        weak: bool = False,
        group: str = "user",
    ) -> Subscription:
        """Connect ``handler`` to ``signal`` (or ``signals.ALL``) in ``group``."""
        if group not in GROUPS:
            raise ValueError(f"unknown handler group {group!r}; groups: {', '.join(GROUPS)}")
        if not callable(handler):
            raise TypeError(f"handler {handler!r} is not callable")
        name = _signals.name_of(signal)
        route = self._routes.signal(f"{group}:{name}")
        route.connect(handler, sender=sender, weak=weak)
        self._order.setdefault(make_id(handler), next(self._counter))
        self._cache.clear()
        return Subscription(route, handler, name, self._cache.clear, weak)

    def receivers(self, name: str, sender: Any = None) -> list[Handler]:
        """Receivers of ``name`` for ``sender``, in dispatch order."""
        return [receiver for receiver, _ in self._routing(name, sender)]

    def _routing(self, name: str, sender: Any) -> tuple[tuple[Handler, bool], ...]:
        """Receivers of ``name`` for ``sender`` with whether each is async, in dispatch order.

        The answer is cached until the next connect or disconnect, since it is asked for every
        event, every step. Routes holding weak receivers are not cached: a cached strong
        reference would keep a weakly connected receiver alive.
        """
        key = (name, sender)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        found: list[Handler] = []
        weak = False
        for group in GROUPS:
            in_group: list[Handler] = []
            for route_name in (f"{group}:{name}", f"{group}:{_signals.ALL}"):
                route = self._routes.get(route_name)
                if route is not None and route.receivers:
                    weak = weak or any(isinstance(r, weakref.ref) for r in route.receivers.values())
                    in_group.extend(route.receivers_for(sender))
            in_group.sort(key=lambda r: self._order.get(make_id(r), 0))
            found.extend(in_group)
        result = tuple((receiver, is_async_handler(receiver)) for receiver in found)
        if not weak:
            self._cache[key] = result
        return result

    # -- emitting ---------------------------------------------------------------------------

    def emit(
        self,
        type: str,
        *,
        src: str | None = None,
        exp: str | None = None,
        step: int | None = None,
        **data: Any,
    ) -> Event:
        """Build an event stamped with the current hash and step, and dispatch it."""
        event = Event(
            type=type,
            exp=self.state.exp if exp is None else exp,
            step=self.state.step if step is None else step,
            src=src,
            data=data,
            seq=next(self._seq),
            ts=self.clock(),
            run=self.run,
        )
        self.dispatch(event)
        return event

    def dispatch(self, event: Event) -> None:
        """Deliver ``event``; queued behind the current event if this thread is dispatching."""
        queue: deque[Event] | None = getattr(self._local, "queue", None)
        if queue is not None:
            queue.append(event)
            return
        queue = self._local.queue = deque([event])
        self._local.after = []
        try:
            while queue:
                self._deliver(queue.popleft())
        finally:
            self._local.queue = None
            after, self._local.after = self._local.after, []
            for fn in after:
                fn()

    def dispatching(self) -> bool:
        """True while this thread is inside a dispatch (a sync handler is running on it)."""
        return getattr(self._local, "queue", None) is not None

    def in_async_handler(self) -> bool:
        """True in an async handler's task, or in a thread it is awaiting."""
        return current_handler() is not None

    def after_dispatch(self, fn: Callable[[], None]) -> bool:
        """Run ``fn`` once this thread has dispatched every queued event; ``False`` if it is not dispatching."""
        if not self.dispatching():
            return False
        self._local.after.append(fn)
        return True

    def _deliver(self, event: Event) -> None:
        for receiver, is_async in self._routing(event.type, event.src):
            if is_async:
                self._async.submit(receiver, event, self._reporter_for(receiver, event), (receiver, event))
                continue
            try:
                receiver(event)
            except Exception as error:
                if self.strict:
                    raise
                self._report(receiver, event, error)

    def _reporter_for(self, receiver: Handler, event: Event) -> Callable[[BaseException], None]:
        def report(error: BaseException) -> None:
            if self.strict:
                self._async_errors.append(error)
                return
            self._report(receiver, event, error)

        return report

    def _report(self, receiver: Handler, event: Event, error: BaseException) -> None:
        log.error(
            "handler %s failed on %s event: %s: %s",
            _describe(receiver),
            event.type,
            type(error).__name__,
            error,
            exc_info=error,
        )
        if event.type == "handler_failed":
            return
        self.emit(
            "handler_failed",
            src=event.src,
            handler=_describe(receiver),
            event_type=event.type,
            event_seq=event.seq,
            error=f"{type(error).__name__}: {error}",
        )

    # -- async work -------------------------------------------------------------------------

    def wait_handlers(self, timeout: float | None = None) -> bool:
        """Block until async handler work in flight has finished; ``False`` on timeout.

        In strict mode the first error an async handler raised is re-raised here, since it
        cannot be raised into the thread that emitted the event.
        """
        finished = self._async.wait(timeout)
        if self._async_errors:
            error, self._async_errors = self._async_errors[0], []
            raise error
        return finished

    def close(self, timeout: float | None = 10.0) -> list[str]:
        """Stop the async handlers' loop within ``timeout``; returns the handlers abandoned.

        Each abandoned handler is logged and emitted as ``handler_failed``, so the event log
        records it. Async receivers connected afterwards are never started.
        """
        abandoned = []
        for receiver, event in self._async.close(timeout):
            why = "abandoned by close(): still running when its time ran out"
            log.warning("async handler %s on %s event %d %s", _describe(receiver), event.type, event.seq, why)
            self.emit(
                "handler_failed",
                src=event.src,
                handler=_describe(receiver),
                event_type=event.type,
                event_seq=event.seq,
                error=why,
            )
            abandoned.append(f"{_describe(receiver)} on {event.type} event {event.seq}")
        return abandoned
