"""Resuming: verifying committed checkpoints and restoring one into the live objects.

A mixin of :class:`~weightslab_events.system.CheckpointSystem`, kept apart because restoring is
its own idea: which checkpoint to trust, what to put back (models, optimizers with their
configured values, schedulers, statefuls, RNG states, step, reset counts, hyperparameters), and
how the experiment hash follows when another hash's checkpoint is restored.

Which checkpoint, and why: a hash may hold checkpoints of several runs (a crash and a restart
continue one line of training; a fresh rerun starts another beside it). Resuming continues the
**newest run** (run ids sort by start time) at its newest good step, since that is the training
the user last did; older runs are tried only when every checkpoint of the newer ones fails to
verify (each failure reported, never silent). The log line of a resume names the hash, step and
run it continued, and any newer checkpoints it did not choose (in descendant hashes, or later
steps of other runs), so a user who expected another one sees why. One resume emits exactly one
``resumed`` event: registering further objects under the same hash does not resume again.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import yaml

from . import safe_yaml
from .errors import CheckpointNotFoundError, ManifestError
from .fingerprint import canonical
from .listedfiles import DamagedFileError, read_verified
from .reader import resolve_prefix
from .restore import check_architecture, check_optimizers, restore_stateful
from .snapshot import restore_rng
from .store import Fault
from .stored_hyperparams import keep_number_types, number_types, restore_hyperparams
from .verifying import check_root

if TYPE_CHECKING:
    from pathlib import Path

    from .bus import Bus
    from .distributed import Coordinator
    from .ledger import Ledger
    from .saver import Saver
    from .store import Store
    from .watch import HyperparamWatch, ModelWatch, OptimizerWatch

__all__ = ["Resuming"]

log = logging.getLogger("weightslab_events")


class Resuming:
    """``verify()``, ``resume()`` and the automatic resume of ``resume=True``."""

    bus: Bus
    store: Store
    ledger: Ledger
    hashing: Any
    experiment_hash: str | None
    _lock: threading.RLock
    _models: dict[str, ModelWatch]
    _optimizers: dict[str, OptimizerWatch]
    _hyperparams: dict[str, HyperparamWatch]
    _auto_resume: bool
    _distributed: Coordinator | None
    saver: Saver
    _complete_pending: Callable[..., None]
    _resumed_payload: dict[str, Any] | None

    def verify(self) -> list[str]:
        """Check every file of every experiment (as ``weightslab-events verify`` does).

        Each fault (a checkpoint, a manifest, a config or architecture file, a link) is logged,
        emitted as ``checkpoint_corrupted`` and returned; a damaged one never raises.
        """
        faults = []
        for name, found in check_root(self.store):
            if name == "log":  # the live log is being written: the command line checks it
                continue
            for fault in found:
                self._report_corrupt(fault.hash, fault)
                faults.append(str(fault))
        return faults

    def _report_damaged_manifest(self, hash: str, error: Exception) -> None:
        problem = error.problem if isinstance(error, ManifestError) else f"cannot be read: {error}"
        self._report_corrupt(hash, Fault(hash, self.store.manifest_path(hash), problem))

    def _report_corrupt(self, hash: str, fault: Fault) -> None:
        log.error("checkpoint %s is not usable: %s", fault.file, fault.problem)
        self.bus.emit("checkpoint_corrupted", hash=hash, file=str(fault.file), problem=fault.problem)

    def resume(self, hash: str | None = None, step: int | None = None) -> int:
        """Restore the newest good checkpoint of ``hash`` (default: the current one); returns its step.

        ``hash`` may be any unique prefix, as on the command line. A corrupt checkpoint is
        reported and skipped for the previous good one; never silently. A damaged manifest is
        reported (``checkpoint_corrupted``) and raises :class:`CheckpointNotFoundError`.
        """
        hash = hash or self.experiment_hash
        if hash is None:
            raise CheckpointNotFoundError("nothing is registered yet, so there is no experiment to resume")
        if not self.store.has_experiment(hash):
            hash = resolve_prefix(self.store.hashes(), hash)
        try:
            stored = self.store.records(hash)
        except (ManifestError, OSError) as error:
            self._report_damaged_manifest(hash, error)
            raise CheckpointNotFoundError(f"experiment {hash} cannot be resumed: {error}") from None
        records = [r for r in resume_order(stored) if step is None or r["step"] == step]
        for record in records:
            fault = self.store.check(hash, record)
            path = self.store.file_of(hash, record)
            if fault is None:
                try:
                    payload = self._load_checkpoint(hash, record, path)
                except Exception as error:
                    fault = Fault(hash, path, f"cannot be loaded: {error}")
            if fault is not None:
                self._report_corrupt(hash, fault)
                continue
            self._restore(payload, str(path))
            not_chosen = self._not_chosen(hash, record)
            log.info("%s", describe_resume(hash, record, not_chosen))
            self.bus.emit(
                "resumed",
                exp=hash,
                step=payload["step"],
                hash=hash,
                file=record["file"],
                from_run=record.get("run"),
                not_chosen=not_chosen[:MAX_NOT_CHOSEN],
            )
            self._announce_restored(hash)
            return int(payload["step"])
        wanted = f"step {step}" if step is not None else "any step"
        raise CheckpointNotFoundError(f"no good checkpoint of experiment {hash!r} at {wanted}")

    def _load_checkpoint(self, hash: str, record: dict[str, Any], path: Path) -> dict[str, Any]:
        """The checkpoint's payload; a multi-rank one is completed with this rank's part (and shards)."""
        payload = self.store.load(path)
        if not record.get("parts"):
            return payload
        from .distributed import load_parts

        if record.get("sharded"):
            self.saver.flush()  # DCP's load shares the writer's group
        models = {n: w.model for n, w in self._models.items()}
        optimizers = {n: w.optimizer for n, w in self._optimizers.items()}
        return load_parts(self.store, hash, record, payload, self._distributed, models, optimizers)

    def _not_chosen(self, hash: str, chosen: dict[str, Any]) -> list[dict[str, Any]]:
        """Checkpoints newer than ``chosen``: in descendant hashes, or other runs' later steps."""
        found = []
        for record in self.store.records(hash):
            if record.get("run") != chosen.get("run") and record["step"] > chosen["step"]:
                found.append(_summary(hash, record))
        for descendant in self._descendants(hash):
            for record in self.store.records(descendant):
                if str(record.get("created", "")) > str(chosen.get("created", "")):
                    found.append(_summary(descendant, record))
        return sorted(found, key=lambda r: r["created"], reverse=True)

    def _descendants(self, hash: str) -> list[str]:
        parents: dict[str, str | None] = {}
        for other in self.store.hashes():
            try:
                parents[other] = self.store.manifest(other).get("parent")
            except (OSError, ValueError):
                continue  # a damaged manifest is reported by verify, not here
        found: list[str] = []
        frontier = [hash]
        while frontier:
            current = frontier.pop()
            children = sorted(h for h, p in parents.items() if p == current and h not in found and h != hash)
            found.extend(children)
            frontier.extend(children)
        return found

    def _restore(self, payload: dict[str, Any], where: str) -> None:
        sharded = bool(payload.get("sharded"))  # models and optimizers were loaded through DCP
        self._complete_pending()  # a pending checkpoint holds the state before the resume
        with self._lock:
            models = {n: w.model for n, w in self._models.items()}
            if not sharded:
                check_architecture(models, payload["models"], where)
                check_optimizers({n: w.optimizer for n, w in self._optimizers.items()}, payload, where)
                for name, model in models.items():
                    model.load_state_dict(payload["models"][name])
            for name, watch in self._optimizers.items():
                if name in payload["optimizers"] or sharded:
                    types = number_types(watch.optimizer.param_groups)
                    if not sharded:
                        watch.optimizer.load_state_dict(payload["optimizers"][name])
                    for group, group_types in zip(watch.optimizer.param_groups, types, strict=False):
                        keep_number_types(group, group_types)
                    watch.adopt()
                    watch.configured = copy.deepcopy(payload.get("optimizer_config", {}).get(name, watch.configured))
                    for values, group_types in zip(watch.configured, types, strict=False):
                        keep_number_types(values, group_types)
            for entry in self.ledger.entries("scheduler"):
                if entry.name in payload.get("schedulers", {}):
                    entry.obj.load_state_dict(payload["schedulers"][entry.name])
            for entry in self.ledger.entries("stateful"):
                if entry.name in payload.get("statefuls", {}):
                    restore_stateful(entry.obj, payload["statefuls"][entry.name])
            for name, watch in self._hyperparams.items():
                saved = payload.get("hyperparams", {}).get(name)
                if saved is not None:
                    restore_hyperparams(watch.data, saved)
            for name, counts in payload.get("reset_counts", {}).items():
                watch = self._models.get(name)
                if watch is not None:
                    modules = dict(watch.model.named_modules())
                    for path, count in counts.items():
                        if path in modules:
                            watch.reset_counts[modules[path]] = count
            restore_rng(payload.get("rng", {}))
            self.bus.state.step = int(payload["step"])
            self._resumed_payload = payload

    def _announce_restored(self, hash: str) -> None:
        """Re-describe every component that differs from what ``hash`` stored, so the hash follows.

        A resume restores values but not everything that defines the experiment: a model cast
        to float64 before ``resume()`` stays float64. Each live description is compared with the
        resumed experiment's stored one (and with the hashing handler's), and a difference is
        announced after ``resumed``, so it forks from the resumed hash at the next step instead
        of saving float64 weights under the float32 hash.
        """
        stored = self._stored_components(hash)
        descriptions: dict[str, tuple[str, Any]] = {}
        for name, watch in self._models.items():
            watch.refresh()
            descriptions[f"model:{name}"] = ("state_changed", watch.describe())
        for name, optimizer_watch in self._optimizers.items():
            descriptions[f"optimizer:{name}"] = ("optimizer_param_changed", optimizer_watch.describe())
        for name, hp_watch in self._hyperparams.items():
            hp_watch.accept()
            descriptions[f"hyperparams:{name}"] = ("hyperparams_changed", hp_watch.describe_now())
        for key, (event_type, description) in descriptions.items():
            live = canonical(description)
            if canonical(self.hashing.components.get(key)) == live and stored.get(key, live) == live:
                continue
            name = key.split(":", 1)[1]
            self.bus.emit(
                event_type, src=name, name=name, kind="resume", key="*", source="resume", description=description
            )

    def _stored_components(self, hash: str) -> dict[str, Any]:
        """The component descriptions ``hash`` was created with (config and architecture files).

        Each file is checked against the manifest's size and SHA-256 *before* it is parsed: a
        damaged or crafted one (a YAML alias bomb would hang the walk below) is reported as
        ``checkpoint_corrupted`` and left out, so the hash follows the live objects alone.
        """
        try:
            listed = self.store.manifest(hash).get("files") or {}
        except (ManifestError, OSError):
            return {}
        stored: dict[str, Any] = {}
        for path, parse in (
            (self.store.config_path(hash), safe_yaml.load),
            (self.store.architecture_path(hash, "json"), json.loads),
        ):
            expected = listed.get(path.relative_to(self.store.exp_dir(hash)).as_posix())
            try:
                value = parse(read_verified(path, expected).decode("utf-8")) or {}
                if not isinstance(value, dict):
                    raise ValueError("it does not hold a mapping")
                stored.update({key: canonical(item) for key, item in value.items()})
            except DamagedFileError as error:
                if expected is not None or error.problem != "file is missing":
                    self._report_corrupt(hash, Fault(hash, path, error.problem))
            except (ValueError, yaml.YAMLError, RecursionError) as error:
                self._report_corrupt(hash, Fault(hash, path, f"cannot be parsed: {' '.join(str(error).split())}"))
        return stored

    def _maybe_auto_resume(self) -> None:
        if not self._auto_resume or self.experiment_hash is None:
            return
        hash = self.experiment_hash
        try:
            if not self.store.has_experiment(hash) or not self.store.records(hash):
                return
        except (ManifestError, OSError) as error:  # a damaged experiment is skipped, and said so
            self._report_damaged_manifest(hash, error)
            return
        try:
            self.resume(hash)
        except CheckpointNotFoundError as error:
            log.warning("automatic resume found no usable checkpoint: %s", error)
            return
        # Once: re-registering a rebuilt optimizer before the first step must not resume again.
        self._auto_resume = False


#: At most this many not-chosen checkpoints are named in a ``resumed`` event (the log line names all).
MAX_NOT_CHOSEN = 20


def resume_order(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Candidates to resume from, best first: the newest run's newest step, then older runs.

    Records written before runs existed (no ``run``) count as the oldest run.
    """
    return sorted(records, key=lambda r: (r.get("run") or "", r["step"], str(r.get("created", ""))), reverse=True)


def _summary(hash: str, record: dict[str, Any]) -> dict[str, Any]:
    return {
        "hash": hash,
        "step": record["step"],
        "run": record.get("run"),
        "file": record["file"],
        "created": str(record.get("created", "")),
    }


def describe_resume(hash: str, record: dict[str, Any], not_chosen: list[dict[str, Any]]) -> str:
    """The one log line of a resume: what it continued, and what newer it did not choose."""
    line = f"resumed experiment {hash} at step {record['step']} of run {record.get('run') or '(before runs)'}"
    line += f" ({record['file']})"
    if not_chosen:
        named = ", ".join(f"{c['hash']} step {c['step']} (run {c['run'] or '(before runs)'})" for c in not_chosen)
        line += f"; newer checkpoints not chosen: {named}"
    return line
