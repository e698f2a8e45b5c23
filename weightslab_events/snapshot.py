"""Copying live training state into buffers the writer may own, and the RNG states.

``state_dict()`` returns live tensors that the next ``optimizer.step()`` changes in place; a
writer that reads them later writes a checkpoint that mixes two steps. So the training thread
copies every tensor before the hand-off. It copies into buffers kept from the previous save
(``copy_`` into a reused buffer costs a fraction of a fresh ``clone()``, which page-faults every
new page), and only tensors whose shape or dtype changed get new buffers.
"""

from __future__ import annotations

import random
import sys
from typing import Any

import torch

from .errors import UnsaveableStateError

__all__ = [
    "LOADABLE_LEAVES",
    "BufferPool",
    "capture_rng",
    "copy_state",
    "restore_rng",
]

Path = tuple[Any, ...]


class BufferPool:
    """Reusable CPU tensors for one in-flight snapshot, keyed by their place in the state."""

    def __init__(self) -> None:
        self._buffers: dict[Path, torch.Tensor] = {}
        self._used: set[Path] = set()

    def copy(self, path: Path, tensor: torch.Tensor) -> torch.Tensor:
        if type(tensor) is not torch.Tensor and getattr(tensor, "device_mesh", None) is not None:
            from .distributed import copy_sharded

            return copy_sharded(self, path, tensor)
        self._used.add(path)
        source = tensor.detach()
        buffer = self._buffers.get(path)
        if source.layout != torch.strided:
            return source.to("cpu", copy=True)
        if buffer is None or buffer.shape != source.shape or buffer.dtype != source.dtype:
            buffer = torch.empty(source.shape, dtype=source.dtype, device="cpu")
            self._buffers[path] = buffer
        buffer.copy_(source)
        return buffer

    def trim(self) -> None:
        """Drop buffers the last snapshot did not use (removed layers must not pin memory)."""
        for path in set(self._buffers) - self._used:
            del self._buffers[path]
        self._used.clear()


#: Leaf types that ``torch.load(weights_only=True)`` reads back.
LOADABLE_LEAVES = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    torch.Tensor,
    torch.dtype,
    torch.device,
    torch.Size,
)


def copy_state(value: Any, pool: BufferPool, path: Path = ()) -> Any:
    """A deep copy of ``value`` in which every tensor lives in ``pool``'s buffers.

    NumPy scalars and 0-d arrays (an lr drawn with ``np.logspace``) become the Python number they equal, since
    a checkpoint loads with ``weights_only=True``, which refuses them. Any other value it would
    refuse raises :class:`UnsaveableStateError` naming its place: the capture fails loudly
    instead of writing a file that can never be resumed.
    """
    if isinstance(value, torch.Tensor):
        return pool.copy(path, value)
    if isinstance(value, dict):
        return {k: copy_state(v, pool, (*path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_state(v, pool, (*path, i)) for i, v in enumerate(value)]
    if isinstance(value, tuple) and not isinstance(value, torch.Size):
        return tuple(copy_state(v, pool, (*path, i)) for i, v in enumerate(value))
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, (numpy.generic, numpy.ndarray)) and value.dtype.kind in "biufc":
        if value.ndim == 0:  # a scalar, or a 0-d array (``lr = np.array(0.05)``, which torch accepts)
            return value.item()
    if type(value) in (float, int) or isinstance(value, LOADABLE_LEAVES):
        return value
    place = "".join(f"[{p!r}]" for p in path)
    raise UnsaveableStateError(
        f"state{place} holds a {type(value).__module__}.{type(value).__qualname__}, which a checkpoint "
        "could store but not load back (checkpoints load with weights_only=True)"
    )


def capture_rng() -> dict[str, Any]:
    """Python, NumPy (if importable), torch CPU and CUDA (if present) RNG states.

    Everything is plain data or tensors, so the checkpoint loads with ``weights_only=True``.
    """
    version, internal, gauss = random.getstate()
    states: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "torch": torch.get_rng_state(),
    }
    try:
        import numpy
    except ImportError:
        numpy = None
    if numpy is not None:
        state = numpy.random.get_state(legacy=False)
        states["numpy"] = {
            "bit_generator": state["bit_generator"],
            "key": torch.from_numpy(state["state"]["key"].astype("int64")),
            "pos": int(state["state"]["pos"]),
            "has_gauss": int(state["has_gauss"]),
            "gauss": float(state["gauss"]),
        }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng(states: dict[str, Any]) -> None:
    """Put back the RNG states that :func:`capture_rng` took."""
    python = states.get("python")
    if python is not None:
        random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    numpy_state = states.get("numpy")
    if numpy_state is not None:
        import numpy

        numpy.random.set_state(
            {
                "bit_generator": numpy_state["bit_generator"],
                "state": {"key": numpy_state["key"].numpy().astype("uint32"), "pos": numpy_state["pos"]},
                "has_gauss": numpy_state["has_gauss"],
                "gauss": numpy_state["gauss"],
            }
        )
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
