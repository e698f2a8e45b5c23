"""Capturing checkpoints: a decision becomes a pending snapshot, then a job for the writer.

A mixin of :class:`~weightslab_events.system.CheckpointSystem`, kept apart because capturing is
its own idea: *when* the state of a step is read (see :mod:`.pending` for the two parts of a
snapshot and :mod:`.iterations` for which optimizer steps make up an iteration), on which thread
(saves decided on another thread wait for the training thread's next step boundary), and what a
failure does (reported as ``checkpoint_failed``, never raised into training).
"""

from __future__ import annotations

import copy
import io
import itertools
import logging
import threading
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .architecture import architecture_text
from .pending import PendingSnapshot, Registered
from .saver import SaveJob

if TYPE_CHECKING:
    from .bus import Bus
    from .closing import Deadline
    from .distributed import Coordinator
    from .handlers import Decision
    from .iterations import Iterations
    from .saver import Saver
    from .store import Store
    from .watch import ModelWatch, OptimizerWatch

__all__ = ["Capturing"]

log = logging.getLogger("weightslab_events")


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


class Capturing:
    """``_save`` (the checkpointing handler's callback) and the pending snapshot's lifecycle."""

    bus: Bus
    store: Store
    saver: Saver
    hashing: Any
    close_timeout: float
    _close_deadline: Deadline | None
    _lock: threading.RLock
    _models: dict[str, ModelWatch]
    _metrics: dict[str, tuple[str | None, int, float]]
    _pending: PendingSnapshot | None
    _registered: Registered
    _iterations: Iterations
    _deferred: list[tuple[Decision, dict[str, Any] | None]]
    _training_thread: int | None
    _in_post_step: bool
    _closing: bool
    _optimizers: dict[str, OptimizerWatch]
    _distributed: Coordinator | None

    def _save(self, decision: Decision) -> None:
        """Called by the checkpointing handler for each decision it makes.

        The components that hash to ``decision.hash`` are taken now, when the hash is decided:
        the checkpoint's hyperparameters and its experiment's stored description are those,
        whatever the user (or another thread) edits before the checkpoint is completed.
        """
        components = self.hashing.components_of(decision.hash)
        off_thread = self._training_thread not in (None, threading.get_ident())
        if off_thread and not self._closing:
            with self._lock:
                self._deferred.append((decision, components))
            return
        self._capture(decision, components)

    def _run_deferred(self) -> None:
        with self._lock:
            deferred, self._deferred = self._deferred, []
        for decision, components in deferred:
            self._capture(decision, components)

    def _metrics_of(self, decision: Decision) -> dict[str, float]:
        """The metrics reported under the checkpoint's hash at its step: a metric belongs to the
        step it was reported at, so a fork never carries its parent's last value as its own."""
        return {n: v for n, (h, s, v) in self._metrics.items() if (h, s) == (decision.hash, decision.step)}

    def _capture(self, decision: Decision, components: dict[str, Any] | None) -> None:
        """Start the checkpoint ``decision`` asks for (see :mod:`.pending` for its lifecycle)."""
        self._complete_pending()
        deadline = self._close_deadline  # while closing, what is left of close()'s one deadline
        pool = self.saver.reserve(decision.required, timeout=deadline.left() if deadline else self.close_timeout)
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
            if decision.required:  # wait() and close() name it: a fork or final save is never lost quietly
                self.saver.record_failure(f"{decision.hash}_step_{decision.step:06d}", "skipped: no free snapshot slot")
            return
        self._pending = PendingSnapshot(decision, pool, self._registered, components)
        if not self._in_post_step:
            self._complete_pending()
        elif not self._iterations.more_expected():
            self._copy_pending()

    def _state_dicts(self) -> tuple[dict[str, Any], dict[str, Any], bool]:
        """The registered models' and optimizers' state dicts; sharded (FSDP2) ones come keyed by name."""
        models = {n: w.model for n, w in self._models.items()}
        optimizers = {n: w.optimizer for n, w in self._optimizers.items()}
        if self._distributed is not None:
            return self._distributed.state_dicts(models, optimizers)
        return {n: m.state_dict() for n, m in models.items()}, {n: o.state_dict() for n, o in optimizers.items()}, False

    def _copy_pending(self) -> None:
        pending = self._pending
        if pending is None:
            return
        try:
            with self._lock:
                pending.copy()
                if pending.info is None and not self.store.has_experiment(pending.decision.hash):
                    # Read with the weights: the next step's freeze must not reach this architecture.
                    pending.info = self._experiment_info(pending.decision, pending.components)
        except Exception as error:
            self._pending = None
            self.saver.release(pending.pool)
            self._report_capture_failure(pending.decision, error)

    def _complete_pending(self, at_boundary: bool = False) -> None:
        """Hand the pending checkpoint to the writer (at a boundary, ``wait()``, ``close()``, a new one)."""
        pending = self._pending
        if pending is None:
            return
        if not pending.copied:
            if at_boundary:
                self._iterations.expected_step_missed(pending.decision.step)
            self._copy_pending()
            if self._pending is None:
                return
        self._pending = None
        decision = pending.decision
        try:
            with self._lock:
                payload = pending.complete()
                info = {} if self.store.has_experiment(decision.hash) else pending.info
                if info is None:
                    info = self._experiment_info(decision, pending.components)
                job = SaveJob(decision.hash, decision.step, decision.reason, payload, info, self._metrics_of(decision))
            self.saver.submit(pending.pool, job)
        except Exception as error:
            self.saver.release(pending.pool)
            self._report_capture_failure(decision, error)

    def _experiment_info(self, decision: Decision, components: dict[str, Any] | None) -> dict[str, Any]:
        """What a new experiment's folder describes it with; ``components`` as the hash was decided."""
        if components is None:  # an old hash no longer remembered: the best there is
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
