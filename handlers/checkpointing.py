"""Steps, hash changes and requests -> checkpoint decisions (``checkpoint_scheduled``).

Decisions are a pure function of the events, so replay (``save=None``, the dry mode) makes the
same decisions as the live run. Policy:

- A new hash is *pending* until the next step boundary; then one ``fork`` checkpoint is taken of
  the state trained under it. A burst of edits between two steps therefore gives one fork, and a
  burst that returns to the hash in force gives none. The first hash of a run has no parent and
  its first checkpoint is a ``start`` one.
- A hash change caused by a reset is saved at once (``reset``).
- ``step % checkpoint_frequency == 0`` gives a ``periodic`` checkpoint. Once the user drives steps
  (``checkpoint_on_step``), automatic step events no longer drive periodic saves.
- Explicit requests are saved at once; ``closing`` saves a pending fork or a ``final``
  checkpoint if the last step was not saved yet.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
        self._pending: dict[str, Any] | None = None
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
            self.hash = event.data["new_hash"]
            if event.data.get("cause") == "state_changed" and event.data.get("kind") == "reset":
                parent = self._pending["parent"] if self._pending else self.boundary_hash
                causes = (*self._pending["causes"], event.data["words"]) if self._pending else (event.data["words"],)
                self._pending = None
                self.boundary_hash = self.hash
                self._decide("reset", self.step, parent, causes)
                return
            if self.hash == self.boundary_hash or self.hash is None:
                self._pending = None
                return
            if self._pending is None:
                self._pending = {"parent": self.boundary_hash, "causes": ()}
            self._pending["causes"] = (*self._pending["causes"], event.data.get("words", ""))

    def on_step(self, event: Event) -> None:
        with self._lock:
            if event.data.get("driver") == "user":
                self.user_steps = True
            elif self.user_steps:
                return
            self.step = event.step
            if self._take_pending(event.step):
                return
            if self.frequency and event.step % self.frequency == 0 and self.hash is not None:
                self._decide("periodic", event.step)

    def on_resumed(self, event: Event) -> None:
        with self._lock:
            self.hash = self.boundary_hash = event.data.get("hash")
            self.step = event.step
            self._pending = None
            self._last_saved = (self.hash, self.step)

    def on_requested(self, event: Event) -> None:
        with self._lock:
            if not self._take_pending(event.step) and self.hash is not None:
                self._decide(event.data.get("reason", "manual"), event.step)

    def on_closing(self, event: Event) -> None:
        with self._lock:
            if self._take_pending(event.step):
                return
            if self.hash is not None and event.step > 0 and self._last_saved != (self.hash, event.step):
                self._decide("final", event.step)

    # -- decisions --------------------------------------------------------------------------

    def _take_pending(self, step: int) -> bool:
        if self._pending is None or self.hash is None:
            return False
        parent, causes = self._pending["parent"], self._pending["causes"]
        self._pending = None
        self.boundary_hash = self.hash
        self._decide("fork" if parent else "start", step, parent, causes)
        return True

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
