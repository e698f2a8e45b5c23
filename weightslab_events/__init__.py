"""weightslab-events: PyTorch training that checkpoints itself.

Register a model, an optimizer and hyperparameters once and train as usual: every change that
defines the experiment is noticed, announced on a blinker bus, given its own experiment hash and
directory, and checkpointed in the background.
"""

from __future__ import annotations

from . import signals
from .api import (
    current_system,
    data_changed,
    drain,
    freeze,
    get_checkpoint_system,
    get_hyperparams,
    get_model,
    get_optimizer,
    get_scheduler,
    register_hyperparams,
    register_model,
    register_optimizer,
    register_scheduler,
    register_stateful,
    reset,
    subscribe,
    unfreeze,
    unregister,
)
from .architecture import load_architecture
from .errors import (
    ArchitectureMismatchError,
    CheckpointError,
    CheckpointNotFoundError,
    InvalidNameError,
    NotDescribableError,
    RankDisagreementError,
    SystemOptionsError,
    UnsaveableStateError,
)
from .events import Event
from .handlers.retention import BestN, EveryNSteps, LatestN, RetentionPolicy
from .hyperparams import HyperParams
from .replay import ReplayResult, read_events, replay
from .system import CheckpointSystem

__version__ = "0.1.0"

__all__ = [
    "ArchitectureMismatchError",
    "BestN",
    "CheckpointError",
    "CheckpointNotFoundError",
    "CheckpointSystem",
    "Event",
    "EveryNSteps",
    "HyperParams",
    "InvalidNameError",
    "LatestN",
    "NotDescribableError",
    "RankDisagreementError",
    "ReplayResult",
    "RetentionPolicy",
    "SystemOptionsError",
    "UnsaveableStateError",
    "current_system",
    "data_changed",
    "drain",
    "freeze",
    "get_checkpoint_system",
    "get_hyperparams",
    "get_model",
    "get_optimizer",
    "get_scheduler",
    "load_architecture",
    "read_events",
    "register_hyperparams",
    "register_model",
    "register_optimizer",
    "register_scheduler",
    "register_stateful",
    "replay",
    "reset",
    "signals",
    "subscribe",
    "unfreeze",
    "unregister",
]


def __dir__() -> list[str]:
    """The public API only: no ``annotations`` from the future import, no submodules."""
    return sorted([*__all__, "__version__"])
