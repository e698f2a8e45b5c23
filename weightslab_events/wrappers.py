"""Optimizer wrappers: find the torch optimizer that really steps inside a framework's wrapper.

Frameworks hand the user a wrapper instead of the optimizer they built: accelerate's
``AcceleratedOptimizer`` (what the Hugging Face ``Trainer`` holds) and Lightning's
``LightningOptimizer`` (what ``self.optimizers()`` returns). Both look like a
``torch.optim.Optimizer`` but neither is the object whose ``step()`` runs the step hooks the
library counts with: the first never called ``Optimizer.__init__`` (so it has no hook tables), the
second shares the inner optimizer's hook tables but the hooks see the inner optimizer.

Policy: registration unwraps, so the user's script needs no wrapper-specific code.

- A known wrapper (found by class name in the MRO, so neither framework is imported here) is
  unwrapped through its documented attribute.
- Any other object that holds, in one of its attributes, an optimizer sharing its very
  ``param_groups`` list is a wrapper of that optimizer too, and is unwrapped the same way.
- What remains must be a real optimizer with step hooks; anything else is refused at registration
  with :class:`UnsupportedOptimizerError`, rather than accepted and silently never counted.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["UnsupportedOptimizerError", "unwrap_optimizer"]

#: (module, class name) of known wrappers -> the attribute holding the wrapped optimizer.
KNOWN_WRAPPERS: dict[tuple[str, str], str] = {
    ("accelerate.optimizer", "AcceleratedOptimizer"): "optimizer",
    ("lightning.pytorch.core.optimizer", "LightningOptimizer"): "_optimizer",
    ("pytorch_lightning.core.optimizer", "LightningOptimizer"): "_optimizer",
    ("lightning.fabric.wrappers", "_FabricOptimizer"): "_optimizer",
}

_MAX_DEPTH = 8


class UnsupportedOptimizerError(TypeError):
    """The registered object is not an optimizer whose steps can be observed, nor a known wrapper of one."""


def _known_inner(obj: Any) -> Any | None:
    for cls in type(obj).__mro__:
        attribute = KNOWN_WRAPPERS.get((cls.__module__, cls.__qualname__))
        if attribute is not None:
            return getattr(obj, attribute, None)
    return None


def _inner_sharing_groups(obj: Any) -> Any | None:
    """An attribute of ``obj`` that is an optimizer with the same ``param_groups`` list object."""
    try:
        groups = obj.param_groups
        attributes = vars(obj)
    except (AttributeError, TypeError):
        return None
    for value in attributes.values():
        if value is not obj and isinstance(value, torch.optim.Optimizer) and value.param_groups is groups:
            return value
    return None


def _has_step_hooks(obj: Any) -> bool:
    return isinstance(obj, torch.optim.Optimizer) and hasattr(obj, "_optimizer_step_pre_hooks")


def unwrap_optimizer(name: str, optimizer: Any) -> torch.optim.Optimizer:
    """The optimizer inside ``optimizer`` whose steps the library can observe.

    Returns ``optimizer`` itself when it is a plain torch optimizer. Raises
    :class:`UnsupportedOptimizerError` naming the registration and the type otherwise.
    """
    current = optimizer
    for _ in range(_MAX_DEPTH):
        inner = _known_inner(current)
        if inner is None:
            inner = _inner_sharing_groups(current)
        if inner is None or inner is current:
            break
        current = inner
    if _has_step_hooks(current):
        return current
    kind = type(optimizer).__name__
    if current is not optimizer:
        kind = f"{kind} (wrapping {type(current).__name__})"
    raise UnsupportedOptimizerError(
        f"register_optimizer({name!r}, ...): {kind} is not a torch.optim.Optimizer whose steps can be observed "
        "(it has no step hooks: Optimizer.__init__ was never called) and it is no known wrapper of one. "
        "Register the torch optimizer it wraps instead."
    )
