"""Committed checkpoints -> which may be deleted (Orbax-style composable policies).

A policy says which checkpoints of one hash it *keeps*; ``a | b`` keeps what either keeps.
Whatever the policy, these are never deleted, because each is where users have lost data in
other systems: the newest committed checkpoint of every hash, every hash's first (fork or start)
checkpoint, and the checkpoint the run resumed from. Deletion is planned only when a checkpoint
has just been committed, and runs on the writer thread, never on the training thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Iterable
from typing import Any

from weightslab_events.bus import Bus, Subscription
from weightslab_events.events import Event
from weightslab_events.store import Store

__all__ = ["BestN", "EveryNSteps", "LatestN", "RetentionHandler", "RetentionPolicy", "plan_deletions"]

log = logging.getLogger("weightslab_events")

Record = dict[str, Any]


class RetentionPolicy:
    """Keeps a subset of one hash's committed checkpoints (records sorted by step)."""

    def keep(self, records: list[Record]) -> set[str]:
        raise NotImplementedError

    def __or__(self, other: RetentionPolicy) -> RetentionPolicy:
        return _Union((self, other))


class _Union(RetentionPolicy):
    def __init__(self, policies: Iterable[RetentionPolicy]) -> None:
        self.policies = tuple(policies)

    def keep(self, records: list[Record]) -> set[str]:
        return set().union(*(p.keep(records) for p in self.policies))

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.policies))


class LatestN(RetentionPolicy):
    """Keep the ``n`` checkpoints with the highest steps."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"LatestN needs n >= 1, got {n}")
        self.n = n

    def keep(self, records: list[Record]) -> set[str]:
        return {r["file"] for r in records[-self.n :]}

    def __repr__(self) -> str:
        return f"LatestN({self.n})"


class EveryNSteps(RetentionPolicy):
    """Keep checkpoints whose step is a multiple of ``n``."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"EveryNSteps needs n >= 1, got {n}")
        self.n = n

    def keep(self, records: list[Record]) -> set[str]:
        return {r["file"] for r in records if r["step"] % self.n == 0}

    def __repr__(self) -> str:
        return f"EveryNSteps({self.n})"


class BestN(RetentionPolicy):
    """Keep the ``n`` best checkpoints by a reported metric (``mode`` ``"min"`` or ``"max"``).

    A checkpoint saved before the metric was first reported has no value and is not kept by
    this policy (the invariants above still protect the newest and first ones).
    """

    def __init__(self, n: int, metric: str, mode: str = "min") -> None:
        if n < 1:
            raise ValueError(f"BestN needs n >= 1, got {n}")
        if mode not in ("min", "max"):
            raise ValueError(f"BestN mode must be 'min' or 'max', got {mode!r}")
        self.n, self.metric, self.mode = n, metric, mode

    def keep(self, records: list[Record]) -> set[str]:
        scored = [r for r in records if self.metric in (r.get("metrics") or {})]
        scored.sort(key=lambda r: r["metrics"][self.metric], reverse=self.mode == "max")
        return {r["file"] for r in scored[: self.n]}

    def __repr__(self) -> str:
        return f"BestN({self.n}, {self.metric!r}, {self.mode!r})"


def protected(records: list[Record], resumed_from: set[str]) -> set[str]:
    """Files no policy may delete: newest, first, and resumed-from."""
    if not records:
        return set()
    files = {records[-1]["file"], records[0]["file"]}
    files |= {r["file"] for r in records if r.get("reason") in ("fork", "start")}
    return files | (resumed_from & {r["file"] for r in records})


def plan_deletions(
    store: Store,
    hash: str,
    policy: RetentionPolicy,
    resumed_from: set[str] = frozenset(),
    runs: Collection[str | None] | None = None,
) -> list[Record]:
    """The records of ``hash`` that ``policy`` would delete, among those of ``runs`` if given."""
    records = store.records(hash)
    if runs is not None:
        records = [r for r in records if r.get("run") in runs]
    keep = policy.keep(records) | protected(records, set(resumed_from))
    return [r for r in records if r["file"] not in keep]


class RetentionHandler:
    """Applies a policy to a hash each time one of its checkpoints is committed.

    Only checkpoints of this run, and of the run it resumed from, are ever considered: a rerun
    beside an earlier run never deletes that run's checkpoints.
    """

    def __init__(self, store: Store, policy: RetentionPolicy) -> None:
        self.store = store
        self.policy = policy
        self.resumed_from: set[str] = set()
        self.runs: set[str | None] = {store.run.id if store.run is not None else None}
        self._lock = threading.Lock()
        self._bus: Bus | None = None
        self._subscriptions: list[Subscription] = []

    def connect(self, bus: Bus) -> RetentionHandler:
        self._bus = bus
        self._subscriptions = [
            bus.connect("checkpoint_saved", self.on_saved, group="sink"),
            bus.connect("resumed", self.on_resumed, group="sink"),
        ]
        return self

    def close(self) -> None:
        for subscription in self._subscriptions:
            subscription.close()

    def on_resumed(self, event: Event) -> None:
        if event.data.get("file"):
            self.resumed_from.add(event.data["file"])
            self.runs.add(event.data.get("from_run"))

    def on_saved(self, event: Event) -> None:
        with self._lock:
            doomed = plan_deletions(self.store, event.data["hash"], self.policy, self.resumed_from, self.runs)
            for record in doomed:
                self._delete(event.data["hash"], record)

    def _delete(self, hash: str, record: Record) -> None:
        self.store.delete(hash, record["file"])
        assert self._bus is not None
        self._bus.emit(
            "checkpoint_deleted", hash=hash, step=record["step"], file=record["file"], policy=repr(self.policy)
        )
