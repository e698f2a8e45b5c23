"""Architectures: the module a wrapper hides, and loading a stored one (only on explicit trust)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["FROZEN_MARK", "architecture_text", "load_architecture", "unwrap_model"]


def load_architecture(path: str | Path, *, trusted: bool = False) -> Any:
    """Load ``{hash}_architecture.pkl`` (models with meta tensors, keyed by name).

    Unpickling runs code chosen by whoever wrote the file, so this refuses unless the caller
    says ``trusted=True``. Materialise a model with ``model.to_empty(device=...)`` and then load
    weights from a checkpoint, which itself loads with ``weights_only=True``.
    """
    if not trusted:
        raise PermissionError(
            f"loading {path} unpickles it, which runs code from the file; "
            "call load_architecture(path, trusted=True) only for files you trust"
        )
    return torch.load(Path(path), map_location="meta", weights_only=False)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside runtime wrappers: ``torch.compile`` (``_orig_mod``), DDP and DataParallel.

    A wrapper changes how the model runs, not what it is, like the device: it stays out of the
    hash, and the checkpoint's keys are the plain module's (no ``_orig_mod.`` or ``module.``
    prefix), so a run resumes across wrapped and unwrapped. Wrappers may nest
    (``torch.compile(DDP(model))``).
    """
    while True:
        if type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


FROZEN_MARK = "  # frozen"


def _frozen(module: nn.Module) -> bool:
    flags = [p.requires_grad for p in module.parameters()]
    return bool(flags) and not any(flags)


def architecture_text(module: nn.Module) -> str:
    """``repr(module)`` with ``# frozen`` after each outermost module whose parameters are all frozen.

    The text is the one torch prints (same layout), so it reads as usual; a module class with
    its own ``__repr__`` is printed by it, unmarked inside.
    """
    text = _text(module)
    return text + FROZEN_MARK if _frozen(module) else text


def _text(module: nn.Module) -> str:
    if type(module).__repr__ is not nn.Module.__repr__:
        return repr(module)
    extra = module.extra_repr()
    extra_lines = extra.split("\n") if extra else []
    child_lines = []
    for key, child in module._modules.items():
        if child is None:
            continue
        child_text = architecture_text(child) if not _frozen(module) else _text(child)
        child_lines.append(f"({key}): " + child_text.replace("\n", "\n  "))
    lines = extra_lines + child_lines
    body = ""
    if len(extra_lines) == 1 and not child_lines:
        body = extra_lines[0]
    elif lines:
        body = "\n  " + "\n  ".join(lines) + "\n"
    return f"{module._get_name()}({body})"
