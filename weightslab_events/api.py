"""The module-level API: the process's system, registration, subscription and edit helpers.

``get_checkpoint_system`` returns the process's system, creating it on the first call; objects
registered before it exists wait in the ledger and are picked up when it starts. After
``close()`` the next call creates a fresh system (and the ledger starts empty), which is what lets
a test suite run many systems in one process.

Subscriptions made with :func:`subscribe` belong to the process, not to one system: they are
connected to the current system's bus and to every system created later, until closed.
"""

from __future__ import annotations

import inspect
import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import torch
from blinker import ANY, Signal
from torch import nn

from .architecture import unwrap_model
from .bus import Subscription
from .errors import SystemOptionsError
from .fingerprint import canonical, describe_scheduler
from .hyperparams import HyperParams
from .ledger import LEDGER
from .restore import state_of_stateful
from .system import CheckpointSystem
from .watch import watch_for
from .wrappers import unwrap_optimizer

if TYPE_CHECKING:
    from .handlers.retention import RetentionPolicy
    from .store import FileSystem

__all__ = [
    "current_system",
    "data_changed",
    "drain",
    "forget_system",
    "freeze",
    "get_checkpoint_system",
    "get_hyperparams",
    "get_model",
    "get_optimizer",
    "get_scheduler",
    "register_hyperparams",
    "register_model",
    "register_optimizer",
    "register_scheduler",
    "register_stateful",
    "reset",
    "subscribe",
    "unfreeze",
    "unregister",
]

_lock = threading.RLock()
_system: CheckpointSystem | None = None
_options: dict[str, Any] = {}
_subscriptions: list[UserSubscription] = []


def get_checkpoint_system(
    root_log_dir: str | os.PathLike[str] = "./experiments",
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
) -> CheckpointSystem:
    """The process's checkpoint system, created with these options on the first call.

    The options are those of :class:`CheckpointSystem`. While a system is open, a call with no
    arguments returns it, and so does a call with the same options (a notebook cell run again).
    A call with other options raises :class:`SystemOptionsError` naming each option that differs:
    silently returning the open system would let the caller believe the new options apply.
    """
    global _system, _options
    options: dict[str, Any] = {
        "root_log_dir": _absolute(root_log_dir),
        "checkpoint_frequency": checkpoint_frequency,
        "max_pending": max_pending,
        "when_busy": when_busy,
        "retention": retention,
        "resume": resume,
        "step_optimizer": step_optimizer,
        "strict_handlers": strict_handlers,
        "close_timeout": close_timeout,
        "file_system": file_system,
    }
    with _lock:
        if _system is not None:
            differ = [
                f"{name} (open: {_options[name]!r}, asked: {value!r})"
                for name, value in options.items()
                if not _same_option(value, _options[name])
            ]
            if differ and options != _DEFAULT_OPTIONS:
                raise SystemOptionsError(
                    f"a checkpoint system is already open at {_system.root} with other options: "
                    f"{'; '.join(differ)}. close() it before creating one with other options"
                )
            return _system
        system = CheckpointSystem(**options)
        _system, _options = system, options
        for subscription in list(_subscriptions):
            subscription.attach(system)
        return system


def _same_option(a: Any, b: Any) -> bool:
    """Equal, or of one class with equal attributes (a retention policy built again is the same)."""
    if a is b or a == b:
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_option(x, y) for x, y in zip(a, b, strict=True))
    if hasattr(a, "__dict__"):
        return vars(a).keys() == vars(b).keys() and all(_same_option(v, vars(b)[k]) for k, v in vars(a).items())
    return False


def _absolute(root: str | os.PathLike[str]) -> str:
    return os.path.abspath(os.path.expanduser(os.fspath(root)))


_DEFAULT_OPTIONS: dict[str, Any] = {
    name: _absolute(parameter.default) if name == "root_log_dir" else parameter.default
    for name, parameter in inspect.signature(get_checkpoint_system).parameters.items()
}


def current_system() -> CheckpointSystem | None:
    """The open system, or ``None``; never creates one."""
    return _system


def forget_system(system: CheckpointSystem) -> None:
    """Called by a closing system so the next ``get_checkpoint_system`` makes a fresh one."""
    global _system
    with _lock:
        if _system is system:
            _system = None


# -- registration ---------------------------------------------------------------------------


def register_model(name: str, model: nn.Module) -> nn.Module:
    """Register a model (a ``torch.compile``, DDP or DataParallel wrapper is seen through).

    A module registered under two names (or inside another registered model) is refused: the
    two entries would save the same weights twice and only one of them could follow its edits.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"register_model({name!r}, ...) needs a torch.nn.Module, got {type(model).__name__}")
    plain = unwrap_model(model)
    _refuse_shared_modules(name, plain)
    LEDGER.register("model", name, plain)
    return model


def _refuse_shared_modules(name: str, model: nn.Module) -> None:
    mine = {id(m): path for path, m in model.named_modules()}
    for entry in LEDGER.entries("model"):
        if entry.name == name:
            continue
        for path, module in entry.obj.named_modules():
            if id(module) in mine:
                where = f"its module {mine[id(module)]!r}" if mine[id(module)] else "it"
                inside = f" as its module {path!r}" if path else ""
                raise ValueError(
                    f"register_model({name!r}, ...): {where} is already registered in model {entry.name!r}{inside}; "
                    "register each module once (register the whole model, or unregister the other name first)"
                )


def register_optimizer(name: str, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Register an optimizer, or a framework's wrapper of one (accelerate, Lightning): see :mod:`.wrappers`."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"register_optimizer({name!r}, ...) needs a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    LEDGER.register("optimizer", name, unwrap_optimizer(name, optimizer))
    return optimizer


def register_hyperparams(name: str, params: dict) -> HyperParams:
    """Register a dict of hyperparameters; returns a live mapping whose writes fork at once."""
    if not isinstance(params, dict):
        raise TypeError(f"register_hyperparams({name!r}, ...) needs a dict, got {type(params).__name__}")
    canonical(params, name)
    LEDGER.register("hyperparams", name, params)
    return _live_mapping(name, params)


def _live_mapping(name: str, params: dict) -> HyperParams:
    """A view over ``params`` whose writes the open system announces at once."""

    def written(key: str, old: Any, new: Any) -> None:
        system = _system
        if system is not None:
            system.hyperparams_written(name, params, key, old, new)

    return HyperParams(params, written)


def register_scheduler(name: str, scheduler: Any) -> Any:
    if not hasattr(scheduler, "state_dict") or not hasattr(scheduler, "step"):
        raise TypeError(f"register_scheduler({name!r}, ...) needs an lr scheduler, got {type(scheduler).__name__}")
    describe_scheduler(scheduler)
    LEDGER.register("scheduler", name, scheduler)
    return scheduler


def register_stateful(name: str, obj: Any, *, settles_after_step: bool | None = None) -> Any:
    """Register anything with ``state_dict``/``load_state_dict`` (or a ``torch.Generator``).

    The checkpoint of step K holds its state as it is right after the optimizer step of
    iteration K (a sampler has not drawn the next batch yet). Pass ``settles_after_step=True``
    for an object whose state for iteration K is completed after ``optimizer.step()``, as
    ``GradScaler.update()`` does: it is then taken at the next step boundary. ``None`` decides by
    type (``torch.amp.GradScaler`` settles after the step).

    Its state is read once now: a state that a checkpoint could not load back raises
    :class:`UnsaveableStateError` here, not at resume time.
    """
    if not isinstance(obj, torch.Generator) and not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")):
        raise TypeError(
            f"register_stateful({name!r}, ...) needs state_dict() and load_state_dict() or a torch.Generator; "
            f"{type(obj).__name__} has neither"
        )
    state_of_stateful(obj, repr(name))
    LEDGER.register("stateful", name, obj, settles_after_step=settles_after_step)
    return obj


def unregister(name: str) -> None:
    LEDGER.unregister(name)


def get_model(name: str) -> nn.Module:
    return LEDGER.get("model", name)


def get_optimizer(name: str) -> torch.optim.Optimizer:
    return LEDGER.get("optimizer", name)


def get_scheduler(name: str) -> Any:
    return LEDGER.get("scheduler", name)


def get_hyperparams(name: str) -> HyperParams:
    params = LEDGER.get("hyperparams", name)
    return _live_mapping(name, params)


# -- edits ----------------------------------------------------------------------------------


def _parameter_paths(module: nn.Module) -> list[str]:
    watch = watch_for(module)
    base = watch.path_of(module) if watch else ""
    return [f"{base}.{n}" if base else n for n, _ in module.named_parameters()]


def _set_trainable(module: nn.Module, trainable: bool, kind: str) -> None:
    if not isinstance(module, nn.Module):
        raise TypeError(f"{kind}() needs a torch.nn.Module, got {type(module).__name__}")
    for parameter in module.parameters():
        parameter.requires_grad_(trainable)
    watch = watch_for(module)
    if watch is not None:
        watch.refresh()
        watch.notify_state(kind, _parameter_paths(module))


def freeze(module: nn.Module) -> None:
    """Stop training ``module``'s parameters; forks the experiment at once."""
    _set_trainable(module, False, "freeze")


def unfreeze(module: nn.Module) -> None:
    _set_trainable(module, True, "unfreeze")


def reset(module: nn.Module) -> None:
    """Reinitialise ``module``'s parameters; forks the experiment and saves at once."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"reset() needs a torch.nn.Module, got {type(module).__name__}")
    with torch.no_grad():
        for sub in module.modules():
            reset_parameters = getattr(sub, "reset_parameters", None)
            if callable(reset_parameters):
                reset_parameters()
    watch = watch_for(module)
    if watch is not None:
        watch.reset_counts[module] = watch.reset_counts.get(module, 0) + 1
        watch.refresh()
        watch.notify_state("reset", [watch.path_of(module) or "<root>"])


def data_changed(kind: str, **details: Any) -> None:
    """Announce a data change (discarded samples, tags, augmentation): logged, never forks."""
    system = _system
    if system is not None:
        system.bus.emit("data_changed", src="data", kind=kind, **details)


# -- subscribing ----------------------------------------------------------------------------


class UserSubscription:
    """A process-level subscription: connected to every system until ``close()``."""

    def __init__(self, signal: Signal | str, handler: Callable[..., Any], sender: Any, weak: bool) -> None:
        self.signal = signal
        self._handler: Any = weakref.ref(handler) if weak else handler
        self._weak = weak
        self.sender = sender
        self._connection: Subscription | None = None

    @property
    def handler(self) -> Callable[..., Any] | None:
        return self._handler() if self._weak else self._handler

    def attach(self, system: CheckpointSystem) -> None:
        handler = self.handler
        if handler is not None:
            self._connection = system.bus.connect(self.signal, handler, sender=self.sender, weak=self._weak)

    def close(self) -> None:
        with _lock:
            if self in _subscriptions:
                _subscriptions.remove(self)
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the handler itself, so a decorated function stays callable."""
        handler = self.handler
        if handler is None:
            raise ReferenceError("the weakly held handler has been garbage-collected")
        return handler(*args, **kwargs)

    def __enter__(self) -> UserSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def subscribe(
    signal: Signal | str, fn: Callable[..., Any] | None = None, *, sender: Any = None, weak: bool = False
) -> Any:
    """Subscribe ``fn`` to ``signal``; usable as ``subscribe(sig, fn)`` or ``@subscribe(sig)``.

    Handlers are held strongly (an inline lambda keeps firing) unless ``weak=True``. An
    ``async def`` handler runs on the library's event-loop thread.
    """
    from .signals import name_of

    name_of(signal)

    def connect(handler: Callable[..., Any]) -> UserSubscription:
        subscription = UserSubscription(signal, handler, ANY if sender is None else sender, weak)
        with _lock:
            _subscriptions.append(subscription)
            if _system is not None:
                subscription.attach(_system)
        return subscription

    if fn is None:
        return connect
    return connect(fn)


async def drain(timeout: float | None = None) -> None:
    """From async code: wait until async handler work and scheduled saves have finished."""
    system = _system
    if system is not None:
        await anyio.to_thread.run_sync(system.wait, timeout)
