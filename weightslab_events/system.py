"""The checkpoint system: wires the ledger, the watches, the bus and the built-in handlers.

Threads and consistency, the policy in one place:

- The *training thread* is the one that calls ``optimizer.step()``. Snapshots are taken only on
  it (or on any thread before training starts, or while closing). A save decided on another
  thread (an edit from a UI) is deferred to the next step boundary, so no snapshot ever reads a
  model halfway through an update and no thread ever waits for another: no torn snapshot, no
  deadlock.
- A save due at step ``k`` copies weights, optimizer state, statefuls and RNG states in the
  optimizer's post-step hook, and completes (scheduler state, the lrs the scheduler just set,
  metrics) at the next boundary: the next step's pre-hook, ``wait()`` or ``close()``. In the usual
  loop ``scheduler.step()`` runs between the two, so a resumed run's scheduler is not one step
  behind.
- Each step's own cost is the cheap checks in :mod:`.watch` plus one ``step`` event.
"""

from __future__ import annotations

import copy
import io
import itertools
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .architecture import architecture_text
from .bus import Bus
from .errors import CheckpointError
from .fingerprint import canonical, describe_scheduler
from .handlers import CheckpointingHandler, Decision, EventLogHandler, HashingHandler, RetentionHandler, RetentionPolicy
from .hyperparams import read_consistently
from .ledger import LEDGER, Entry, Ledger
from .restore import restore_stateful, state_of_stateful
from .resuming import Resuming
from .saver import SaveJob, Saver
from .snapshot import BufferPool, capture_rng, copy_state
from .store import FileSystem, Store
from .watch import (
    HyperparamWatch,
    ModelWatch,
    OptimizerWatch,
    WarnOnce,
    install_registration_hooks,
    untrained_parameters,
)

if TYPE_CHECKING:
    from .distributed import Coordinator

__all__ = ["CheckpointSystem", "PAYLOAD_FORMAT_VERSION", "describe_hyperparams"]

log = logging.getLogger("weightslab_events")

PAYLOAD_FORMAT_VERSION = 1


def _coordinator(bus: Bus, components: Callable[[], dict[str, Any]]) -> Coordinator | None:
    """The rank's coordinator under an initialised ``torch.distributed``; ``None`` in a single process."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    from .distributed import Coordinator

    return Coordinator(bus, components)


def describe_hyperparams(name: str, data: dict) -> dict[str, Any]:
    """The hash's description of a registered dict (read safely while other threads edit it)."""
    return {"kind": "hyperparams", "values": read_consistently(lambda: canonical(data, name))}


_warned_architectures: set[type] = set()


def _meta_copy(model: nn.Module) -> nn.Module | None:
    """The model's structure with every tensor on the meta device: no weights, cheap to copy.

    The pickled architecture is a convenience, not part of the checkpoint: a model that cannot
    be pickled (a class defined inside a function) gets a warning once per class and its
    checkpoints are saved without it.
    """
    memo: dict[int, Any] = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if isinstance(tensor, nn.parameter.UninitializedTensorMixin):
            continue
        meta = torch.empty_like(tensor, device="meta")
        memo[id(tensor)] = nn.Parameter(meta, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else meta
    try:
        meta = copy.deepcopy(model, memo)
        torch.save(meta, io.BytesIO())
    except Exception as error:
        if type(model) not in _warned_architectures:
            _warned_architectures.add(type(model))
            log.warning(
                "the architecture of %s cannot be pickled (%s: %s); its checkpoints are saved without "
                "the architecture pickle (define the class at module level to keep it)",
                type(model).__qualname__,
                type(error).__name__,
                error,
            )
        return None
    return meta


class CheckpointSystem(Resuming):
    """Automatic, per-experiment checkpoints of the objects registered in a ledger.

    Options:

    - ``root_log_dir``: the experiments root (created if missing).
    - ``checkpoint_frequency``: a periodic checkpoint every this many steps; ``None`` for none
      (forks, resets and the final checkpoint are still saved).
    - ``max_pending``: snapshots held in memory at once (each about the size of the state).
    - ``when_busy``: ``"block"`` (default) or ``"skip"`` a periodic save when all are pending.
    - ``retention``: a :class:`~weightslab_events.handlers.retention.RetentionPolicy`, e.g.
      ``LatestN(3) | BestN(1, "loss")``.
    - ``resume``: restore the newest good checkpoint as soon as the registered objects match a
      stored experiment (restart after a crash with no code change).
    - ``step_optimizer``: the registered name of the optimizer whose steps count (default: the
      first registered).
    - ``strict_handlers``: re-raise handler errors instead of reporting them (for tests).
    - ``close_timeout``: seconds ``close()`` waits for pending writes (and a required save for a slot).
    - ``file_system``: the OS seam of the store, for fault injection in tests.
    """

    def __init__(
        self,
        root_log_dir: str | Path = "./experiments",
        checkpoint_frequency: int | None = 100,
        *,
        max_pending: int = 1,
        when_busy: str = "block",
        retention: RetentionPolicy | None = None,
        resume: bool = False,
        step_optimizer: str | None = None,
        strict_handlers: bool = False,
        close_timeout: float = 60.0,
        file_system: FileSystem | None = None,
        ledger: Ledger = LEDGER,
    ) -> None:
        if checkpoint_frequency is not None and (
            isinstance(checkpoint_frequency, bool)
            or not isinstance(checkpoint_frequency, int)
            or checkpoint_frequency < 1
        ):
            raise ValueError(f"checkpoint_frequency must be a positive integer or None, got {checkpoint_frequency!r}")
        # Resolved now: a later os.chdir() must not split the checkpoints over two trees.
        self.store = Store(os.path.abspath(os.path.expanduser(root_log_dir)), file_system)
        stale = self.store.open()
        self.bus = Bus(strict=strict_handlers)
        self._distributed = _coordinator(self.bus, lambda: self.hashing.components)
        self.ledger = ledger
        self.close_timeout = close_timeout
        self._lock = threading.RLock()
        self._models: dict[str, ModelWatch] = {}
        self._optimizers: dict[str, OptimizerWatch] = {}
        self._hyperparams: dict[str, HyperparamWatch] = {}
        self._checks: list[Callable[[], None]] = []
        self._hooks: dict[str, list[Any]] = {}
        self._step_optimizer = step_optimizer
        self._driver: torch.optim.Optimizer | None = None
        self._training_thread: int | None = None
        self._in_post_step = False
        self._user_steps = False
        self._unfinished: tuple[Decision, BufferPool, dict[str, Any]] | None = None
        self._deferred: list[Decision] = []
        self._coverage_known = False
        self._warn_once = WarnOnce()
        self._metrics: dict[str, float] = {}
        self._auto_resume = resume
        self._resumed_payload: dict[str, Any] | None = None
        self._closed = False
        self._closing = False

        commit = self._distributed.commit if self._distributed is not None else None
        self.saver = Saver(
            self.store, self._emit_from_worker, max_pending=max_pending, when_busy=when_busy, commit=commit
        )
        self.hashing = HashingHandler().connect(self.bus)
        self.checkpointing = CheckpointingHandler(checkpoint_frequency, save=self._save).connect(self.bus)
        deletes = retention is not None and (self._distributed is None or self._distributed.writes_shared_state)
        self.retention = RetentionHandler(self.store, retention).connect(self.bus) if deletes else None
        log_path = self.store.log_path if self._distributed is None else self._distributed.log_path(self.store.log_path)
        self.event_log = EventLogHandler(log_path).connect(self.bus)
        self.bus.emit("started", root=str(self.store.root), checkpoint_frequency=checkpoint_frequency)
        for path in stale:
            log.warning("removed an uncommitted temporary left by a crash: %s", path)
        ledger.add_listener(self._on_ledger)
        for entry in ledger.entries():
            self._attach(entry, replaced=False)
        self._maybe_auto_resume()

    # -- public state -----------------------------------------------------------------------

    @property
    def experiment_hash(self) -> str | None:
        return self.hashing.current

    @property
    def step(self) -> int:
        return self.bus.state.step

    @property
    def root(self) -> Path:
        return self.store.root

    # -- the ledger -------------------------------------------------------------------------

    def _on_ledger(self, action: str, entry: Entry, previous: Entry | None) -> None:
        with self._lock:
            if previous is not None:
                self._detach(previous)
            if action == "unregister":
                self._detach(entry)
                self.bus.emit("unregistered", src=entry.name, kind=entry.kind, name=entry.name)
                return
            self._attach(entry, replaced=previous is not None)
            self._maybe_auto_resume()

    def _attach(self, entry: Entry, replaced: bool) -> None:
        name, obj = entry.name, entry.obj
        announce: dict[str, Any] = {"name": name, "kind": entry.kind, "replaced": replaced}
        if entry.kind == "model":
            install_registration_hooks()
            watch = ModelWatch(name, obj, self._notify)
            self._models[name] = watch
            self._checks.append(watch.check)
            announce["description"] = watch.describe()
        elif entry.kind == "optimizer":
            optimizer_watch = OptimizerWatch(name, obj, self._notify, self._scheduler_name)
            self._optimizers[name] = optimizer_watch
            self._checks.append(optimizer_watch.check)
            self._hooks[name] = [
                obj.register_step_pre_hook(self._before_step),
                obj.register_step_post_hook(self._after_step),
            ]
            self._choose_driver()
            announce["description"] = optimizer_watch.describe()
        elif entry.kind == "hyperparams":
            hp_watch = HyperparamWatch(name, obj, self._notify, lambda data=obj, n=name: describe_hyperparams(n, data))
            self._hyperparams[name] = hp_watch
            self._checks.append(hp_watch.check)
            announce["description"] = describe_hyperparams(name, obj)
        elif entry.kind == "scheduler":
            announce["description"] = describe_scheduler(obj)
        elif entry.kind == "stateful" and self._resumed_payload is not None:
            saved = self._resumed_payload.get("statefuls", {})
            if name in saved:
                restore_stateful(obj, saved[name])
        self._coverage_known = False
        self.bus.emit(f"{entry.kind}_registered", src=name, **announce)

    def _detach(self, entry: Entry) -> None:
        watch: Any = self._models.pop(entry.name, None) or self._optimizers.pop(entry.name, None)
        watch = watch or self._hyperparams.pop(entry.name, None)
        if watch is None:
            return
        self._checks = [c for c in self._checks if getattr(c, "__self__", None) is not watch]
        if isinstance(watch, ModelWatch):
            watch.release()
        for handle in self._hooks.pop(entry.name, []):
            handle.remove()
        if isinstance(watch, OptimizerWatch) and watch.optimizer is self._driver:
            self._driver = None
            self._choose_driver()

    def _choose_driver(self) -> None:
        if self._step_optimizer is not None:
            chosen = self._optimizers.get(self._step_optimizer)
            self._driver = chosen.optimizer if chosen else None
        elif self._driver is None and self._optimizers:
            self._driver = next(iter(self._optimizers.values())).optimizer

    def _scheduler_name(self, scheduler: Any) -> str | None:
        return next((e.name for e in self.ledger.entries("scheduler") if e.obj is scheduler), None)

    def _notify(self, type: str, src: str | None = None, **data: Any) -> None:
        if type == "layer_edited":
            self._coverage_known = False
        self.bus.emit(type, src=src, **data)

    def _check_coverage(self) -> None:
        """Warn once per set of trainable parameters that no registered optimizer updates."""
        self._coverage_known = True
        missing = untrained_parameters(self._models, [w.optimizer for w in self._optimizers.values()])
        if missing:
            shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            self._warn_once(
                ("untrained", tuple(missing)),
                f"no registered optimizer updates the trainable parameters {shown}, so they never train "
                "(a layer swapped in after the optimizer was built?). Build the optimizer (and its "
                "scheduler) again over model.parameters() and register them again.",
            )

    def _emit_from_worker(self, type: str, hash: str, step: int, **data: Any) -> None:
        self.bus.emit(type, src="saver", exp=hash, step=step, hash=hash, **data)

    # -- steps ------------------------------------------------------------------------------

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if optimizer is not self._driver:
            return
        self._training_thread = threading.get_ident()
        if self._unfinished is not None:
            self._finish_capture()
        for check in self._checks:
            check()
        if not self._coverage_known:
            self._check_coverage()
        if self._deferred:
            self._run_deferred()
        if self._distributed is not None:
            self._distributed.begin_check(self.step, self.experiment_hash)

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if optimizer is not self._driver:
            return
        if self._distributed is not None:
            self._distributed.end_check(self.experiment_hash)
        if self._user_steps:
            return
        self._auto_resume = False
        self._resumed_payload = None
        state = self.bus.state
        state.step += 1
        self._in_post_step = True
        try:
            self.bus.emit("step", step=state.step, driver="auto")
        finally:
            self._in_post_step = False

    def check_now(self) -> None:
        """Run every step-boundary check at once (what ``optimizer.step()`` does first)."""
        with self._lock:
            for check in list(self._checks):
                check()

    # -- saving -----------------------------------------------------------------------------

    def _save(self, decision: Decision) -> None:
        """Called by the checkpointing handler for each decision it makes."""
        off_thread = self._training_thread not in (None, threading.get_ident())
        if off_thread and not self._closing:
            with self._lock:
                self._deferred.append(decision)
            return
        self._capture(decision)

    def _run_deferred(self) -> None:
        with self._lock:
            deferred, self._deferred = self._deferred, []
        for decision in deferred:
            self._capture(decision)

    def _capture(self, decision: Decision) -> None:
        if self._unfinished is not None:
            self._finish_capture()
        pool = self.saver.reserve(decision.required, timeout=self.close_timeout)
        if pool is None:
            log.warning(
                "skipped the %s checkpoint of %s at step %d: the writer is still busy",
                decision.reason,
                decision.hash,
                decision.step,
            )
            self.bus.emit(
                "checkpoint_skipped",
                hash=decision.hash,
                step=decision.step,
                reason=decision.reason,
                why="the writer is still writing earlier checkpoints (max_pending reached)",
            )
            return
        try:
            with torch.no_grad(), self._lock:
                model_states, optimizer_states, sharded = self._state_dicts()
                payload = {
                    "format_version": PAYLOAD_FORMAT_VERSION,
                    "experiment_hash": decision.hash,
                    "step": decision.step,
                    "reason": decision.reason,
                    "models": {n: copy_state(state, pool, ("m", n)) for n, state in model_states.items()},
                    "optimizers": {n: copy_state(state, pool, ("o", n)) for n, state in optimizer_states.items()},
                    "statefuls": {
                        e.name: copy_state(state_of_stateful(e.obj, e.name), pool, ("s", e.name))
                        for e in self.ledger.entries("stateful")
                    },
                    "rng": capture_rng(),
                }
                if sharded:
                    payload["sharded"] = True
        except Exception as error:
            self.saver.release(pool)
            self._report_capture_failure(decision, error)
            return
        self._unfinished = (decision, pool, payload)
        if not self._in_post_step:
            self._finish_capture()

    def _state_dicts(self) -> tuple[dict[str, Any], dict[str, Any], bool]:
        """The registered models' and optimizers' state dicts; sharded (FSDP2) ones come keyed by name."""
        models = {n: w.model for n, w in self._models.items()}
        optimizers = {n: w.optimizer for n, w in self._optimizers.items()}
        if self._distributed is not None:
            return self._distributed.state_dicts(models, optimizers)
        return {n: m.state_dict() for n, m in models.items()}, {n: o.state_dict() for n, o in optimizers.items()}, False

    def _finish_capture(self) -> None:
        unfinished, self._unfinished = self._unfinished, None
        if unfinished is None:
            return
        decision, pool, payload = unfinished
        try:
            with self._lock:
                self._complete_payload(payload, pool)
                info = {} if self.store.has_experiment(decision.hash) else self._experiment_info(decision)
                job = SaveJob(decision.hash, decision.step, decision.reason, payload, info, dict(self._metrics))
            self.saver.submit(pool, job)
        except Exception as error:
            self.saver.release(pool)
            self._report_capture_failure(decision, error)

    def _complete_payload(self, payload: dict[str, Any], pool: BufferPool) -> None:
        for name, watch in self._optimizers.items():
            if name not in payload["optimizers"]:
                continue  # replicated state another rank writes
            saved_groups = payload["optimizers"][name]["param_groups"]
            # Groups added since the copy (add_param_group) belong to the next checkpoint.
            live_groups = watch.optimizer.param_groups[: len(saved_groups)]
            for saved, live in zip(saved_groups, live_groups, strict=True):
                saved.update(copy_state({k: v for k, v in live.items() if k != "params"}, pool, ("g", name)))
        payload["optimizer_config"] = {n: copy_state(w.configured, pool, ("f", n)) for n, w in self._optimizers.items()}
        payload["schedulers"] = {
            e.name: copy_state(e.obj.state_dict(), pool, ("c", e.name)) for e in self.ledger.entries("scheduler")
        }
        payload["hyperparams"] = {
            n: read_consistently(lambda w=w, n=n: canonical(w.data, n)) for n, w in self._hyperparams.items()
        }
        payload["reset_counts"] = {
            n: {w.path_of(m): c for m, c in w.reset_counts.items() if w.contains(m)} for n, w in self._models.items()
        }

    def _experiment_info(self, decision: Decision) -> dict[str, Any]:
        components = self.hashing.components
        return {
            "parent": decision.parent,
            "fork_step": decision.fork_step,
            "cause": "; ".join(c for c in decision.causes if c) or None,
            "config": {k: v for k, v in components.items() if not k.startswith("model:")},
            "description": {k: v for k, v in components.items() if k.startswith("model:")},
            "architecture": {n: meta for n, w in self._models.items() if (meta := _meta_copy(w.model)) is not None}
            or None,
            "architecture_text": "\n\n".join(f"# {n}\n{architecture_text(w.model)}" for n, w in self._models.items()),
        }

    def _report_capture_failure(self, decision: Decision, error: Exception) -> None:
        reason = f"{type(error).__name__}: {error}"
        log.warning("checkpoint %s at step %d failed while copying: %s", decision.hash, decision.step, reason)
        self.saver.record_failure(f"{decision.hash}_step_{decision.step:06d}", reason)
        self.bus.emit("checkpoint_failed", hash=decision.hash, step=decision.step, reason=decision.reason, error=reason)

    # -- the explicit API of the original design --------------------------------------------

    def checkpoint_on_step(self, step: int) -> None:
        """Announce the user's step number; from now on user steps drive periodic saves."""
        self._user_steps = True
        self._training_thread = threading.get_ident()
        self.check_now()
        self._finish_capture()
        if self._distributed is not None:
            self._distributed.check_now(int(step), self.experiment_hash)
        self.bus.state.step = int(step)
        self.bus.emit("step", step=int(step), driver="user")
        self._finish_capture()

    def checkpoint_on_model_change(self) -> None:
        self._request("model_change")

    def checkpoint_on_config_change(self) -> None:
        self._request("config_change")

    def checkpoint_on_state_change(self, kind: str = "state") -> None:
        self._request(f"state_change:{kind}")

    def _request(self, reason: str) -> None:
        self.check_now()
        self.bus.emit("checkpoint_requested", reason=reason)

    def hyperparams_written(self, name: str, data: dict, key: str, old: Any, new: Any) -> None:
        """A write through the mapping ``register_hyperparams`` returned: announce it at once."""
        watch = self._hyperparams.get(name)
        if watch is None or watch.data is not data:
            return
        watch.accept()
        self.bus.emit(
            "hyperparams_changed",
            src=name,
            name=name,
            key=key,
            old=old,
            new=new,
            via="mapping",
            description=describe_hyperparams(name, data),
        )

    def report_metric(self, name: str, value: float) -> None:
        """Record a metric (for ``BestN`` retention and the report) and emit ``metric``."""
        self._metrics[name] = float(value)
        self.bus.emit("metric", name=name, value=float(value))

    # -- waiting and closing ----------------------------------------------------------------

    def wait(self, timeout: float | None = None) -> None:
        """Block until every scheduled save is durable and async handlers are done.

        Raises :class:`CheckpointError` naming every save that failed since the last call.
        """
        if self._training_thread in (None, threading.get_ident()):
            self._finish_capture()
        self.saver.flush(timeout)
        self.bus.wait_handlers(timeout)
        self.saver.flush(timeout)
        self.event_log.flush(timeout)
        self.saver.raise_failures()

    def close(self) -> None:
        """Save what is due, flush with a bounded wait, detach everything; raise on failures."""
        if self._closed:
            return
        self._closing = True
        try:
            self._finish_capture()
            self._run_deferred()
            if self._distributed is not None and self._distributed.failed is None:
                self._distributed.check_now(self.step, self.experiment_hash)
            self.bus.emit("closing")
            self._finish_capture()
        finally:
            unfinished = self.saver.close(self.close_timeout)
            self.bus.close(self.close_timeout)
            self._shutdown()
        failures = self.saver.take_failures() + [("writer", u) for u in unfinished]
        if failures:
            named = "; ".join(f"{label}: {reason}" for label, reason in failures)
            raise CheckpointError(f"{len(failures)} checkpoint(s) could not be written: {named}", failures)

    def _shutdown(self) -> None:
        self.ledger.remove_listener(self._on_ledger)
        for entry in self.ledger.entries():
            self._detach(entry)
        self.ledger.clear()
        self.event_log.close()
        self._closed = True
        from . import api

        api.forget_system(self)

    def __enter__(self) -> CheckpointSystem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
