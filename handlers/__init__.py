"""The built-in subscribers, each a small class with ``connect(bus)`` and ``close()``.

Only :mod:`weightslab_events.system` (and replay) wire them; the core knows none of them.
"""

from .checkpointing import CheckpointingHandler, Decision
from .event_log import EventLogHandler
from .hashing import HashingHandler
from .retention import BestN, EveryNSteps, LatestN, RetentionHandler, RetentionPolicy

__all__ = [
    "BestN",
    "CheckpointingHandler",
    "Decision",
    "EventLogHandler",
    "EveryNSteps",
    "HashingHandler",
    "LatestN",
    "RetentionHandler",
    "RetentionPolicy",
]
