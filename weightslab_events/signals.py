"""Every signal the library emits, as blinker signals in one private namespace.

Users refer to a signal as ``wle.signals.hash_changed`` (or by its name). These objects name
routes; a :class:`~weightslab_events.bus.Bus` keeps its own routing table, so an isolated bus in a
test never sees the process bus's receivers. The namespace is private to this library: blinker's
process-wide default namespace is shared with every other library in the process.
"""

from __future__ import annotations

from blinker import Namespace, Signal

__all__ = ["ALL", "CHANGE_SIGNALS", "NAMES", "by_name", "name_of"]

NAMES: tuple[str, ...] = (
    "model_registered",
    "optimizer_registered",
    "hyperparams_registered",
    "scheduler_registered",
    "stateful_registered",
    "unregistered",
    "hyperparams_changed",
    "optimizer_param_changed",
    "layer_edited",
    "state_changed",
    "data_changed",
    "step",
    "metric",
    "hash_changed",
    "checkpoint_scheduled",
    "checkpoint_saved",
    "checkpoint_failed",
    "checkpoint_skipped",
    "checkpoint_corrupted",
    "checkpoint_deleted",
    "checkpoint_requested",
    "resumed",
    "started",
    "handler_failed",
    "closing",
)

#: Signals whose events describe the experiment and so may move its hash.
CHANGE_SIGNALS: frozenset[str] = frozenset(
    {
        "model_registered",
        "optimizer_registered",
        "hyperparams_registered",
        "scheduler_registered",
        "unregistered",
        "hyperparams_changed",
        "optimizer_param_changed",
        "layer_edited",
        "state_changed",
    }
)

#: Subscribe to this to receive every event (the log and the test recorder do).
ALL = "*"

_namespace = Namespace()

for _name in NAMES:
    globals()[_name] = _namespace.signal(_name)
__all__ += list(NAMES)


def by_name(name: str) -> Signal:
    """The signal called ``name``; an unknown name is a ``KeyError`` that lists the known ones."""
    if name not in NAMES:
        raise KeyError(f"unknown signal {name!r}; known signals: {', '.join(NAMES)}")
    return _namespace.signal(name)


def name_of(signal: Signal | str) -> str:
    """The name of ``signal``, accepting a signal object, its name, or ``ALL``."""
    name = signal if isinstance(signal, str) else getattr(signal, "name", None)
    if name == ALL:
        return ALL
    if not isinstance(name, str) or name not in NAMES:
        raise KeyError(f"unknown signal {signal!r}; known signals: {', '.join(NAMES)}")
    return name
