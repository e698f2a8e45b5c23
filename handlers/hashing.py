"""Change events -> the experiment hash -> ``hash_changed``.

The handler is a pure function of the events it sees: each change event carries the new
canonical description of the component it changed, the handler keeps the latest description per
component and hashes them all. That is why replaying a log through it reproduces the live run's
hashes exactly, with no model in sight. Scheduler moves carry no description and move nothing.
"""

from __future__ import annotations

from typing import Any

from weightslab_events.bus import Bus, Subscription
from weightslab_events.events import Event
from weightslab_events.fingerprint import experiment_hash
from weightslab_events.signals import CHANGE_SIGNALS
from weightslab_events.wording import cause_in_words

__all__ = ["HashingHandler", "component_of"]

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


class HashingHandler:
    """Keeps every component's description and announces each new experiment hash."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}
        self.current: str | None = None
        self._bus: Bus | None = None
        self._subscriptions: list[Subscription] = []

    def connect(self, bus: Bus) -> HashingHandler:
        self._bus = bus
        self._subscriptions = [bus.connect(name, self.on_change, group="core") for name in sorted(CHANGE_SIGNALS)]
        self._subscriptions.append(bus.connect("resumed", self.on_resumed, group="core"))
        return self

    def close(self) -> None:
        for subscription in self._subscriptions:
            subscription.close()
        self._subscriptions = []

    def on_resumed(self, event: Event) -> None:
        """A resume restores a stored experiment: its hash is in force, whatever came before."""
        if self._bus is not None and event.data.get("hash"):
            self.current = event.data["hash"]
            self._bus.state.exp = self.current

    def on_change(self, event: Event) -> None:
        if event.type == "optimizer_param_changed" and event.data.get("source") == "scheduler":
            return
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
        old, self.current = self.current, new
        assert self._bus is not None
        self._bus.state.exp = new
        self._bus.emit(
            "hash_changed",
            src=event.src,
            exp=new,
            old_hash=old,
            new_hash=new,
            cause=event.type,
            kind=data.get("kind"),
            words=cause_in_words(event.type, data),
            components=dict(self.components),
        )
