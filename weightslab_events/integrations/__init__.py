"""Framework integrations, one small module each, importing its framework only when imported itself.

- :mod:`weightslab_events.integrations.lightning`: ``WeightslabCallback`` for ``lightning.pytorch``
  (``pip install 'weightslab-events[lightning]'``).
- :mod:`weightslab_events.integrations.huggingface`: ``WeightslabTrainerCallback`` for the Hugging
  Face ``Trainer`` (``pip install 'weightslab-events[transformers]'``).

Importing ``weightslab_events`` (or this package) imports neither framework.
"""

from __future__ import annotations

__all__: list[str] = []
