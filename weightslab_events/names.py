"""Validation of user-chosen names, which become parts of file names under the root."""

from __future__ import annotations

import re

from .errors import InvalidNameError

__all__ = ["validate_name"]

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def validate_name(name: object, what: str = "name") -> str:
    """Return ``name`` if it is safe as one path component, else raise naming it.

    Letters, digits, ``_``, ``.`` and ``-`` only, not starting with ``.`` or ``-``: no separator,
    no ``..``, nothing hidden, so no name can become a path outside the root.
    """
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise InvalidNameError(
            f"invalid {what} {name!r}: use 1-128 letters, digits, '_', '.' or '-', "
            "not starting with '.' or '-' and without '..'"
        )
    return name
