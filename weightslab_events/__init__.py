"""weightslab-events: PyTorch training that checkpoints itself.

Register a model, an optimizer and hyperparameters once and train as usual: every change that
defines the experiment is noticed, announced on a blinker bus, given its own experiment hash and
directory, and checkpointed in the background. ``open_root`` reads what was recorded.

Importing the package imports none of its parts (and so not torch): each public name loads on
first use, so the command line reads a root in a fraction of the time torch takes to import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what editors and type checkers see
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
        AmbiguousHashError,
        ArchitectureMismatchError,
        CheckpointError,
        CheckpointNotFoundError,
        DistributedSetupError,
        ExperimentNotFoundError,
        InvalidNameError,
        ManifestError,
        NotDescribableError,
        OptimizerMismatchError,
        RankDisagreementError,
        RootNotFoundError,
        SymlinkInRootError,
        SystemOptionsError,
        UnsaveableStateError,
    )
    from .events import Event
    from .handlers.retention import BestN, EveryNSteps, LatestN, RetentionPolicy
    from .hyperparams import HyperParams
    from .reader import Checkpoint, DataChange, Experiment, Root, RunSummary, open_root
    from .records import runs_in_words
    from .system import CheckpointSystem
    from .wrappers import UnsupportedOptimizerError

# ``replay`` is both a submodule and a public function: importing the submodule (anything does)
# would rebind ``wle.replay`` to the module, so the function is bound here, at import (no torch).
from .replay import ReplayResult, read_events, replay

__version__ = "0.1.0"

#: Where each public name lives; a name is imported from there the first time it is used.
_HOMES: dict[str, str] = {
    **dict.fromkeys(("BestN", "EveryNSteps", "LatestN", "RetentionPolicy"), "weightslab_events.handlers.retention"),
    **dict.fromkeys(
        (
            "current_system",
            "data_changed",
            "drain",
            "freeze",
            "get_checkpoint_system",
            "get_hyperparams",
            "get_model",
            "get_optimizer",
            "get_scheduler",
            "register_hyperparams",
            "register_model",
            "register_optimizer",
            "register_scheduler",
            "register_stateful",
            "reset",
            "subscribe",
            "unfreeze",
            "unregister",
        ),
        "weightslab_events.api",
    ),
    **dict.fromkeys(
        (
            "AmbiguousHashError",
            "ArchitectureMismatchError",
            "CheckpointError",
            "CheckpointNotFoundError",
            "DistributedSetupError",
            "ExperimentNotFoundError",
            "InvalidNameError",
            "ManifestError",
            "NotDescribableError",
            "OptimizerMismatchError",
            "RankDisagreementError",
            "RootNotFoundError",
            "SymlinkInRootError",
            "SystemOptionsError",
            "UnsaveableStateError",
        ),
        "weightslab_events.errors",
    ),
    **dict.fromkeys(
        ("Checkpoint", "DataChange", "Experiment", "Root", "RunSummary", "open_root"), "weightslab_events.reader"
    ),
    "runs_in_words": "weightslab_events.records",
    "CheckpointSystem": "weightslab_events.system",
    "UnsupportedOptimizerError": "weightslab_events.wrappers",
    "Event": "weightslab_events.events",
    "HyperParams": "weightslab_events.hyperparams",
    "load_architecture": "weightslab_events.architecture",
    "signals": "weightslab_events.signals",
}

__all__ = [
    "AmbiguousHashError",
    "ArchitectureMismatchError",
    "BestN",
    "Checkpoint",
    "CheckpointError",
    "CheckpointNotFoundError",
    "CheckpointSystem",
    "DataChange",
    "DistributedSetupError",
    "Event",
    "EveryNSteps",
    "Experiment",
    "ExperimentNotFoundError",
    "HyperParams",
    "InvalidNameError",
    "LatestN",
    "ManifestError",
    "NotDescribableError",
    "OptimizerMismatchError",
    "RankDisagreementError",
    "ReplayResult",
    "RetentionPolicy",
    "Root",
    "RootNotFoundError",
    "RunSummary",
    "SymlinkInRootError",
    "SystemOptionsError",
    "UnsaveableStateError",
    "UnsupportedOptimizerError",
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
    "open_root",
    "read_events",
    "register_hyperparams",
    "register_model",
    "register_optimizer",
    "register_scheduler",
    "register_stateful",
    "replay",
    "reset",
    "runs_in_words",
    "signals",
    "subscribe",
    "unfreeze",
    "unregister",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'weightslab_events' has no attribute {name!r}")
    module = importlib.import_module(home)
    value = module if name == "signals" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public API only: no ``annotations`` from the future import, no submodules."""
    return sorted([*__all__, "__version__"])
