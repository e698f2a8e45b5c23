"""``gc``: deleting the checkpoints a retention policy does not keep, from the command line.

Policy: a damaged experiment is skipped (its manifest cannot say what is safe to delete), and so
is one whose checkpoints to keep do not all verify (checksums): deleting the good ones beside a
corrupt newest one would leave nothing to resume from. Deletion goes through
:meth:`Store.delete`, which removes only regular files that the manifest lists inside
``checkpoints/<hash>/model/`` of this root and never follows a symbolic link.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .handlers.retention import BestN, EveryNSteps, LatestN, RetentionPolicy, plan_deletions
from .reader import Root
from .store import Fault

__all__ = ["Collection", "collect", "policy_of"]


def policy_of(keep_last: int | None, every: int | None, best: str | None, best_n: int) -> RetentionPolicy | None:
    """The union of the policies given on the command line, or ``None`` when none was."""
    policies: list[RetentionPolicy] = []
    if keep_last:
        policies.append(LatestN(keep_last))
    if every:
        policies.append(EveryNSteps(every))
    if best:
        name, _, mode = best.partition(":")
        policies.append(BestN(best_n, name, mode or "min"))
    if not policies:
        return None
    policy = policies[0]
    for extra in policies[1:]:
        policy = policy | extra
    return policy


@dataclass
class Collection:
    dry_run: bool
    policy: str
    deleted: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def freed(self) -> int:
        return sum(item["size"] for item in self.deleted)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "policy": self.policy,
            "deleted": self.deleted,
            "freed": self.freed,
            "skipped": [{"hash": h, "why": why} for h, why in self.skipped],
        }


def collect(root: Root, policy: RetentionPolicy, dry_run: bool) -> Collection:
    """Apply ``policy`` to every sound experiment of ``root``; paths are relative to the root."""
    result = Collection(dry_run, repr(policy))
    for exp in root.experiments():
        if exp.damaged:
            result.skipped.append((exp.hash, f"damaged ({exp.damage})"))
            continue
        doomed = plan_deletions(root.store, exp.hash, policy)
        fault = _fault_among_kept(root, exp.hash, doomed)
        if fault is not None:
            result.skipped.append((exp.hash, f"a checkpoint it would keep is damaged ({fault}); run verify"))
            continue
        for record in doomed:
            path = root.store.file_of(exp.hash, record)
            if not dry_run:
                root.store.delete(exp.hash, record["file"])
            result.deleted.append(
                {
                    "hash": exp.hash,
                    "path": path.relative_to(root.store.root).as_posix(),
                    "step": record["step"],
                    "reason": record["reason"],
                    "size": record["size"],
                }
            )
    return result


def _fault_among_kept(root: Root, hash: str, doomed: list[dict[str, Any]]) -> Fault | None:
    """The first checkpoint ``gc`` would keep in ``hash`` that does not verify, if any."""
    deleted = {record["file"] for record in doomed}
    for record in root.store.records(hash):
        if record["file"] not in deleted:
            fault = root.store.check(hash, record)
            if fault is not None:
                return fault
    return None
