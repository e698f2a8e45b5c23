"""Steps, hash changes and requests -> checkpoint decisions (``checkpoint_scheduled``).

Decisions are a pure function of the events, so replay (``save=None``, the dry mode) makes the
same decisions as the live run. Policy:

- A new hash takes effect at the next boundary, where the hashing handler announces it with one
  ``hash_changed``; that event becomes one ``fork`` checkpoint of the state trained under it. A
  burst of edits between two steps therefore gives one fork, and a burst that returns to the hash
  in force gives none. The first hash of a run has no parent and its first checkpoint is a
  ``start`` one. A boundary event stamped with a hash other than the one in force is followed by
  that ``hash_changed``, so it decides nothing itself (the fork is that boundary's save).
- A hash change caused by a reset is announced and saved at once (``reset``).
- ``step % checkpoint_frequency == 0`` gives a ``periodic`` checkpoint. Once the user drives steps
  (``checkpoint_on_step``), automatic step events no longer drive periodic saves.
- Explicit requests are saved at once; ``closing`` saves a pending fork or a ``final``
  checkpoint if the last step was not saved yet.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from weightslab_events.bus import Bus, Subscription
from weightslab_events.events import Event

__all__ = ["CheckpointingHandler", "Decision"]


@dataclass(frozen=True)
class Decision:
    hash: str
    step: int
    reason: str
    parent: str | None = None
    fork_step: int | None = None
    causes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def required(self) -> bool:
        """Only periodic saves may be skipped when the writer is behind."""
        return self.reason != "periodic"


class CheckpointingHandler:
    def __init__(self, frequency: int | None = None, save: Callable[[Decision], None] | None = None) -> None:
        self.frequency = frequency
        self._save = save
        self._lock = threading.RLock()
        self._bus: Bus | None = None
        self._subscriptions: list[Subscription] = []
        self.hash: str | None = None
        self.boundary_hash: str | None = None
        self.user_steps = False
        self.step = 0
        self._last_saved: tuple[str, int] | None = None
        self.decisions: list[Decision] = []

    def connect(self, bus: Bus) -> CheckpointingHandler:
        self._bus = bus
        routes = {
            "started": self.on_started,
            "hash_changed": self.on_hash_changed,
            "step": self.on_step,
            "resumed": self.on_resumed,
            "checkpoint_requested": self.on_requested,
            "closing": self.on_closing,
        }
        self._subscriptions = [bus.connect(name, fn, group="sink") for name, fn in routes.items()]
        return self

    def close(self) -> None:
        for subscription in self._subscriptions:
            subscription.close()
        self._subscriptions = []

    # -- events -----------------------------------------------------------------------------

    def on_started(self, event: Event) -> None:
        if self.frequency is None:
            self.frequency = event.data.get("checkpoint_frequency")

    def on_hash_changed(self, event: Event) -> None:
        with self._lock:
            data = event.data
            self.hash = self.boundary_hash = data["new_hash"]
            parent = data.get("old_hash")
            reason = "reset" if data.get("boundary") == "reset" else "fork" if parent else "start"
            causes = tuple(c.get("words", "") for c in data.get("causes") or ()) or (data.get("words", ""),)
            self._decide(reason, event.step, parent, causes)

    def _fork_follows(self, event: Event) -> bool:
        """True if ``event`` is a boundary at which a new hash is about to be announced."""
        return event.exp is not None and event.exp != self.boundary_hash

    def on_step(self, event: Event) -> None:
        with self._lock:
            if event.data.get("driver") == "user":
                self.user_steps = True
            elif self.user_steps:
                return
            self.step = event.step
            if self._fork_follows(event):
                return
            if self.frequency and event.step % self.frequency == 0 and self.hash is not None:
                self._decide("periodic", event.step)

    def on_resumed(self, event: Event) -> None:
        with self._lock:
            self.hash = self.boundary_hash = event.data.get("hash")
            self.step = event.step
            self._last_saved = (self.hash, self.step)

    def on_requested(self, event: Event) -> None:
        with self._lock:
            if not self._fork_follows(event) and self.hash is not None:
                self._decide(event.data.get("reason", "manual"), event.step)

    def on_closing(self, event: Event) -> None:
        with self._lock:
            if self._fork_follows(event):
                return
            if self.hash is not None and event.step > 0 and self._last_saved != (self.hash, event.step):
                self._decide("final", event.step)

    # -- decisions --------------------------------------------------------------------------

    def _decide(self, reason: str, step: int, parent: str | None = None, causes: tuple[str, ...] = ()) -> None:
        assert self.hash is not None and self._bus is not None
        decision = Decision(self.hash, step, reason, parent, step if reason in ("fork", "reset") else None, causes)
        self.decisions.append(decision)
        self._last_saved = (self.hash, step)
        self._bus.emit(
            "checkpoint_scheduled",
            exp=self.hash,
            step=step,
            hash=self.hash,
            reason=reason,
            parent=parent,
            causes=list(causes),
        )
        if self._save is not None:
            self._save(decision)
