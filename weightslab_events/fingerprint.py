"""Canonical descriptions of what defines an experiment, and the experiment hash.

The hash is ``SHA256`` over canonical JSON (sorted keys, no whitespace) of every registered
component's description, first 16 hex characters. What goes in, and why:

- a model: its module tree (paths, types, constructor-level settings read from ``extra_repr``),
  parameter and buffer shapes and dtypes, trainable flags and per-module reset counts. Never the
  weights, and never the device: the same experiment moved to a GPU is the same experiment.
- hyperparameters: the registered mappings as they are.
- an optimizer: its class and each group's configured values, without runtime flags (``foreach``,
  ``fused``...) and without ``initial_lr``, which schedulers add.
- a scheduler: its class and settings, without its progress (``last_epoch``, computed lrs, counters).

A value whose text holds a memory address would give a new hash in every process, so it is a
:class:`NotDescribableError` naming the key rather than a silently unstable hash.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .callables import describe_callable
from .errors import NotDescribableError

if TYPE_CHECKING:  # torch is imported where a tensor is met: replay and the command line hash without it
    import torch
    from torch import nn

__all__ = [
    "RUNTIME_GROUP_KEYS",
    "canonical",
    "canonical_json",
    "describe_model",
    "describe_optimizer",
    "describe_scheduler",
    "experiment_hash",
    "from_canonical",
    "group_config",
    "plain_number",
]

HASH_LENGTH = 16

#: Optimizer group keys that change how, not what, is computed, or that schedulers add.
RUNTIME_GROUP_KEYS = frozenset(
    {"params", "foreach", "fused", "differentiable", "capturable", "initial_lr", "decoupled_weight_decay"}
)

#: Scheduler state that is progress, not configuration.
_SCHEDULER_PROGRESS_KEYS = frozenset(
    {"last_epoch", "best", "num_bad_epochs", "cooldown_counter", "T_cur", "base_lrs", "min_lrs_"}
)

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")


#: How deep a described value may nest; deeper is an error naming the key, not a RecursionError.
MAX_DEPTH = 100

#: Tag keys of the canonical form. A user key starting with ``!`` is escaped with one more ``!``,
#: so a tag never collides with a user's key.
TAGS = ("!float", "!map", "!set", "!array", "!callable", "!module", "!object")

#: Tags whose value describes an object (a digest, code, settings, text) rather than being it.
DESCRIPTION_TAGS = frozenset({"!array", "!callable", "!module", "!object"})


def canonical(value: Any, key: str = "value") -> Any:
    """``value`` as deterministic JSON data; ``key`` names it in the error when that fails.

    Types are kept, so distinct values never collide: ``1`` and ``"1"`` as keys, ``inf`` and
    ``"inf"``, ``1`` and ``1.0``, a set and a list, a path or dtype and its text all differ
    (objects are tagged with their type). A module held as a value is described by its type,
    its plain attributes (see :func:`module_settings`), its tensors' digests and its submodules.
    NumPy scalars describe as the equal Python number
    (``np.float64(0.1)`` hashes like ``0.1``); arrays and multi-element tensors by dtype, shape
    and a digest of their contents; callables by what they compute (see :mod:`.callables`).
    """
    return _Describer().describe(value, key, 0)


class _Describer:
    """One walk over a value: tracks depth and the containers and callables being described."""

    def __init__(self) -> None:
        self._active: set[int] = set()

    def describe(self, value: Any, key: str, depth: int) -> Any:
        if value is None or type(value) in (bool, int, str):
            return value
        if type(value) is float:
            return value if math.isfinite(value) else {"!float": repr(value)}
        if depth > MAX_DEPTH:
            raise NotDescribableError(
                f"{_short(key)!r} is nested more than {MAX_DEPTH} levels deep; "
                "register a flatter value (a deeply nested or self-referencing structure cannot be hashed)"
            )
        number = plain_number(value)
        if number is not None:
            return self.describe(number, key, depth)
        if id(value) in self._active:
            if callable(value):
                return {"!callable": {"recursive": getattr(value, "__qualname__", type(value).__qualname__)}}
            raise NotDescribableError(f"{_short(key)!r} contains itself; register a value without cycles")
        self._active.add(id(value))
        try:
            return self._describe_compound(value, key, depth + 1)
        finally:
            self._active.discard(id(value))

    def _describe_compound(self, value: Any, key: str, depth: int) -> Any:
        if isinstance(value, Mapping):
            return self._describe_mapping(value, key, depth)
        if isinstance(value, (list, tuple)):
            return [self.describe(v, f"{key}[{i}]", depth) for i, v in enumerate(value)]
        if isinstance(value, (set, frozenset)):
            return {"!set": sorted((self.describe(v, key, depth) for v in value), key=canonical_json)}
        torch = sys.modules.get("torch")  # no tensor, dtype or module exists before torch is imported
        if torch is not None and isinstance(value, torch.Tensor):
            if value.numel() == 1 and not value.is_meta:
                return self.describe(value.item(), key, depth)
            return {"!array": tensor_digest(value)}
        if _is_numpy_array(value):
            return {"!array": array_digest(value)}
        if torch is not None and isinstance(value, (torch.dtype, torch.device)):
            return {"!object": {"type": _type_name(value), "text": str(value)}}
        if torch is not None and isinstance(value, torch.nn.Module):
            return {"!module": self._describe_module(value, key, depth)}
        if callable(value):
            return {"!callable": describe_callable(value, key, lambda v, k: self.describe(v, k, depth))}
        text = repr(value)
        if _ADDRESS.search(text):
            raise NotDescribableError(
                f"hyperparameter {key!r} holds {type(value).__name__} whose text has a memory "
                f"address ({text}); it would give a different experiment hash in every process. "
                "Register a plain value (number, string, list, dict) instead."
            )
        return {"!object": {"type": _type_name(value), "text": text}}

    def _describe_module(self, module: nn.Module, key: str, depth: int) -> dict[str, Any]:
        """A module held as a value (a loss, say): type, settings, tensors by digest, submodules."""
        described: dict[str, Any] = {"type": _type_name(module), "settings": module_settings(module)}
        extra = module.extra_repr()
        if extra and not _ADDRESS.search(extra):
            described["extra_repr"] = extra
        tensors = {
            name: tensor_digest(t)
            for name, t in itertools.chain(module._parameters.items(), module._buffers.items())
            if t is not None
        }
        if tensors:
            described["tensors"] = tensors
        children = {
            name: self.describe(child, f"{key}.{name}", depth)
            for name, child in module._modules.items()
            if child is not None
        }
        if children:
            described["children"] = children
        return described

    def _describe_mapping(self, value: Mapping, key: str, depth: int) -> Any:
        items = list(value.items())
        if all(type(k) is str for k, _ in items):
            return {_escape(k): self.describe(v, f"{key}.{k}", depth) for k, v in items}
        pairs = [[self.describe(k, key, depth), self.describe(v, f"{key}.{k}", depth)] for k, v in items]
        return {"!map": sorted(pairs, key=lambda pair: canonical_json(pair[0]))}


def _escape(key: str) -> str:
    return f"!{key}" if key.startswith("!") else key


def _unescape(key: str) -> str:
    return key[1:] if key.startswith("!!") else key


def _short(key: str) -> str:
    return key if len(key) <= 80 else f"{key[:38]}...{key[-38:]}"


def plain_number(value: Any) -> bool | int | float | complex | None:
    """A NumPy scalar or 0-d array as the equal Python number (``np.float32(0.5)`` -> ``0.5``), else ``None``.

    ``np.float64`` subclasses ``float``, and ``np.bool_`` / ``np.int64`` do not subclass
    anything built in; both kinds are normalised so that YAML and JSON can write them and they
    hash like the Python number they equal.
    """
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, (numpy.generic, numpy.ndarray)) and value.dtype.kind in "biufc":
        if value.ndim == 0:  # a 0-d array (``np.array(0.05)``) is the number it holds, like a scalar
            return value.item()
        return None
    if isinstance(value, float) and type(value) is not float:
        return float(value)
    if isinstance(value, int) and type(value) not in (int, bool):
        return int(value)
    return None


def module_settings(module: nn.Module) -> dict[str, Any]:
    """A module's constructor-level attributes: the plain values in its ``__dict__``.

    ``extra_repr`` leaves many out (``CrossEntropyLoss(label_smoothing=0.1)`` prints as
    ``CrossEntropyLoss()``, ``MultiheadAttention`` never shows its dropout, a custom module
    shows nothing), so every public attribute whose value is ``None``, a bool, a number, a string
    or a list/tuple of those is described. ``training`` is left out: ``eval()`` is not another
    experiment.
    """
    settings: dict[str, Any] = {}
    for name, value in sorted(vars(module).items()):
        if name.startswith("_") or name == "training" or not _plain_setting(value):
            continue
        settings[name] = canonical(value, name)
    return settings


def _plain_setting(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)) or plain_number(value) is not None:
        return True
    return isinstance(value, (list, tuple)) and all(_plain_setting(v) for v in value)


def _is_numpy_array(value: Any) -> bool:
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(value, numpy.ndarray)


def tensor_digest(tensor: torch.Tensor) -> dict[str, Any]:
    """A tensor's dtype, shape and SHA-256 (16 hex characters) of its contents."""
    spec: dict[str, Any] = {"dtype": str(tensor.dtype), "shape": list(tensor.shape)}
    import torch

    if tensor.is_meta or isinstance(tensor, torch.nn.parameter.UninitializedTensorMixin):
        return spec
    data = tensor.detach().to("cpu").contiguous().reshape(-1)
    spec["sha256"] = hashlib.sha256(data.view(torch.uint8).numpy().tobytes()).hexdigest()[:16]
    return spec


def array_digest(array: Any) -> dict[str, Any]:
    """A NumPy array's dtype, shape and SHA-256 (16 hex characters) of its contents."""
    if array.dtype.hasobject:
        raise NotDescribableError(f"an array of Python objects ({array.dtype}) cannot be described deterministically")
    data = array.tobytes(order="C")
    return {"dtype": str(array.dtype), "shape": list(array.shape), "sha256": hashlib.sha256(data).hexdigest()[:16]}


def from_canonical(value: Any) -> Any:
    """Undo the reversible parts of :func:`canonical` (tagged floats, non-string keys, escapes).

    Arrays, callables, modules and other objects stay as their descriptions: a digest or a text
    cannot be turned back into the object.
    """
    if isinstance(value, list):
        return [from_canonical(v) for v in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {"!float"}:
        return float(value["!float"])
    if set(value) == {"!set"}:
        return {_hashable(from_canonical(v)) for v in value["!set"]}
    if set(value) == {"!map"}:
        return {_hashable(from_canonical(k)): from_canonical(v) for k, v in value["!map"]}
    return {_unescape(k): from_canonical(v) for k, v in value.items()}


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _type_name(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _tensor_spec(tensor: torch.Tensor | None, trainable: bool | None = None) -> dict[str, Any]:
    if tensor is None:
        return {"shape": None}
    from torch.nn.parameter import UninitializedTensorMixin

    if isinstance(tensor, UninitializedTensorMixin):
        spec: dict[str, Any] = {"shape": "uninitialized", "dtype": str(tensor.dtype)}
    else:
        spec = {"shape": list(tensor.shape), "dtype": str(tensor.dtype)}
    if trainable is not None:
        spec["trainable"] = trainable
    return spec


def describe_model(model: nn.Module, reset_counts: Mapping[nn.Module, int] | None = None) -> dict[str, Any]:
    """The model's architecture: one entry per module path, in registration order."""
    modules: dict[str, Any] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        settings = module.extra_repr()
        if _ADDRESS.search(settings):
            raise NotDescribableError(
                f"module {path or '<root>'!r} ({type(module).__name__}) describes itself with a "
                f"memory address in extra_repr(): {settings!r}"
            )
        entry: dict[str, Any] = {"type": _type_name(module)}
        if settings:
            entry["settings"] = settings
        attributes = module_settings(module)
        if attributes:
            entry["attributes"] = attributes
        params = {
            name: _tensor_spec(p, bool(p.requires_grad) if p is not None else None)
            for name, p in module._parameters.items()
        }
        if params:
            entry["params"] = params
        buffers = {
            name: _tensor_spec(b)
            for name, b in module._buffers.items()
            if name not in module._non_persistent_buffers_set
        }
        if buffers:
            entry["buffers"] = buffers
        resets = (reset_counts or {}).get(module, 0)
        if resets:
            entry["resets"] = resets
        modules[path] = entry
    return {"kind": "model", "modules": modules}


def group_config(group: Mapping[str, Any]) -> dict[str, Any]:
    """The configured values of one optimizer param group (runtime flags left out)."""
    return {k: v for k, v in group.items() if k not in RUNTIME_GROUP_KEYS}


def describe_optimizer(
    optimizer: torch.optim.Optimizer, configured: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The optimizer class and each group's configured values and size.

    ``configured`` holds the values the user set (scheduler moves excluded); without it the
    groups' current values are used.
    """
    groups = []
    for index, group in enumerate(optimizer.param_groups):
        values = configured[index] if configured is not None else group_config(group)
        described = canonical(values, f"param_groups[{index}]")
        described["n_params"] = len(group["params"])
        groups.append(described)
    return {"kind": "optimizer", "type": _type_name(optimizer), "groups": groups}


def describe_scheduler(scheduler: Any) -> dict[str, Any]:
    """The scheduler class and its settings; its progress is left out.

    Functions a scheduler holds (``LambdaLR``'s ``lr_lambdas``, a ``CyclicLR`` ``scale_fn``)
    are not in its ``state_dict()``, so they are read from the object and described by what they
    compute: two warmup lambdas with other constants are two experiments. A ``SequentialLR`` or
    ``ChainedScheduler`` is described by its parts and milestones.
    """
    from torch.optim import Optimizer

    state = scheduler.state_dict() if hasattr(scheduler, "state_dict") else {}
    settings = {
        k: v
        for k, v in state.items()
        if not k.startswith("_") and k not in _SCHEDULER_PROGRESS_KEYS and k != "optimizer"
    }
    children = getattr(scheduler, "_schedulers", None)
    if isinstance(children, (list, tuple)):  # SequentialLR, ChainedScheduler: the parts and when
        settings["schedulers"] = [describe_scheduler(child) for child in children]
        settings["milestones"] = list(getattr(scheduler, "_milestones", []))
    for attribute, value in vars(scheduler).items():
        if attribute.startswith("_") or attribute == "optimizer":
            continue
        functions = value if isinstance(value, (list, tuple)) else [value]
        if functions and all(callable(f) and not isinstance(f, (Optimizer, type)) for f in functions):
            settings[attribute] = value
    return {"kind": "scheduler", "type": _type_name(scheduler), "settings": canonical(settings, "scheduler")}


def experiment_hash(components: Mapping[str, Any]) -> str:
    """Hash of all component descriptions, keyed ``kind:name``."""
    return hashlib.sha256(canonical_json(components).encode()).hexdigest()[:HASH_LENGTH]
