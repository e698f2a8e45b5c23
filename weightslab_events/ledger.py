"""The process's registry of named experiment objects.

A ledger maps ``(kind, name)`` to the user's object. It knows nothing of hashing or saving: each
registration, replacement and removal is handed to its listeners (the system, which turns it into
an event). Objects registered before any system exists simply wait in the ledger; a system that
starts later picks them all up. One lock guards the maps so that a UI thread may register while
the training thread reads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .names import validate_name

__all__ = ["KINDS", "Entry", "Ledger", "LEDGER"]

KINDS: tuple[str, ...] = ("model", "optimizer", "hyperparams", "scheduler", "stateful")


@dataclass(frozen=True)
class Entry:
    """One registration. ``settles_after_step`` is a stateful's capture rule (``None``: decide by type)."""

    kind: str
    name: str
    obj: Any
    settles_after_step: bool | None = None


Listener = Callable[[str, Entry, "Entry | None"], None]
"""Called as ``listener(action, entry, previous)`` with action ``"register"`` or ``"unregister"``."""


class Ledger:
    """Named objects by kind; a name is unique across kinds, so ``unregister(name)`` is unambiguous."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._entries: dict[str, Entry] = {}
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def register(self, kind: str, name: str, obj: Any, *, settles_after_step: bool | None = None) -> Entry:
        """Add or replace ``name``; replacing is an event like any registration."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
        validate_name(name, f"{kind} name")
        with self._lock:
            previous = self._entries.get(name)
            if previous is not None and previous.kind != kind:
                raise ValueError(
                    f"name {name!r} is already registered as a {previous.kind}; "
                    f"unregister it before registering a {kind} under that name"
                )
            entry = Entry(kind, name, obj, settles_after_step)
            self._entries[name] = entry
            listeners = list(self._listeners)
        for listener in listeners:
            listener("register", entry, previous)
        return entry

    def unregister(self, name: str) -> Entry:
        with self._lock:
            entry = self._entries.pop(name, None)
            listeners = list(self._listeners)
        if entry is None:
            raise KeyError(f"nothing is registered under the name {name!r}")
        for listener in listeners:
            listener("unregister", entry, None)
        return entry

    def get(self, kind: str, name: str) -> Any:
        with self._lock:
            entry = self._entries.get(name)
        if entry is None or entry.kind != kind:
            known = ", ".join(self.names(kind)) or "none"
            raise KeyError(f"no {kind} is registered under the name {name!r} (registered: {known})")
        return entry.obj

    def entries(self, kind: str | None = None) -> list[Entry]:
        """Entries in registration order, optionally of one kind."""
        with self._lock:
            return [e for e in self._entries.values() if kind is None or e.kind == kind]

    def names(self, kind: str) -> list[str]:
        return [e.name for e in self.entries(kind)]

    def clear(self) -> None:
        """Forget everything without telling listeners (used when a system closes)."""
        with self._lock:
            self._entries.clear()


#: The process-wide ledger that the module-level ``register_*`` functions use.
LEDGER = Ledger()
