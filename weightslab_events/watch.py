"""Turning edits of live torch objects into change notices, without explicit calls.

Two mechanisms, chosen by what torch offers (see DESIGN.md, "Torch facts"):

- At once: torch's global module/parameter/buffer registration hooks fire on
  ``model.fc = nn.Linear(...)``, ``seq.append(...)``, ``layer.weight = nn.Parameter(...)``. They
  fire *before* torch stores the value, so the hook stores it itself (torch then stores the same
  value again) and the new architecture can be described at once. Hooks fire for every module in
  the process; a dict lookup filters them to registered models.
- At the next step boundary: ``del seq[i]``, ``p.data = t``, ``requires_grad_()``, param-group
  writes, ``add_param_group`` and direct edits of a registered dict fire no hook. A cheap
  signature (dict lengths, storage addresses, trainable flags of cached objects; no tree walk) is compared
  before each optimizer step and a full description is made only when it differs.

Param groups are replaced by :class:`TrackedGroup`, a dict that records who wrote each key: a
write made from torch's scheduler code is a scheduler move (never forks); any other write is a
user edit. A user's value forks even if a scheduler rewrote the key before the next step.
"""

from __future__ import annotations

import copy
import logging
import operator
import os
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .fingerprint import describe_model, describe_optimizer, group_config
from .hyperparams import diff_paths, read_consistently, same_value

__all__ = [
    "HyperparamWatch",
    "ModelWatch",
    "OptimizerWatch",
    "TrackedGroup",
    "install_registration_hooks",
    "untrained_parameters",
    "WarnOnce",
    "watch_for",
]

Notify = Callable[..., None]

log = logging.getLogger("weightslab_events")


class WarnOnce:
    """Logs each warning once per key for its owner (a watch, a system): repeating it is noise."""

    def __init__(self) -> None:
        self._seen: set[Any] = set()

    def __call__(self, key: Any, message: str) -> None:
        if key in self._seen:
            return
        self._seen.add(key)
        log.warning(message)


_REQUIRES_GRAD = operator.attrgetter("requires_grad")
_DATA_PTR = torch.Tensor.data_ptr

_SCHEDULER_FILES = tuple(os.path.join("torch", "optim", name) for name in ("lr_scheduler.py", "swa_utils.py"))


_NOT_A_SCHEDULER = None


def _writing_scheduler() -> Any:
    """The scheduler making the write being made (two frames up in torch's scheduler code), or None.

    A write from torch's scheduler code whose frame has no ``self`` gives ``True``.
    """
    frame = sys._getframe(2)
    if not frame.f_code.co_filename.endswith(_SCHEDULER_FILES):
        return _NOT_A_SCHEDULER
    # torch writes through a module-level helper; the scheduler is the ``self`` a frame or two up.
    for _ in range(3):
        scheduler = frame.f_locals.get("self") if frame.f_code.co_filename.endswith(_SCHEDULER_FILES) else None
        if scheduler is not None:
            return scheduler
        if frame.f_back is None:
            break
        frame = frame.f_back
    return True


#: Schedulers that compute lr from ``base_lrs`` at every step, so a user's lr edit lasts one step.
ABSOLUTE_SCHEDULERS = frozenset({"LambdaLR", "OneCycleLR", "CyclicLR", "CosineAnnealingWarmRestarts"})


def undoes_lr_edits(scheduler: Any) -> bool:
    return any(cls.__name__ in ABSOLUTE_SCHEDULERS for cls in type(scheduler).__mro__)


class TrackedGroup(dict):
    """A param group that records each key written since the last step boundary.

    ``writes[key]`` is ``("user", value)`` or ``("scheduler", scheduler)``; a user write is never
    downgraded to a scheduler one, so a user's edit survives a scheduler's rewrite (the scheduler
    that rewrote it is kept in ``overwritten``). ``before_user[key]`` is the value the key held
    just before the first user write since the boundary: what a checkpoint of the previous step
    holds, since the user's edit belongs to the next experiment.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writes: dict[str, tuple[str, Any]] = {}
        self.before_user: dict[str, Any] = {}
        self.overwritten: dict[str, Any] = {}

    def _record(self, key: str, value: Any, scheduler: Any) -> None:
        if scheduler is not None:
            previous = self.writes.setdefault(key, ("scheduler", scheduler))
            if previous[0] == "user":
                self.overwritten[key] = scheduler
            return
        if key not in self.before_user:
            self.before_user[key] = copy.copy(self.get(key, _ABSENT))
        self.writes[key] = ("user", copy.copy(value))
        self.overwritten.pop(key, None)

    def settled_values(self) -> dict[str, Any]:
        """The group's values without the user's writes since the boundary (scheduler moves kept)."""
        values = {}
        for key, value in self.items():
            before = self.before_user.get(key, value) if self.before_user else value
            if before is not _ABSENT:
                values[key] = before
        for key, before in self.before_user.items():
            if key not in self and before is not _ABSENT:
                values[key] = before
        return values

    def take_writes(self) -> tuple[dict[str, tuple[str, Any]], dict[str, Any]]:
        """The writes and user-overwriting schedulers since the last boundary; starts a new window."""
        writes, overwritten = self.writes, self.overwritten
        self.writes, self.overwritten, self.before_user = {}, {}, {}
        return writes, overwritten

    def __setitem__(self, key: str, value: Any) -> None:
        self._record(key, value, _writing_scheduler())
        super().__setitem__(key, value)

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        scheduler = _writing_scheduler()
        for key, value in dict(*args, **kwargs).items():
            self._record(key, value, scheduler)
            super().__setitem__(key, value)

    def __reduce_ex__(self, protocol: Any) -> Any:
        return (dict, (dict(self),))


#: ``before_user`` of a key the group did not have.
_ABSENT = object()


def _configured_values(group: dict[str, Any]) -> dict[str, Any]:
    values = group_config(group)
    if "initial_lr" in group and "lr" in values:
        values["lr"] = group["initial_lr"]
    return values


class OptimizerWatch:
    """Finds user edits and scheduler moves of one optimizer's param groups."""

    def __init__(
        self,
        name: str,
        optimizer: torch.optim.Optimizer,
        notify: Notify,
        scheduler_name: Callable[[Any], str | None] = lambda scheduler: None,
    ) -> None:
        self.name = name
        self.optimizer = optimizer
        self._notify = notify
        self._scheduler_name = scheduler_name
        self.configured: list[dict[str, Any]] = []
        self._seen: list[dict[str, Any]] = []
        self._user_edited: dict[tuple[int, str], Any] = {}
        self._warn_once = WarnOnce()
        self.adopt()

    def adopt(self) -> None:
        """Take the groups' current values as configured and track every group.

        A scheduler built before registration has already moved ``lr`` (a warmup starts at 0)
        and kept the configured value in ``initial_lr``; that is the value that defines the
        experiment, so swapping the two lines that build the optimizer's scheduler and register
        it gives one hash.
        """
        groups = self.optimizer.param_groups
        for index, group in enumerate(groups):
            if type(group) is not TrackedGroup:
                groups[index] = TrackedGroup(group)
        self.configured = [copy.deepcopy(_configured_values(g)) for g in groups]
        self._seen = [dict(group_config(g)) for g in groups]

    def describe(self) -> dict[str, Any]:
        return describe_optimizer(self.optimizer, self.configured)

    def check(self) -> None:
        """Compare with the last boundary and notify each change (call before each step)."""
        groups = self.optimizer.param_groups
        if len(groups) != len(self.configured) or any(type(g) is not TrackedGroup for g in groups):
            self._regroup()
            return
        for index, group in enumerate(groups):
            if group.writes:
                self._apply_writes(index, group)

    def _apply_writes(self, index: int, group: TrackedGroup) -> None:
        writes, overwritten = group.take_writes()
        for key, (source, value) in writes.items():
            if key in ("params", "initial_lr"):
                continue
            if source == "user":
                old = self.configured[index].get(key)
                self._seen[index][key] = group.get(key)
                if key not in self.configured[index] or not same_value(old, value):
                    self.configured[index][key] = copy.deepcopy(value)
                    self._notify_change(index, key, old, value, "user")
                self._user_edited[(index, key)] = value
                if key in overwritten:
                    self._check_undone(index, key, overwritten[key], group.get(key))
                continue
            new = group.get(key)
            if (index, key) in self._user_edited:
                self._check_undone(index, key, value, new)
            old = self._seen[index].get(key)
            if not same_value(old, new):
                self._seen[index][key] = new
                self._notify_change(index, key, old, new, "scheduler")

    def _check_undone(self, index: int, key: str, scheduler: Any, new: Any) -> None:
        """Warn once per scheduler whose next write throws away the user's edit of ``key``."""
        edited = self._user_edited.pop((index, key))
        if key != "lr" or same_value(edited, new) or not undoes_lr_edits(scheduler):
            return
        name = self._scheduler_name(scheduler)
        called = f"scheduler {name!r} ({type(scheduler).__name__})" if name else f"a {type(scheduler).__name__}"
        self._warn_once(
            ("undone", id(scheduler)),
            f"{called} sets lr from its base_lrs at every step, so the edit of optimizer {self.name!r} "
            f"group {index} lr to {edited!r} was undone at the next scheduler.step() (lr is now {new!r}), "
            "though the edit forked the experiment. Change the scheduler's base_lrs as well, or build "
            "a new scheduler after the edit and register it.",
        )

    def _regroup(self) -> None:
        groups = self.optimizer.param_groups
        previous = self.configured
        kept = {i: g for i, g in enumerate(groups) if type(g) is TrackedGroup and i < len(previous)}
        self.adopt()
        for index, group in kept.items():
            # A group that was tracked keeps its configured lr (not a scheduler's move or
            # initial_lr) unless the user wrote one since the last boundary.
            source, value = group.writes.get("lr", ("scheduler", None))
            if "lr" in previous[index]:
                self.configured[index]["lr"] = copy.deepcopy(value) if source == "user" else previous[index]["lr"]
            group.take_writes()
        for index, values in enumerate(self.configured):
            before = previous[index] if index < len(previous) else {}
            for key in sorted(set(values) | set(before)):
                if not same_value(before.get(key), values.get(key)):
                    self._notify_change(index, key, before.get(key), values.get(key), "user")
            if index >= len(previous):
                self._notify_change(index, "params", None, len(groups[index]["params"]), "user")

    def _notify_change(self, index: int, key: str, old: Any, new: Any, source: str) -> None:
        self._notify(
            "optimizer_param_changed",
            src=self.name,
            name=self.name,
            group=index,
            key=key,
            old=old,
            new=new,
            source=source,
            description=self.describe() if source == "user" else None,
        )


class HyperparamWatch:
    """Finds direct edits of a registered dict by comparing with a deep copy at each boundary.

    ``dict.__eq__`` compares nested values in C, so the check costs well under a microsecond for
    a typical config; the deep copy is made only when something changed. Values whose ``==``
    cannot give one answer (arrays, tensors) are compared by content digest instead. Another
    thread may edit the dict meanwhile: each read is retried until it sees the dict between two
    edits, and a check that still cannot read it waits for the next boundary. Nothing raises
    into training.
    """

    def __init__(self, name: str, data: dict, notify: Notify, describe: Callable[[], Any]) -> None:
        self.name = name
        self.data = data
        self._notify = notify
        self._describe = describe
        self._warn_once = WarnOnce()
        self._last = read_consistently(lambda: copy.deepcopy(data))

    def describe_now(self) -> Any:
        return read_consistently(self._describe)

    def accept(self) -> None:
        """Take the current values as known (after an edit that was already announced)."""
        self._last = read_consistently(lambda: copy.deepcopy(self.data))

    def check(self) -> None:
        try:
            if self.data == self._last:  # the common case, at C speed
                return
        except Exception:  # arrays compare ambiguously; another thread resized the dict
            pass
        try:
            changes = read_consistently(self._changes)
            if not changes:
                return
            description = self.describe_now()
        except Exception as error:
            message = f"hyperparameters {self.name!r} could not be read at this step: {error}"
            self._warn_once(type(error), message)
            return
        for path, old, new in changes:
            self._notify(
                "hyperparams_changed",
                src=self.name,
                name=self.name,
                key=path,
                old=old,
                new=new,
                via="direct",
                description=description,
            )

    def _changes(self) -> list[tuple[str, Any, Any]]:
        if same_value(self.data, self._last):
            return []
        current = copy.deepcopy(self.data)
        changes = diff_paths(self._last, current)
        self._last = current
        return changes


def _spec(value: Any) -> Any:
    if isinstance(value, nn.Module):
        return {"type": type(value).__name__, "settings": value.extra_repr()}
    if isinstance(value, torch.Tensor):
        if isinstance(value, nn.parameter.UninitializedTensorMixin):
            return {"shape": "uninitialized"}
        return {"shape": list(value.shape), "trainable": bool(value.requires_grad)}
    return None


class ModelWatch:
    """Watches one registered model's structure and trainable flags."""

    def __init__(self, name: str, model: nn.Module, notify: Notify) -> None:
        self.name = name
        self.model = model
        self._notify = notify
        self.reset_counts: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()
        self._paths: dict[int, str] = {}
        self._modules: list[nn.Module] = []
        self._params: list[tuple[str, nn.Parameter]] = []
        self._signature: tuple[list[Any], ...] = ()
        self._lazy = False
        self._tensors: list[nn.Parameter] = []
        self._dicts: list[dict[str, Any]] = []
        self._known_params: dict[str, tuple[Any, torch.dtype, bool]] = {}
        self.refresh()

    def describe(self) -> dict[str, Any]:
        return describe_model(self.model, self.reset_counts)

    def refresh(self) -> None:
        """Re-cache the module tree after a structural change."""
        for key in self._paths:
            _WATCHED.pop(key, None)
        named = list(self.model.named_modules(remove_duplicate=False))
        self._paths = {id(m): path for path, m in named}
        self._modules = [m for _, m in named]
        self._params = [
            (f"{path}.{pname}" if path else pname, p)
            for path, m in named
            for pname, p in m._parameters.items()
            if p is not None
        ]
        self._lazy = any(isinstance(p, nn.parameter.UninitializedTensorMixin) for _, p in self._params)
        self._tensors = [p for _, p in self._params]
        self._dicts = [d for m in self._modules for d in (m._modules, m._parameters, m._buffers)]
        self._known_params = {path: (_shape(p), p.dtype, p.requires_grad) for path, p in self._params}
        for key in self._paths:
            _WATCHED[key] = self
        self._signature = self._take_signature()

    def release(self) -> None:
        for key in self._paths:
            if _WATCHED.get(key) is self:
                del _WATCHED[key]

    def contains(self, module: nn.Module) -> bool:
        return id(module) in self._paths

    def path_of(self, module: nn.Module) -> str:
        return self._paths.get(id(module), "")

    def _take_signature(self) -> tuple[list[Any], ...]:
        """What changes with any structural edit that fires no hook, at C speed per item.

        The lengths of the cached ``_modules``/``_parameters``/``_buffers`` dicts change on
        ``del`` (``del seq[i]`` removes from the old dict before Sequential replaces it); a
        parameter's storage address changes on ``p.data = t`` (a new shape or dtype comes with a
        new storage; in-place updates keep it); ``requires_grad`` changes on freezing. A full
        description is made only when this differs. Lazy parameters have no storage yet, so
        their class and shape are compared instead.
        """
        sizes = list(map(len, self._dicts))
        flags = list(map(_REQUIRES_GRAD, self._tensors))
        if self._lazy:
            return sizes, flags, [(type(p), _shape(p), p.dtype) for p in self._tensors]
        return sizes, flags, list(map(_DATA_PTR, self._tensors))

    def check(self) -> None:
        """Compare the cheap signature with the last one; describe and notify only on change."""
        if self._take_signature() == self._signature:
            return
        old_params, old_modules = self._known_params, set(self._paths.values())
        self.refresh()
        new_params, new_modules = self._known_params, set(self._paths.values())
        old_shapes = {path: spec[:2] for path, spec in old_params.items()}
        new_shapes = {path: spec[:2] for path, spec in new_params.items()}
        if old_modules != new_modules or old_shapes != new_shapes:
            self._notify_edit(
                path=", ".join(sorted(old_modules ^ new_modules)) or _changed(old_shapes, new_shapes),
                old={"modules": sorted(old_modules - new_modules), "params": _shapes(old_shapes, new_shapes)},
                new={"modules": sorted(new_modules - old_modules), "params": _shapes(new_shapes, old_shapes)},
                how="diff",
            )
            return
        frozen = sorted(p for p, spec in new_params.items() if old_params[p][2] and not spec[2])
        thawed = sorted(p for p, spec in new_params.items() if spec[2] and not old_params[p][2])
        for kind, paths in (("freeze", frozen), ("unfreeze", thawed)):
            if paths:
                self.notify_state(kind, paths)

    def notify_state(self, kind: str, paths: list[str]) -> None:
        self._notify(
            "state_changed",
            src=self.name,
            name=self.name,
            kind=kind,
            paths=paths,
            description=self.describe(),
        )

    def on_registration(self, module: nn.Module, attr: str, old: Any, new: Any) -> None:
        """A registration hook fired inside this model (the value is already stored)."""
        base = self.path_of(module)
        self.refresh()
        self._notify_edit(path=f"{base}.{attr}" if base else attr, old=_spec(old), new=_spec(new), how="assign")

    def _notify_edit(self, path: str, old: Any, new: Any, how: str) -> None:
        self._notify(
            "layer_edited",
            src=self.name,
            name=self.name,
            path=path,
            old=old,
            new=new,
            how=how,
            description=self.describe(),
        )


def _shape(tensor: torch.Tensor) -> tuple[int, ...] | str:
    if isinstance(tensor, nn.parameter.UninitializedTensorMixin):
        return "uninitialized"
    return tuple(tensor.shape)


def _changed(old: dict[str, Any], new: dict[str, Any]) -> str:
    return ", ".join(sorted(p for p in set(old) | set(new) if old.get(p) != new.get(p)))


def _shapes(these: dict[str, Any], others: dict[str, Any]) -> dict[str, Any]:
    return {path: list(shape) for path, (shape, _dtype) in these.items() if others.get(path, (None,))[0] != shape}


def untrained_parameters(models: dict[str, ModelWatch], optimizers: list[torch.optim.Optimizer]) -> list[str]:
    """Trainable parameters of the registered models that no registered optimizer updates.

    After ``model.fc = nn.Linear(...)`` the optimizer still holds the old layer's parameters, so
    the new layer never trains, silently. Frozen parameters (``requires_grad=False``) are left
    out. Returns ``"model:path"`` names.
    """
    if not optimizers:
        return []
    updated = {id(p) for optimizer in optimizers for group in optimizer.param_groups for p in group["params"]}
    return [
        f"{name}:{path}"
        for name, watch in models.items()
        for path, parameter in watch.model.named_parameters()
        if parameter.requires_grad and id(parameter) not in updated
    ]


# -- torch's global registration hooks -------------------------------------------------------

_WATCHED: dict[int, ModelWatch] = {}
_install_lock = threading.Lock()
_installed = False


def watch_for(module: nn.Module) -> ModelWatch | None:
    """The watch of the registered model that contains ``module``, if any."""
    return _WATCHED.get(id(module))


def _on_module(module: nn.Module, name: str, value: Any) -> None:
    watch = _WATCHED.get(id(module))
    if watch is None:
        return None
    old = module._modules.get(name)
    module._modules[name] = value
    watch.on_registration(module, name, old, value)
    return None


def _on_parameter(module: nn.Module, name: str, value: Any) -> None:
    watch = _WATCHED.get(id(module))
    if watch is None:
        return None
    old = module._parameters.get(name)
    module._parameters[name] = value
    watch.on_registration(module, name, old, value)
    return None


def _on_buffer(module: nn.Module, name: str, value: Any) -> None:
    watch = _WATCHED.get(id(module))
    if watch is None:
        return None
    old = module._buffers.get(name)
    if value is not None and old is not None and value.shape == old.shape and value.dtype == old.dtype:
        return None
    module._buffers[name] = value
    watch.on_registration(module, name, old, value)
    return None


def install_registration_hooks() -> None:
    """Install torch's global registration hooks once per process (they filter by model)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        registration = torch.nn.modules.module
        registration.register_module_module_registration_hook(_on_module)
        registration.register_module_parameter_registration_hook(_on_parameter)
        registration.register_module_buffer_registration_hook(_on_buffer)
        _installed = True
