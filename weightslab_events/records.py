"""What a root holds, as plain immutable values: experiments, their checkpoints and data changes.

These are what :func:`weightslab_events.open_root` returns; they are read once and never change
underneath the caller (reading a root again gives new values). ``to_json`` is the form the
command line's ``--json`` and the web report use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Checkpoint", "DataChange", "Experiment", "RunSummary", "runs_in_words", "step_ranges", "ranges_text"]


@dataclass(frozen=True)
class Checkpoint:
    """One committed checkpoint as its experiment's manifest records it."""

    hash: str
    step: int
    reason: str
    file: str
    path: Path
    size: int
    sha256: str
    created: str
    metrics: Mapping[str, float] = field(default_factory=dict)
    #: The run that wrote it (``None`` for checkpoints written before runs were recorded).
    run: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "hash": self.hash,
            "step": self.step,
            "reason": self.reason,
            "file": self.file,
            "size": self.size,
            "sha256": self.sha256,
            "created": self.created,
            "metrics": dict(self.metrics),
        }


#: The ``data_changed`` fields that name samples; their length is the change's count.
SAMPLE_FIELDS = ("sample_ids", "samples", "ids", "indices")


@dataclass(frozen=True)
class DataChange:
    """One ``data_changed`` announcement (discarded samples, tags, augmentation)."""

    hash: str | None
    step: int
    kind: str
    count: int | None
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_event(cls, hash: str | None, step: int, data: Mapping[str, Any]) -> DataChange:
        counts = [len(data[k]) for k in SAMPLE_FIELDS if isinstance(data.get(k), (list, tuple))]
        details = {
            k: v
            for k, v in data.items()
            if k != "kind" and k not in SAMPLE_FIELDS and isinstance(v, (str, int, float, bool, type(None)))
        }
        return cls(hash, step, str(data.get("kind", "?")), counts[0] if counts else None, details)

    @property
    def words(self) -> str:
        """``"discard: 40 samples (reason: highest loss)"``."""
        text = self.kind + (f": {self.count} sample{'s' if self.count != 1 else ''}" if self.count is not None else "")
        extra = ", ".join(f"{k}: {v}" for k, v in self.details.items())
        return f"{text} ({extra})" if extra else text

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "kind": self.kind, "count": self.count, "details": dict(self.details)}


def step_ranges(steps: set[int] | frozenset[int]) -> tuple[tuple[int, int], ...]:
    """``{1, 2, 3, 7, 8}`` -> ``((1, 3), (7, 8))``."""
    ranges: list[tuple[int, int]] = []
    for step in sorted(steps):
        if ranges and step == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], step)
        else:
            ranges.append((step, step))
    return tuple(ranges)


def ranges_text(ranges: tuple[tuple[int, int], ...]) -> str:
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges) or "-"


@dataclass(frozen=True)
class Experiment:
    """One experiment hash of a root: lineage, why it forked, what it trained and saved.

    ``damage`` is ``None`` for a sound experiment, else the one-line reason it cannot be fully
    read (its other fields then hold whatever could be read). ``trained`` are the steps trained
    under this hash (from the event log; the checkpoints' steps when there is no log).
    """

    hash: str
    parent: str | None = None
    fork_step: int | None = None
    cause: str = ""
    recorded_cause: str | None = None
    created: str = ""
    checkpoints: tuple[Checkpoint, ...] = ()
    size: int = 0
    children: tuple[str, ...] = ()
    data_changes: tuple[DataChange, ...] = ()
    trained: tuple[tuple[int, int], ...] = ()
    damage: str | None = None

    @property
    def damaged(self) -> bool:
        return self.damage is not None

    @property
    def steps_trained(self) -> int:
        return sum(b - a + 1 for a, b in self.trained)

    @property
    def first_step(self) -> int | None:
        return self.trained[0][0] if self.trained else None

    @property
    def last_step(self) -> int | None:
        return self.trained[-1][1] if self.trained else None

    @property
    def latest(self) -> Checkpoint | None:
        return self.checkpoints[-1] if self.checkpoints else None

    def data_summary(self) -> dict[str, dict[str, int]]:
        """``{"discard": {"changes": 2, "samples": 80}}``: each kind's announcements and samples."""
        summary: dict[str, dict[str, int]] = {}
        for change in self.data_changes:
            entry = summary.setdefault(change.kind, {"changes": 0, "samples": 0})
            entry["changes"] += 1
            entry["samples"] += change.count or 0
        return summary

    def to_json(self) -> dict[str, Any]:
        """The summary row: counts, not the checkpoint list (see ``checkpoints``)."""
        return {
            "hash": self.hash,
            "parent": self.parent,
            "fork_step": self.fork_step,
            "cause": self.cause or None,
            "recorded_cause": self.recorded_cause,
            "first_step": self.first_step,
            "last_step": self.last_step,
            "steps": ranges_text(self.trained),
            "steps_trained": self.steps_trained,
            "checkpoints": len(self.checkpoints),
            "size": self.size,
            "created": self.created,
            "children": list(self.children),
            "data_changes": self.data_summary(),
            "damaged": self.damage,
        }


@dataclass(frozen=True)
class RunSummary:
    """One run (one process's lifetime on the root) as the event log tells it.

    ``index`` counts runs from 1 in start order; ``resumed_from`` is the id of the run whose
    checkpoint it continued (``None`` for a fresh start or an unknown writer); ``closed`` is
    ``False`` for a run that ended without ``close()`` (a crash, a kill).
    """

    index: int
    id: str
    started_at: str | None = None
    host: str | None = None
    pid: int | None = None
    resumed_from: str | None = None
    resumed_hash: str | None = None
    resumed_step: int | None = None
    last_step: int = 0
    closed: bool = False
    hashes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "id": self.id,
            "started_at": self.started_at,
            "host": self.host,
            "pid": self.pid,
            "resumed_from": self.resumed_from,
            "resumed_hash": self.resumed_hash,
            "resumed_step": self.resumed_step,
            "last_step": self.last_step,
            "closed": self.closed,
            "hashes": list(self.hashes),
        }

    def words(self, runs: Sequence[RunSummary]) -> str:
        """``"run 2 resumed run 1 at step 40"``, ``"run 3 started afresh"``."""
        if self.resumed_step is None:
            return f"run {self.index} started afresh"
        source = next((r.index for r in runs if r.id == self.resumed_from), None)
        whose = f"run {source}" if source is not None else "an earlier run"
        return f"run {self.index} resumed {whose} at step {self.resumed_step}"


def runs_in_words(runs: Sequence[RunSummary]) -> str:
    """``"3 runs; run 2 resumed run 1 at step 40; run 3 started afresh"`` (``"1 run"`` alone)."""
    if not runs:
        return "no runs in the event log"
    head = f"{len(runs)} run{'s' if len(runs) != 1 else ''}"
    return "; ".join([head, *(run.words(runs) for run in runs[1:])])
