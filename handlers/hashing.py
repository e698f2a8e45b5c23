"""Change events -> the experiment hash; boundaries -> one ``hash_changed`` per new experiment.

The handler is a pure function of the events it sees: each change event carries the new
canonical description of the component it changed, the handler keeps the latest description per
component and hashes them all. That is why replaying a log through it reproduces the live run's
hashes exactly, with no model in sight. Scheduler moves carry no description and move nothing.

Policy, and why:

- ``current`` follows every edit at once: it stamps the events that follow and is what
  ``system.experiment_hash`` says.
- ``hash_changed`` means "a new experiment exists", so a handler needs no filtering: it is
  emitted once per fork, where the new hash takes effect (the next ``step``, an explicit
  ``checkpoint_requested``, ``closing``), or at once for a ``reset`` (saved at once). It carries
  every cause of the burst (``causes``, one entry per edit; ``words`` joins them). A burst that
  returns to the hash in force announces nothing, and registrations before the first step
  announce one hash. The per-edit detail stays on the specific signals
  (``hyperparams_changed``, ``optimizer_param_changed``, ``layer_edited``, ...).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from weightslab_events.bus import Bus, Subscription
from weightslab_events.events import Event
from weightslab_events.fingerprint import experiment_hash
from weightslab_events.signals import CHANGE_SIGNALS
from weightslab_events.wording import cause_in_words

__all__ = ["BOUNDARY_SIGNALS", "HashingHandler", "component_of"]

#: Where a new hash takes effect and is announced (a reset also takes effect at once).
BOUNDARY_SIGNALS: tuple[str, ...] = ("step", "checkpoint_requested", "closing")

_KIND_OF = {
    "layer_edited": "model",
    "state_changed": "model",
    "optimizer_param_changed": "optimizer",
    "hyperparams_changed": "hyperparams",
}


def component_of(event: Event) -> str:
    """The ``kind:name`` key of the component a change event describes."""
    if event.type.endswith("_registered"):
        kind = event.type[: -len("_registered")]
    else:
        kind = event.data.get("kind") if event.type == "unregistered" else _KIND_OF[event.type]
    return f"{kind}:{event.data.get('name')}"


def _is_reset(event: Event) -> bool:
    return event.type == "state_changed" and event.data.get("kind") == "reset"


#: How many recent hashes keep the components they were computed from (see ``components_of``).
RECENT_HASHES = 256


class HashingHandler:
    """Keeps every component's description and announces each new experiment once.

    Each hash is remembered with the exact components it was computed from (the last
    ``RECENT_HASHES`` of them), so a checkpoint stores the description that hashes to its
    folder's name even when the next edit has already come (the next step's schedule, or
    another thread). Changes are serialised by a lock: edits from any thread are safe.
    """

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}
        self.current: str | None = None
        self.announced: str | None = None
        self._burst: list[dict[str, Any]] = []
        self._lock = threading.RLock()
        self._described: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._bus: Bus | None = None
        self._subscriptions: list[Subscription] = []

    def connect(self, bus: Bus) -> HashingHandler:
        self._bus = bus
        self._subscriptions = [bus.connect(name, self.on_change, group="core") for name in sorted(CHANGE_SIGNALS)]
        self._subscriptions += [bus.connect(name, self.on_boundary, group="core") for name in BOUNDARY_SIGNALS]
        self._subscriptions.append(bus.connect("resumed", self.on_resumed, group="core"))
        return self

    def close(self) -> None:
        for subscription in self._subscriptions:
            subscription.close()
        self._subscriptions = []

    def components_of(self, hash: str) -> dict[str, Any] | None:
        """The components ``hash`` was computed from, if it is one of the recent hashes."""
        with self._lock:
            found = self._described.get(hash)
            return dict(found) if found is not None else None

    def _remember(self, hash: str) -> None:
        self._described[hash] = dict(self.components)
        self._described.move_to_end(hash)
        while len(self._described) > RECENT_HASHES:
            self._described.popitem(last=False)

    def on_resumed(self, event: Event) -> None:
        """A resume restores a stored experiment: its hash is in force, whatever came before."""
        if self._bus is not None and event.data.get("hash"):
            with self._lock:
                self.current = self.announced = event.data["hash"]
                self._burst = []
                self._bus.state.exp = self.current
                if self.components and experiment_hash(self.components) == self.current:
                    self._remember(self.current)

    def on_change(self, event: Event) -> None:
        if event.type == "optimizer_param_changed" and event.data.get("source") == "scheduler":
            return
        with self._lock:
            self._change(event)

    def _change(self, event: Event) -> None:
        key = component_of(event)
        data = event.to_dict()["data"]
        if event.type == "unregistered":
            self.components.pop(key, None)
        elif data.get("description") is not None:
            self.components[key] = data["description"]
        else:
            return
        new = experiment_hash(self.components) if self.components else None
        if new == self.current:
            return
        if new is not None:
            self._remember(new)
        self.current = new
        assert self._bus is not None
        self._bus.state.exp = new
        words = cause_in_words(event.type, data, self.components)
        self._burst.append({"type": event.type, "src": event.src, "kind": data.get("kind"), "words": words})
        if _is_reset(event):
            self._announce(event, "reset")

    def on_boundary(self, event: Event) -> None:
        with self._lock:
            self._announce(event, event.type)

    def _announce(self, event: Event, boundary: str) -> None:
        """Emit ``hash_changed`` if the hash differs from the one in force (see the policy)."""
        new = self.current
        if new is None:
            return  # nothing registered: no experiment to announce (the causes wait for one)
        burst, self._burst = self._burst, []
        if new == self.announced:
            return
        old, self.announced = self.announced, new
        assert self._bus is not None
        types = list(dict.fromkeys(cause["type"] for cause in burst))
        self._bus.emit(
            "hash_changed",
            src=event.src,
            exp=new,
            step=event.step,
            old_hash=old,
            new_hash=new,
            cause=", ".join(types) or boundary,
            kind=burst[-1]["kind"] if burst else None,
            words="; ".join(cause["words"] for cause in burst if cause["words"]),
            causes=burst,
            boundary=boundary,
            components=dict(self.components),
        )
