"""The checkpoint system: wires the ledger, the watches, the bus and the built-in handlers.

Threads and consistency, the policy in one place:

- The *training thread* is the one that calls ``optimizer.step()``. Snapshots are taken only on
  it (or on any thread before training starts, or while closing). A save decided on another
  thread (an edit from a UI) is deferred to the next step boundary, so no snapshot ever reads a
  model halfway through an update and no thread ever waits for another: no torn snapshot, no
  deadlock.
- The checkpoint of step ``k`` is the state at the end of iteration ``k``: copied after the
  iteration's last optimizer step, completed at the next step boundary (scheduler moves and
  ``GradScaler.update()`` in, user edits made since out). :mod:`.pending` has the lifecycle,
  :mod:`.iterations` how the iteration's optimizers are learned, :mod:`.capturing` the threads.
- Each step's own cost is the cheap checks in :mod:`.watch` plus one ``step`` event.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .bus import Bus
from .capturing import Capturing
from .closing import Deadline, run_close_later
from .errors import CheckpointError, DistributedSetupError
from .fingerprint import canonical, describe_scheduler
from .handlers import CheckpointingHandler, Decision, EventLogHandler, HashingHandler, RetentionHandler, RetentionPolicy
from .hyperparams import read_consistently
from .iterations import Iterations
from .ledger import LEDGER, Entry, Ledger
from .pending import PAYLOAD_FORMAT_VERSION, PendingSnapshot, Registered
from .restore import restore_stateful
from .resuming import Resuming
from .rootlinks import refuse_links
from .runs import Run, RunLock
from .saver import Saver
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


def _ranks() -> int:
    """How many ranks an initialised ``torch.distributed`` has; 1 when it is not initialised."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return 1
    return torch.distributed.get_world_size()


def _coordinator(bus: Bus, components: Callable[[], dict[str, Any]]) -> Coordinator | None:
    """The rank's coordinator under an initialised ``torch.distributed``; ``None`` in a single process."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    from .distributed import Coordinator

    return Coordinator(bus, components)


def describe_hyperparams(name: str, data: dict) -> dict[str, Any]:
    """The hash's description of a registered dict (read safely while other threads edit it)."""
    return {"kind": "hyperparams", "values": read_consistently(lambda: canonical(data, name))}


class CheckpointSystem(Capturing, Resuming):
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
    - ``close_timeout``: the most seconds ``close()`` takes, waiting for a slot for the final save,
      pending writes and async handlers all together; what is still running then is abandoned
      and named (see :mod:`.closing`).
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
        refuse_links(Path(os.path.abspath(os.path.expanduser(root_log_dir))))
        self.run = Run()
        self.store = Store(os.path.abspath(os.path.expanduser(root_log_dir)), file_system, run=self.run)
        self._run_lock = RunLock(self.store.root, self.run).acquire()
        stale = self.store.open()
        self.bus = Bus(strict=strict_handlers)
        self.bus.run = self.run.id
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
        self._deferred: list[tuple[Decision, dict[str, Any] | None]] = []
        self._coverage_known = False
        self._warn_once = WarnOnce()
        self._pending: PendingSnapshot | None = None
        self._iterations = Iterations(self._warn_once)
        self._registered = Registered(self._models, self._optimizers, self._hyperparams, ledger, self._state_dicts)
        self._metrics: dict[str, tuple[str | None, int, float]] = {}  # name -> (hash, step, value)
        self._auto_resume = resume
        self._resumed_payload: dict[str, Any] | None = None
        self._closed = False
        self._closing = False
        self._close_requested = False
        self._close_done = threading.Event()
        self._close_deadline: Deadline | None = None

        commit = self._distributed.commit if self._distributed is not None else None
        self.saver = Saver(
            self.store, self._emit_from_worker, max_pending=max_pending, when_busy=when_busy, commit=commit
        )
        self.hashing = HashingHandler().connect(self.bus)
        self.checkpointing = CheckpointingHandler(checkpoint_frequency, save=self._save).connect(self.bus)
        deletes = retention is not None and (self._distributed is None or self._distributed.writes_shared_state)
        self.retention = RetentionHandler(self.store, retention).connect(self.bus) if deletes else None
        log_path = self.store.log_path if self._distributed is None else self._distributed.log_path(self.store.log_path)
        self.event_log = EventLogHandler(log_path, run_id=self.run.id, write=self.store.fs.append).connect(self.bus)
        self.bus.emit(
            "started",
            root=str(self.store.root),
            checkpoint_frequency=checkpoint_frequency,
            resume=resume,
            **self.run.describe(),
        )
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
        if self._distributed is None and _ranks() > 1:
            raise DistributedSetupError(
                f"{entry.kind} {name!r} was registered after torch.distributed was initialised, but the checkpoint "
                "system was created before: its ranks cannot coordinate and would overwrite each other's files. "
                "Create the system after init_process_group()."
            )
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
            self._iterations.forget()
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
        handles = self._hooks.pop(entry.name, [])
        if self._in_post_step:
            # torch is iterating the post-step hooks (a handler closed the system at a step):
            # removing one now raises in optimizer.step(). It stays, inert: no driver is left.
            handles = handles[:-1]
        for handle in handles:
            handle.remove()
            self._iterations.forget()
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
        """A registered optimizer is about to step: a new iteration may begin (see :mod:`.iterations`)."""
        if self._iterations.before_step(optimizer):
            self._at_boundary()

    def _at_boundary(self) -> None:
        """The first optimizer step of an iteration: finish the last one's checkpoint, then look for edits."""
        self._training_thread = threading.get_ident()
        self._complete_pending(at_boundary=True)
        for check in self._checks:
            check()
        if not self._coverage_known:
            self._check_coverage()
        if self._deferred:
            self._run_deferred()
        if self._distributed is not None:
            self._distributed.begin_check(self.step, self.experiment_hash)

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._iterations.after_step(optimizer)
        if optimizer is self._driver and self._distributed is not None:
            self._distributed.end_check(self.experiment_hash)
        if optimizer is self._driver and not self._user_steps:
            self._auto_resume = False
            self._resumed_payload = None
            state = self.bus.state
            state.step += 1
            self._in_post_step = True
            try:
                self.bus.emit("step", step=state.step, driver="auto")
            finally:
                self._in_post_step = False
        elif self._pending is not None and not self._iterations.more_expected():
            # A later optimizer of the same iteration: its update belongs in the checkpoint too.
            self._copy_pending()

    def check_now(self) -> None:
        """Run every step-boundary check at once (what ``optimizer.step()`` does first)."""
        with self._lock:
            for check in list(self._checks):
                check()

    # -- saving -----------------------------------------------------------------------------

    # -- the explicit API of the original design --------------------------------------------

    def checkpoint_on_step(self, step: int) -> None:
        """Announce the user's step number; from now on user steps drive periodic saves."""
        self._user_steps = True
        self._training_thread = threading.get_ident()
        self.check_now()
        self._complete_pending()
        if self._distributed is not None:
            self._distributed.check_now(int(step), self.experiment_hash)
        self.bus.state.step = int(step)
        self.bus.emit("step", step=int(step), driver="user")
        self._complete_pending()

    def use_external_steps(self) -> None:
        """From now on only :meth:`checkpoint_on_step` counts steps (a framework's own step counter).

        Optimizer steps stop counting at once and no step is announced, so a framework
        integration's first step is neither counted twice nor saved halfway through its iteration.
        """
        self._user_steps = True

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
        self._metrics[name] = (self.experiment_hash, self.step, float(value))
        self.bus.emit("metric", name=name, value=float(value))

    # -- waiting and closing ----------------------------------------------------------------

    def wait(self, timeout: float | None = None) -> None:
        """Block until every scheduled save is durable and async handlers are done.

        A checkpoint still pending is completed now: call ``wait()`` after ``scheduler.step()`` (and
        ``scaler.update()``), not between them and ``optimizer.step()``, or that checkpoint holds the
        scheduler one step behind.

        ``timeout`` bounds the whole wait. From inside a handler it waits for everything but that
        handler (and handlers that are waiting themselves); see :mod:`.asyncrunner`.

        Raises :class:`CheckpointError` naming every save that failed since the last call.
        """
        deadline = Deadline(timeout)
        if self._training_thread in (None, threading.get_ident()):
            self._complete_pending()
        self.saver.flush(deadline.left())
        self.bus.wait_handlers(deadline.left())
        self.saver.flush(deadline.left())
        self.event_log.flush(deadline.left())
        self.saver.raise_failures()

    def close(self) -> None:
        """Save what is due, flush, detach everything; raise on failures. Idempotent.

        Returns within ``close_timeout``. Called from a handler, it closes once that handler's
        event has been handled (see :mod:`.closing`): the final checkpoint is still written and
        ``closing`` logged. Called again while another thread closes, it waits for that close.
        """
        with self._lock:
            requested, self._close_requested = self._close_requested, True
        if requested:
            if not self.bus.dispatching() and not self.bus.in_async_handler():
                self._close_done.wait(self.close_timeout)
            return
        if run_close_later(self.bus, self._close_for_handler):
            return
        self._close_now()

    def _close_for_handler(self) -> None:
        """A close a handler asked for: nobody is there to catch its error, so it is logged."""
        try:
            self._close_now()
        except CheckpointError as error:
            log.error("close() called from a handler: %s", error)
        except Exception:
            log.exception("close() called from a handler failed")

    def _close_now(self) -> None:
        self._closing = True
        self._close_deadline = deadline = Deadline(self.close_timeout)
        try:
            self._complete_pending()
            self._run_deferred()
            self.bus.emit("closing")
            self._complete_pending()
        finally:
            unfinished = self.saver.close(deadline.left())
            self.bus.close(deadline.left())
            self._shutdown()
            self._close_done.set()
        why = "abandoned by close(): still being written when close_timeout ran out"
        abandoned = [(label, why) for label in unfinished]
        failures = self.saver.take_failures() + abandoned
        if failures:
            named = "; ".join(f"{label}: {reason}" for label, reason in failures)
            raise CheckpointError(f"{len(failures)} checkpoint(s) could not be written: {named}", failures)

    def _shutdown(self) -> None:
        self.ledger.remove_listener(self._on_ledger)
        for entry in self.ledger.entries():
            self._detach(entry)
        self.ledger.clear()
        self.event_log.close()
        self.store.close()
        self._run_lock.release()
        self._closed = True
        from . import api

        api.forget_system(self)

    def __enter__(self) -> CheckpointSystem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
