"""Loading a stored architecture, which means unpickling, so only on explicit trust."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["load_architecture"]


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
