"""Putting a checkpoint's hyperparameters back into the user's live dict, without damaging it.

A checkpoint stores hyperparameters in their canonical form (:func:`.fingerprint.canonical`).
Plain values (numbers, strings, lists, dicts, tagged floats) come back exactly; everything else
is stored only as a *description*: an array or tensor as its dtype, shape and digest, a callable
as what it computes, a module, path or dtype as its text. A description is not the value, so
the policy is:

- a stored value replaces a live one only when both sides are plain data: then the stored one
  is the value itself (a tuple stays a tuple, a NumPy scalar keeps its type);
- a live object (array, tensor, module, callable, path, dtype...) is never replaced by its
  stored description: it stays, and if it differs from what the checkpoint was trained with,
  the hash says so (resume re-describes every component and forks on a difference);
- nested dicts are merged key by key with the same rule; keys the checkpoint did not have are
  removed, and plain keys only the checkpoint had are added.

The same holds for an optimizer's param groups: a checkpoint stores a NumPy lr as the Python
number it equals, and a restored ``np.float32`` lr stays an ``np.float32`` (see
:func:`number_types`), so ``lr *= 0.3`` after a resume computes what it computed in the
uninterrupted run, and forks to the same hash.
"""

from __future__ import annotations

from typing import Any

from .errors import NotDescribableError
from .fingerprint import DESCRIPTION_TAGS, TAGS, canonical, from_canonical, plain_number

__all__ = ["keep_number_types", "number_types", "restore_hyperparams"]


def restore_hyperparams(live: dict, stored: Any) -> None:
    """Make ``live`` hold the checkpoint's values where they can be restored (see the module)."""
    if not isinstance(stored, dict):
        return
    pairs = _stored_items(stored)
    kept = {key for key, _ in pairs}
    for key in [k for k in live if k not in kept]:
        del live[key]
    for key, value in pairs:
        if key in live:
            live[key] = _merged(live[key], value)
        elif _restorable(value):
            live[key] = from_canonical(value)


def _stored_items(stored: dict) -> list[tuple[Any, Any]]:
    """The ``(key, canonical value)`` pairs of a stored mapping, keys decoded."""
    if set(stored) == {"!map"}:
        return [(_hashable_key(from_canonical(key)), value) for key, value in stored["!map"]]
    return [(key[1:] if key.startswith("!!") else key, value) for key, value in stored.items()]


def _hashable_key(key: Any) -> Any:
    return tuple(_hashable_key(k) for k in key) if isinstance(key, list) else key


def _merged(live: Any, stored: Any) -> Any:
    try:
        if canonical(live) == stored:
            return live
    except NotDescribableError:
        pass
    if isinstance(live, dict) and _is_mapping_form(stored):
        restore_hyperparams(live, stored)
        return live
    if not (_plain(live) and _restorable(stored)):
        return live
    value = from_canonical(stored)
    if type(live) is tuple and isinstance(value, list):
        return tuple(value)
    if plain_number(live) is not None and type(value) in (int, float) and not isinstance(live, bool):
        converted = type(live)(value)
        return converted if plain_number(converted) == value else value
    return value


def _is_mapping_form(stored: Any) -> bool:
    """A stored dict (string keys, or ``!map`` pairs), not a tagged value."""
    if not isinstance(stored, dict):
        return False
    tagged = len(stored) == 1 and next(iter(stored)) in TAGS
    return not tagged or "!map" in stored


def _restorable(stored: Any) -> bool:
    """Whether a canonical value is the value itself, not a description of an object."""
    if isinstance(stored, list):
        return all(_restorable(v) for v in stored)
    if isinstance(stored, dict):
        if set(stored) & DESCRIPTION_TAGS:
            return False
        return all(_restorable(v) for v in stored.values())
    return True


def _plain(value: Any) -> bool:
    """Whether a live value is plain data, whose canonical form is the value itself."""
    if value is None or type(value) in (bool, int, float, str) or plain_number(value) is not None:
        return True
    if type(value) in (list, tuple, set):
        return all(_plain(v) for v in value)
    if type(value) is dict:
        return all(_plain(k) and _plain(v) for k, v in value.items())
    return False


def number_types(groups: list[dict[str, Any]]) -> list[dict[str, type]]:
    """Per group, the NumPy scalar type of each value that has one (``lr: np.float32``)."""
    return [{k: type(v) for k, v in group.items() if plain_number(v) is not None} for group in groups]


def keep_number_types(values: dict[str, Any], types: dict[str, type]) -> None:
    """Give restored Python numbers in ``values`` back the NumPy type they had live, where exact.

    Written with ``dict.__setitem__``: a tracked param group must not take this for a user edit.
    """
    for key, number_type in types.items():
        value = values.get(key)
        if type(value) not in (int, float):
            continue
        converted = number_type(value)
        if plain_number(converted) == value:
            dict.__setitem__(values, key, converted)
