"""The event record that travels on the bus and into the log.

One frozen type serves every signal: an event is its signal name, the experiment hash and step
it happened at, who sent it, and a JSON-safe ``data`` mapping with what changed. Keeping a single
shape (rather than one class per signal) is what makes every event round-trip through JSON
unchanged and lets replay rebuild events without importing torch. Fields of ``data`` read as
attributes (``event.new_hash``), so handlers stay short.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["Event", "LOG_FORMAT_VERSION", "READABLE_VERSIONS", "jsonable"]

#: Version 2 added ``run`` to the envelope (and compact blocks, see :mod:`.compactlog`).
LOG_FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


def jsonable(value: Any) -> Any:
    """Return ``value`` as plain JSON data.

    Tensors are summarised by shape and dtype and never stored: the log must stay small and must
    never carry weights. Unknown objects become their ``repr``, since a log line that cannot be
    written is worse than a lossy one.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [jsonable(v) for v in items]
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        return jsonable(value.item())  # a NumPy scalar: the Python number it equals
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return {"tensor": {"shape": list(shape), "dtype": str(dtype)}}
    return repr(value)


_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class Event:
    """One thing that happened, as every receiver and the log see it.

    ``seq`` orders the events of one run (time does not: clocks repeat and jump); ``run`` is the
    id of the run (process) that emitted it, ``None`` in logs written before runs existed;
    ``exp`` is the experiment hash in force when the event was emitted; ``src`` names the sender
    (a registered name, or the component that emitted it).
    """

    type: str
    exp: str | None = None
    step: int = 0
    src: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    seq: int = 0
    ts: float = 0.0
    run: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", _freeze(jsonable(dict(self.data))))

    def __getattr__(self, name: str) -> Any:
        data = object.__getattribute__(self, "data")
        if name in data:
            return data[name]
        raise AttributeError(f"{self.type} event has no field {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """The log's record of this event (format version ``v``)."""
        return {
            "v": LOG_FORMAT_VERSION,
            "run": self.run,
            "seq": self.seq,
            "ts": self.ts,
            "type": self.type,
            "exp": self.exp,
            "step": self.step,
            "src": self.src,
            "data": _thaw(self.data),
        }

    def to_json(self) -> str:
        return _encode(self.to_dict())

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Event:
        """Rebuild an event from its log record; an unknown format version is an error."""
        version = record.get("v")
        if version not in READABLE_VERSIONS:
            raise ValueError(
                f"event log format version {version!r} is not supported "
                f"(this library reads versions {', '.join(map(str, READABLE_VERSIONS))})"
            )
        run = record.get("run")
        if run is not None and not isinstance(run, str):
            raise ValueError(f"run must be a string, got {run!r}")
        return cls(
            type=record["type"],
            exp=record.get("exp"),
            step=int(record.get("step", 0)),
            src=record.get("src"),
            data=record.get("data") or {},
            seq=int(record.get("seq", 0)),
            ts=float(record.get("ts", 0.0)),
            run=run,
        )

    @classmethod
    def from_json(cls, line: str) -> Event:
        return cls.from_dict(json.loads(line))
