"""The live hyperparameter mapping that ``register_hyperparams`` returns.

It is a view over the user's own dict, not a copy: every write lands in that dict, so code that
kept a reference to it sees the change, and the identity of the registered dict never changes.
Writes through the view (nested keys too) are announced at once; writes made straight to the
underlying dict are found by the step-boundary diff in :mod:`.watch`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, TypeVar

from .fingerprint import canonical

T = TypeVar("T")

#: How often a read of a dict that another thread is editing is retried before giving up.
READ_ATTEMPTS = 20

__all__ = ["HyperParams", "diff_paths", "read_consistently", "same_value"]

OnChange = Callable[[str, Any, Any], None]
_MISSING = object()


class HyperParams(MutableMapping):
    """A mutable mapping over ``data`` that reports ``(key_path, old, new)`` on each write."""

    def __init__(self, data: dict, on_change: OnChange, path: str = "") -> None:
        if not isinstance(data, dict):
            raise TypeError(f"hyperparameters must be a dict, got {type(data).__name__}")
        self._data = data
        self._on_change = on_change
        self._path = path

    def _key_path(self, key: Any) -> str:
        return f"{self._path}.{key}" if self._path else str(key)

    def __getitem__(self, key: Any) -> Any:
        value = self._data[key]
        if isinstance(value, dict):
            return HyperParams(value, self._on_change, self._key_path(key))
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        old = self._data.get(key, _MISSING)
        if old is not _MISSING and same_value(old, value):
            return
        self._data[key] = value
        self._on_change(self._key_path(key), None if old is _MISSING else old, value)

    def __delitem__(self, key: Any) -> None:
        old = self._data.pop(key)
        self._on_change(self._key_path(key), old, None)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"HyperParams({self._data!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, HyperParams):
            return self._data == other._data
        return self._data == other

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict:
        """A deep copy of the current values, safe to keep."""
        return copy.deepcopy(self._data)

    @property
    def raw(self) -> dict:
        """The underlying dict itself (writes to it are detected by the next step)."""
        return self._data


def diff_paths(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """Every ``(key_path, old, new)`` where two nested mappings differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        found: list[tuple[str, Any, Any]] = []
        for key in list(old) + [k for k in new if k not in old]:
            sub = f"{path}.{key}" if path else str(key)
            found.extend(diff_paths(old.get(key), new.get(key), sub))
        return found
    if same_value(old, new):
        return []
    return [(path, old, new)]


def same_value(a: Any, b: Any) -> bool:
    """Whether two hyperparameter values are the same, of the same type; never raises.

    ``==`` on arrays and multi-element tensors returns an array whose truth value raises, so
    those (and anything else whose comparison fails) are compared by their canonical
    description: dtype, shape and a digest of the contents.
    """
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    try:
        return bool(a == b)
    except Exception:
        try:
            return canonical(a) == canonical(b)
        except Exception:
            return False


def read_consistently(read: Callable[[], T]) -> T:
    """Run ``read`` over a user's dict that another thread may be editing, retrying if it changed.

    Iterating a dict while another thread adds a key raises ``RuntimeError: dictionary changed
    size during iteration``. Edits from any thread are allowed, so the read is simply made again
    (the GIL makes each attempt see the dict between two edits, never halfway through one).
    """
    for _attempt in range(READ_ATTEMPTS - 1):
        try:
            return read()
        except RuntimeError as error:
            if "during iteration" not in str(error) and "mutated" not in str(error):
                raise
    return read()
