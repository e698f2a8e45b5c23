"""Putting a loaded checkpoint back into live objects.

The architecture is compared before anything is loaded, so a mismatch leaves every object as it
was and the error lists every difference, not just the first one torch trips over.
"""

from __future__ import annotations

import copy
import sys
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .errors import ArchitectureMismatchError, OptimizerMismatchError, UnsaveableStateError
from .snapshot import LOADABLE_LEAVES

__all__ = [
    "architecture_differences",
    "check_architecture",
    "check_optimizers",
    "optimizer_type",
    "restore_stateful",
    "state_of_stateful",
]


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


def optimizer_type(optimizer: Any) -> str:
    """The qualified class name a checkpoint records for an optimizer."""
    cls = type(optimizer)
    return f"{cls.__module__}.{cls.__qualname__}"


def optimizer_differences(name: str, optimizer: Any, saved: Mapping[str, Any], saved_type: str | None) -> list[str]:
    """Every way ``optimizer`` cannot take the saved state: its class, its groups, their sizes."""
    found = []
    live_type = optimizer_type(optimizer)
    if saved_type is not None and saved_type != live_type:
        found.append(f"optimizer {name!r} is a {live_type} here, a {saved_type} in the checkpoint")
    live_groups, saved_groups = optimizer.param_groups, saved.get("param_groups", [])
    if len(live_groups) != len(saved_groups):
        found.append(
            f"optimizer {name!r} has {len(live_groups)} param group(s) here, {len(saved_groups)} in the checkpoint"
        )
        return found
    for index, (live, stored) in enumerate(zip(live_groups, saved_groups, strict=True)):
        if len(live["params"]) != len(stored.get("params", [])):
            found.append(
                f"optimizer {name!r} group {index} has {len(live['params'])} parameter(s) here, "
                f"{len(stored.get('params', []))} in the checkpoint"
            )
    return found


def check_optimizers(optimizers: Mapping[str, Any], payload: Mapping[str, Any], where: str) -> None:
    """Raise :class:`OptimizerMismatchError` listing every difference, before anything is loaded.

    Checked with the architecture so that a mismatch leaves the model, the optimizers and
    everything else as they were (Adam's state loaded into SGD, or the reverse, is refused by
    name instead of raising torch's ``KeyError: 'step'`` halfway through a restore).
    """
    saved_states = payload.get("optimizers", {})
    saved_types = payload.get("optimizer_types", {})
    differences: list[str] = []
    for name, optimizer in optimizers.items():
        if name in saved_states:
            differences.extend(optimizer_differences(name, optimizer, saved_states[name], saved_types.get(name)))
    if differences:
        listing = "\n  ".join(differences)
        raise OptimizerMismatchError(
            f"checkpoint {where} was made with another optimizer ({len(differences)} differences):\n  {listing}",
            differences,
        )


#: The key that marks an encoded NumPy value in a saved state.
NUMPY_MARK = "__weightslab_numpy__"


def state_of_stateful(obj: Any, name: str = "stateful") -> Any:
    """The saveable state of a registered stateful object (a ``torch.Generator`` included).

    NumPy arrays and scalars (a ``RandomState`` state, a sampler's permutation) are encoded as
    tensors of their bytes with their dtype and shape, and decoded again by
    :func:`restore_stateful`, so they round-trip exactly. Anything else that a checkpoint loaded
    with ``weights_only=True`` could not read raises :class:`UnsaveableStateError` naming where
    it is: a saved file that can never be resumed is worse than a clear error now.
    """
    if isinstance(obj, torch.Generator):
        return obj.get_state()
    if hasattr(obj, "state_dict"):
        return _encode(obj.state_dict(), f"{name}.state_dict()", 0)
    raise TypeError(
        f"stateful object {type(obj).__name__} has no state_dict()/load_state_dict(); "
        "register an object that has both, or a torch.Generator"
    )


def restore_stateful(obj: Any, state: Any) -> None:
    if isinstance(obj, torch.Generator):
        obj.set_state(state)
    else:
        obj.load_state_dict(_decode(copy.deepcopy(state)))


def _encode(value: Any, where: str, depth: int) -> Any:
    if depth > 100:
        raise UnsaveableStateError(f"{where} is nested more than 100 levels deep")
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, (str, int, float, bool, type(None))):
                raise UnsaveableStateError(f"{where} has a key of type {type(key).__name__}: {key!r}")
        mapping = OrderedDict if isinstance(value, OrderedDict) else dict
        return mapping((k, _encode(v, f"{where}[{k!r}]", depth + 1)) for k, v in value.items())
    if isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):
        items = [_encode(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, (numpy.ndarray, numpy.generic)):
        return _encode_numpy(value, where)
    if isinstance(value, LOADABLE_LEAVES):
        return value
    raise UnsaveableStateError(
        f"{where} holds a {type(value).__module__}.{type(value).__qualname__}, which a checkpoint "
        "could store but not load back (checkpoints load with weights_only=True); return plain "
        "numbers, strings, lists, dicts, tensors or NumPy arrays from state_dict()"
    )


def _encode_numpy(value: Any, where: str) -> dict[str, Any]:
    if value.dtype.hasobject:
        raise UnsaveableStateError(f"{where} is a NumPy array of Python objects ({value.dtype}), which cannot be saved")
    array = value if value.ndim else value.reshape(1)
    data = torch.frombuffer(bytearray(array.tobytes(order="C")), dtype=torch.uint8)
    shape = list(value.shape) if isinstance(value, sys.modules["numpy"].ndarray) else None
    return {NUMPY_MARK: value.dtype.str, "shape": shape, "bytes": data}


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if NUMPY_MARK in value and set(value) == {NUMPY_MARK, "shape", "bytes"}:
            import numpy

            flat = numpy.frombuffer(value["bytes"].numpy().tobytes(), dtype=numpy.dtype(value[NUMPY_MARK]))
            return flat[0] if value["shape"] is None else flat.reshape(value["shape"]).copy()
        return type(value)((k, _decode(v)) for k, v in value.items())
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, tuple) and not isinstance(value, torch.Size):
        return tuple(_decode(v) for v in value)
    return value
