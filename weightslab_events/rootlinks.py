"""Refusing, when a system starts, a root whose folders or appended files are symbolic links.

The live system writes below its root: folders it creates files in (``logs/``, ``data/``,
``checkpoints/``, each experiment's ``model/``, ``hp/``, ``data/``, ``runs/``) and files it
appends to (``logs/events.jsonl``, lock files). A link in any of those places would carry the
writes out of the root, while every reader refuses to follow it, so the run's own checkpoints
would then look damaged. Files replaced by rename (checkpoints, manifests) are safe: a rename
replaces a link, never follows it. The root itself may be a link (the user chose the path).
Checking costs one ``lstat`` per entry, done once when the system starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .errors import SymlinkInRootError

__all__ = ["refuse_links"]

_TOP = ("logs", "logs/events.jsonl", "data", "checkpoints", "runs")
_PER_EXPERIMENT = ("model", "hp", "data")


def _written_places(root: Path) -> Iterator[Path]:
    for relative in _TOP:
        yield root / relative
    for folder in ("runs", "logs"):
        if (root / folder).is_dir() and not (root / folder).is_symlink():
            yield from (root / folder).iterdir()
    checkpoints = root / "checkpoints"
    if not checkpoints.is_dir() or checkpoints.is_symlink():
        return
    for experiment in checkpoints.iterdir():
        yield experiment
        if experiment.is_dir() and not experiment.is_symlink():
            for sub in _PER_EXPERIMENT:
                yield experiment / sub


def refuse_links(root: Path) -> None:
    """Raise :class:`SymlinkInRootError` naming the first link found where the system writes."""
    for path in _written_places(root):
        if path.is_symlink():
            raise SymlinkInRootError(path)
