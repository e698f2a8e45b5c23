"""The library's exception types: specific classes, so callers can catch exactly one problem."""

from __future__ import annotations

__all__ = [
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
]


class CheckpointError(RuntimeError):
    """One or more background saves failed; ``failures`` lists ``(checkpoint, reason)`` pairs."""

    def __init__(self, message: str, failures: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.failures = list(failures or [])


class CheckpointNotFoundError(LookupError):
    """No committed, verified checkpoint matches what was asked for."""


class ArchitectureMismatchError(ValueError):
    """A checkpoint was made for another architecture; ``differences`` lists every one."""

    def __init__(self, message: str, differences: list[str]) -> None:
        super().__init__(message)
        self.differences = differences


class OptimizerMismatchError(ArchitectureMismatchError):
    """A checkpoint's optimizer state was made by another optimizer class or param-group layout."""


class InvalidNameError(ValueError):
    """A registered name cannot be used: it would be a path outside the root, or is empty."""


class NotDescribableError(TypeError):
    """A value cannot be described deterministically, so it cannot take part in the hash."""


class SystemOptionsError(RuntimeError):
    """``get_checkpoint_system`` was called with options other than those of the open system."""


class UnsaveableStateError(TypeError):
    """A state holds a value that a checkpoint could store but never load back (``weights_only``)."""


class DistributedSetupError(RuntimeError):
    """A distributed job is set up so that its ranks cannot coordinate (the message says how to fix it)."""


class RankDisagreementError(RuntimeError):
    """The ranks of a distributed job disagree on the experiment; raised on every rank, naming what differs."""


class ManifestError(ValueError):
    """An experiment's ``manifest.yaml`` cannot be trusted; ``path`` and ``problem`` say why."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"manifest {path} is damaged: {problem}")
        self.path = path
        self.problem = problem


class ExperimentNotFoundError(CheckpointNotFoundError):
    """No experiment of a root has a hash starting with the given prefix."""


class AmbiguousHashError(LookupError):
    """More than one experiment hash starts with the given prefix; the message lists them."""


class RootNotFoundError(FileNotFoundError):
    """The path given as an experiments root does not exist or holds no ``checkpoints/`` folder."""


class SymlinkInRootError(ValueError):
    """A folder or file the live system writes below its root is a symbolic link; ``path`` names it."""

    def __init__(self, path: object) -> None:
        super().__init__(
            f"{path} is a symbolic link; weightslab-events never writes through a link below its root "
            "(it could lead out of it): replace the link with a real folder or file, or choose another root"
        )
        self.path = path
