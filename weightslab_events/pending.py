"""The checkpoint of one step, from the moment it is decided until it is handed to the writer.

The checkpoint of step K is the state at the *end of iteration K*. No single hook sees that
moment, so a pending snapshot is taken in two parts:

1. **Copied** right after the optimizer step that ends iteration K (its post-step hook), before
   the next forward pass: weights and buffers (batch-norm statistics), optimizer state, RNG
   states, statefuls, hyperparameters and configured values. With several optimizers this is
   the post-step of the *last* one of the iteration (the system learns the order; until it
   knows, each optimizer's step copies again, the last copy wins).
2. **Completed** at the next step boundary (the first optimizer step of iteration K+1), or at
   ``wait()``/``close()``: what the rest of iteration K settles after the step. Scheduler
   state and the lrs the scheduler just set are taken live (``scheduler.step()`` ran in
   between), and so are statefuls that settle after the step (``GradScaler.update()``). User
   writes to param groups made since the copy are *not* taken: they belong to the fork that
   the next step starts, so the value before the user's first write is kept.

The rule for statefuls, in one place: a stateful is copied with the weights (part 1), since a
sampler or data iterator moves on as soon as the next iteration begins; a stateful that settles
after ``optimizer.step()`` is taken at completion (part 2). ``torch.amp.GradScaler`` is known to
settle late; say so for others with ``register_stateful(..., settles_after_step=True)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .fingerprint import canonical
from .hyperparams import read_consistently
from .restore import optimizer_type, state_of_stateful
from .snapshot import BufferPool, capture_rng, copy_state
from .watch import TrackedGroup

if TYPE_CHECKING:
    from .handlers import Decision
    from .ledger import Entry, Ledger
    from .watch import HyperparamWatch, ModelWatch, OptimizerWatch

__all__ = ["PAYLOAD_FORMAT_VERSION", "PendingSnapshot", "Registered", "settles_after_step"]

PAYLOAD_FORMAT_VERSION = 1


def settles_after_step(entry: Entry) -> bool:
    """Whether a registered stateful is taken at completion rather than with the weights."""
    if entry.settles_after_step is not None:
        return entry.settles_after_step
    return isinstance(entry.obj, torch.amp.GradScaler)


@dataclass(frozen=True)
class Registered:
    """Live views of what a system has registered (the dicts are the system's own)."""

    models: Mapping[str, ModelWatch]
    optimizers: Mapping[str, OptimizerWatch]
    hyperparams: Mapping[str, HyperparamWatch]
    ledger: Ledger
    #: The models' and optimizers' state dicts and whether they are sharded (a rank's part under
    #: FSDP2, see :mod:`.distributed`); by default each object's own ``state_dict()``.
    state_dicts: Callable[[], tuple[dict[str, Any], dict[str, Any], bool]]


class PendingSnapshot:
    """One checkpoint between its decision and its hand-off: ``copy()`` then ``complete()``."""

    def __init__(
        self,
        decision: Decision,
        pool: BufferPool,
        registered: Registered,
        components: Mapping[str, Any] | None = None,
    ) -> None:
        self.decision = decision
        self.pool = pool
        self._registered = registered
        #: The components that hash to ``decision.hash``, taken when it was decided (or ``None``).
        self.components = components
        #: The new experiment's description for the store, read with the weights (see capturing).
        self.info: dict[str, Any] | None = None
        self.payload: dict[str, Any] = {
            "format_version": PAYLOAD_FORMAT_VERSION,
            "experiment_hash": decision.hash,
            "step": decision.step,
            "reason": decision.reason,
        }
        self.copied = False

    def copy(self) -> None:
        """Part 1: the state at the end of the step. Called again, it copies again (reusing buffers)."""
        registered, pool = self._registered, self.pool
        with torch.no_grad():
            model_states, optimizer_states, sharded = registered.state_dicts()
            self.payload["models"] = {n: copy_state(state, pool, ("m", n)) for n, state in model_states.items()}
            self.payload["optimizers"] = {n: copy_state(state, pool, ("o", n)) for n, state in optimizer_states.items()}
            if sharded:
                self.payload["sharded"] = True
            self.payload["statefuls"] = {
                e.name: copy_state(state_of_stateful(e.obj, e.name), pool, ("s", e.name))
                for e in registered.ledger.entries("stateful")
                if not settles_after_step(e)
            }
        self.payload["rng"] = capture_rng()
        self.payload["optimizer_types"] = {n: optimizer_type(w.optimizer) for n, w in registered.optimizers.items()}
        self.payload["optimizer_config"] = {
            n: copy_state(w.configured, pool, ("f", n)) for n, w in registered.optimizers.items()
        }
        self.payload["hyperparams"] = {n: self._hyperparams(n, w) for n, w in registered.hyperparams.items()}
        self.payload["reset_counts"] = {
            n: {w.path_of(m): c for m, c in w.reset_counts.items() if w.contains(m)}
            for n, w in registered.models.items()
        }
        self.copied = True

    def _hyperparams(self, name: str, watch: HyperparamWatch) -> Any:
        """The values that hash to the checkpoint's hash; live only when no description was taken.

        A direct write to the dict not yet seen by a step-boundary check, or another thread's
        edit, belongs to the next hash, not to this checkpoint.
        """
        described = (self.components or {}).get(f"hyperparams:{name}")
        if isinstance(described, Mapping) and "values" in described:
            return described["values"]
        return read_consistently(lambda: canonical(watch.data, name))

    def complete(self) -> dict[str, Any]:
        """Part 2: what settles after the step; returns the finished payload."""
        registered, pool, payload = self._registered, self.pool, self.payload
        for name, saved_state in payload["optimizers"].items():
            watch = registered.optimizers.get(name)
            if watch is None:
                continue
            saved_groups = saved_state["param_groups"]
            # Groups added since the copy (add_param_group) belong to the next checkpoint.
            live_groups = watch.optimizer.param_groups[: len(saved_groups)]
            for index, (saved, live) in enumerate(zip(saved_groups, live_groups, strict=True)):
                values = live.settled_values() if isinstance(live, TrackedGroup) else dict(live)
                values.pop("params", None)
                saved.update(copy_state(values, pool, ("g", name, index)))
        with torch.no_grad():
            schedulers = registered.ledger.entries("scheduler")
            payload["schedulers"] = {e.name: copy_state(e.obj.state_dict(), pool, ("c", e.name)) for e in schedulers}
            for entry in registered.ledger.entries("stateful"):
                if settles_after_step(entry):
                    state = state_of_stateful(entry.obj, entry.name)
                    payload["statefuls"][entry.name] = copy_state(state, pool, ("s", entry.name))
        return payload
