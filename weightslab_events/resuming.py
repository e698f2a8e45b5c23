"""Resuming: verifying committed checkpoints and restoring one into the live objects.

A mixin of :class:`~weightslab_events.system.CheckpointSystem`, kept apart because restoring is
its own idea: which checkpoint to trust (verified newest first, a corrupt one reported and
skipped, never silently), what to put back (models, optimizers with their configured values,
schedulers, statefuls, RNG states, step, reset counts, hyperparameters), and how the experiment
hash follows when another hash's checkpoint is restored.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from typing import TYPE_CHECKING, Any

import yaml

from .errors import CheckpointNotFoundError, ManifestError
from .fingerprint import canonical, from_canonical
from .reader import resolve_prefix
from .restore import check_architecture, restore_stateful
from .snapshot import restore_rng
from .store import Fault
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
        records = [r for r in reversed(stored) if step is None or r["step"] == step]
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
            self.bus.emit("resumed", exp=hash, step=payload["step"], hash=hash, file=record["file"])
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

    def _restore(self, payload: dict[str, Any], where: str) -> None:
        sharded = bool(payload.get("sharded"))  # models and optimizers were loaded through DCP
        with self._lock:
            models = {n: w.model for n, w in self._models.items()}
            if not sharded:
                check_architecture(models, payload["models"], where)
                for name, model in models.items():
                    model.load_state_dict(payload["models"][name])
            for name, watch in self._optimizers.items():
                if name in payload["optimizers"] or sharded:
                    if not sharded:
                        watch.optimizer.load_state_dict(payload["optimizers"][name])
                    watch.adopt()
                    watch.configured = copy.deepcopy(payload.get("optimizer_config", {}).get(name, watch.configured))
            for entry in self.ledger.entries("scheduler"):
                if entry.name in payload.get("schedulers", {}):
                    entry.obj.load_state_dict(payload["schedulers"][entry.name])
            for entry in self.ledger.entries("stateful"):
                if entry.name in payload.get("statefuls", {}):
                    restore_stateful(entry.obj, payload["statefuls"][entry.name])
            for name, watch in self._hyperparams.items():
                saved = payload.get("hyperparams", {}).get(name)
                if saved is not None and canonical(watch.data, name) != saved:
                    watch.data.clear()
                    watch.data.update(from_canonical(saved))
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
        """The component descriptions ``hash`` was created with (config and architecture files)."""
        try:
            config = yaml.safe_load(self.store.config_path(hash).read_text(encoding="utf-8")) or {}
            models = json.loads(self.store.architecture_path(hash, "json").read_text(encoding="utf-8"))
        except (OSError, ValueError, yaml.YAMLError):
            return {}
        return {key: canonical(value) for key, value in {**config, **models}.items()}

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
            step = self.resume(hash)
        except CheckpointNotFoundError as error:
            log.warning("automatic resume found no usable checkpoint: %s", error)
            return
        # Once: re-registering a rebuilt optimizer before the first step must not resume again.
        self._auto_resume = False
        log.info("resumed experiment %s at step %d", hash, step)
