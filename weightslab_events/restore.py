"""Putting a loaded checkpoint back into live objects.

The architecture is compared before anything is loaded, so a mismatch leaves every object as it
was and the error lists every difference, not just the first one torch trips over.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .errors import ArchitectureMismatchError

__all__ = ["architecture_differences", "check_architecture", "restore_stateful", "state_of_stateful"]


def architecture_differences(name: str, model: nn.Module, saved: Mapping[str, torch.Tensor]) -> list[str]:
    """Every way ``model``'s state differs in shape from the saved state dict."""
    live = model.state_dict()
    found = []
    for key in live:
        if key not in saved:
            found.append(f"model {name!r}: {key} exists here but not in the checkpoint")
        elif tuple(live[key].shape) != tuple(saved[key].shape):
            found.append(
                f"model {name!r}: {key} has shape {list(live[key].shape)} here, "
                f"{list(saved[key].shape)} in the checkpoint"
            )
    found.extend(f"model {name!r}: {key} is in the checkpoint but not here" for key in saved if key not in live)
    return found


def check_architecture(models: Mapping[str, nn.Module], saved: Mapping[str, Any], where: str) -> None:
    """Raise :class:`ArchitectureMismatchError` listing every difference, or return."""
    differences: list[str] = []
    for name, model in models.items():
        if name not in saved:
            differences.append(f"model {name!r} is registered but not in the checkpoint")
            continue
        differences.extend(architecture_differences(name, model, saved[name]))
    if differences:
        listing = "\n  ".join(differences)
        raise ArchitectureMismatchError(
            f"checkpoint {where} was made for another architecture ({len(differences)} differences):\n  {listing}",
            differences,
        )


def state_of_stateful(obj: Any) -> Any:
    """The saveable state of a registered stateful object (a ``torch.Generator`` included)."""
    if isinstance(obj, torch.Generator):
        return obj.get_state()
    if hasattr(obj, "state_dict"):
        return obj.state_dict()
    raise TypeError(
        f"stateful object {type(obj).__name__} has no state_dict()/load_state_dict(); "
        "register an object that has both, or a torch.Generator"
    )


def restore_stateful(obj: Any, state: Any) -> None:
    if isinstance(obj, torch.Generator):
        obj.set_state(state)
    else:
        obj.load_state_dict(copy.deepcopy(state))
