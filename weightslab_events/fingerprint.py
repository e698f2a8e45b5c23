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
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .errors import NotDescribableError

__all__ = [
    "RUNTIME_GROUP_KEYS",
    "canonical",
    "canonical_json",
    "describe_model",
    "describe_optimizer",
    "describe_scheduler",
    "experiment_hash",
    "group_config",
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


def canonical(value: Any, key: str = "value") -> Any:
    """``value`` as deterministic JSON data; ``key`` names it in the error when that fails."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return repr(value)
    if isinstance(value, Mapping):
        return {str(k): canonical(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        return sorted((canonical(v, key) for v in value), key=repr)
    if isinstance(value, torch.Tensor):
        if value.numel() == 1:
            return canonical(value.item(), key)
        return {"tensor": list(value.shape), "dtype": str(value.dtype)}
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    text = repr(value)
    if _ADDRESS.search(text):
        raise NotDescribableError(
            f"hyperparameter {key!r} holds {type(value).__name__} whose text has a memory "
            f"address ({text}); it would give a different experiment hash in every process. "
            "Register a plain value (number, string, list, dict) instead."
        )
    return text


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _type_name(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _tensor_spec(tensor: torch.Tensor | None, trainable: bool | None = None) -> dict[str, Any]:
    if tensor is None:
        return {"shape": None}
    if isinstance(tensor, nn.parameter.UninitializedTensorMixin):
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
    """The scheduler class and its settings; its progress is left out."""
    state = scheduler.state_dict() if hasattr(scheduler, "state_dict") else {}
    settings = {
        k: v
        for k, v in state.items()
        if not k.startswith("_") and k not in _SCHEDULER_PROGRESS_KEYS and k != "optimizer"
    }
    return {"kind": "scheduler", "type": _type_name(scheduler), "settings": canonical(settings, "scheduler")}


def experiment_hash(components: Mapping[str, Any]) -> str:
    """Hash of all component descriptions, keyed ``kind:name``."""
    return hashlib.sha256(canonical_json(components).encode()).hexdigest()[:HASH_LENGTH]
