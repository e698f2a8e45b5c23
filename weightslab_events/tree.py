"""The experiment tree of a root: which hash forked from which, when, why, with what."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .store import Store

__all__ = ["Experiment", "load_experiments", "render_tree", "resolve_hash"]


@dataclass
class Experiment:
    hash: str
    parent: str | None
    fork_step: int | None
    cause: str | None
    created: str
    checkpoints: list[dict[str, Any]]
    size: int
    children: list[str] = field(default_factory=list)

    @property
    def first_step(self) -> int | None:
        return self.checkpoints[0]["step"] if self.checkpoints else None

    @property
    def last_step(self) -> int | None:
        return self.checkpoints[-1]["step"] if self.checkpoints else None

    def to_json(self) -> dict[str, Any]:
        return {
            "hash": self.hash,
            "parent": self.parent,
            "fork_step": self.fork_step,
            "cause": self.cause,
            "first_step": self.first_step,
            "last_step": self.last_step,
            "checkpoints": len(self.checkpoints),
            "size": self.size,
            "created": self.created,
        }


def load_experiments(root: str | os.PathLike[str]) -> dict[str, Experiment]:
    """Every experiment under ``root`` with its lineage; a missing root is a clear error."""
    store = Store(Path(root))
    if not store.checkpoints_dir.is_dir():
        raise FileNotFoundError(f"{root} is not an experiments root (no {store.checkpoints_dir.name}/ folder in it)")
    experiments: dict[str, Experiment] = {}
    for hash in store.hashes():
        manifest = store.manifest(hash)
        experiments[hash] = Experiment(
            hash=hash,
            parent=manifest.get("parent"),
            fork_step=manifest.get("fork_step"),
            cause=manifest.get("fork_cause"),
            created=str(manifest.get("created", "")),
            checkpoints=sorted(manifest["checkpoints"], key=lambda r: r["step"]),
            size=store.size_on_disk(hash),
        )
    for exp in experiments.values():
        if exp.parent in experiments:
            experiments[exp.parent].children.append(exp.hash)
    for exp in experiments.values():
        exp.children.sort(key=lambda h: (experiments[h].fork_step or 0, experiments[h].created))
    return experiments


def resolve_hash(experiments: dict[str, Experiment], prefix: str) -> str:
    """The one hash starting with ``prefix`` (as git does); a clear error otherwise."""
    matches = [h for h in experiments if h.startswith(prefix)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise KeyError(f"no experiment hash starts with {prefix!r}")
    raise KeyError(f"hash prefix {prefix!r} is ambiguous: {', '.join(sorted(matches))}")


def render_tree(experiments: dict[str, Experiment]) -> str:
    """The lineage as indented text, roots first, children by fork step."""
    lines: list[str] = []

    def walk(hash: str, depth: int) -> None:
        exp = experiments[hash]
        steps = f"steps {exp.first_step}-{exp.last_step}" if exp.checkpoints else "no checkpoints"
        cause = f"  <- {exp.cause} (at step {exp.fork_step})" if exp.parent else ""
        lines.append(f"{'  ' * depth}{hash}  [{len(exp.checkpoints)} checkpoints, {steps}]{cause}")
        for child in exp.children:
            walk(child, depth + 1)

    roots = [h for h, e in experiments.items() if e.parent not in experiments]
    for hash in sorted(roots, key=lambda h: experiments[h].created):
        walk(hash, 0)
    return "\n".join(lines)
