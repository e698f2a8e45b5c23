"""Reading a file the manifest lists only once it matches the manifest's size and SHA-256.

A config or architecture file is parsed by code that trusts its shape (hashing walks it,
resume compares it). A damaged or crafted file must therefore be found *before* it is parsed:
the bytes are read once, at most one byte past the recorded size (a huge file costs nothing),
and compared with the record; only matching bytes are returned. A link is never followed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["DamagedFileError", "read_verified"]


class DamagedFileError(ValueError):
    """A listed file that is missing, a link, or does not match its manifest record."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def read_verified(path: Path, expected: Mapping[str, Any] | None) -> bytes:
    """The bytes of ``path``; checked against ``expected`` (``{size, sha256}``) when it is given.

    Without a record (a root written before files were listed) the bytes are returned as read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise DamagedFileError(path, "file is missing") from None
    except OSError as error:
        raise DamagedFileError(path, f"cannot be read ({error.strerror}; a symbolic link is not followed)") from None
    size = expected.get("size") if expected is not None else None
    with os.fdopen(fd, "rb") as file:
        data = file.read(size + 1) if isinstance(size, int) and size >= 0 else file.read()
    if expected is None:
        return data
    if not isinstance(size, int) or len(data) != size:
        shown = f"more than {size}" if isinstance(size, int) and len(data) > size else str(len(data))
        raise DamagedFileError(path, f"size is {shown} bytes, manifest says {size} (damaged)")
    if hashlib.sha256(data).hexdigest() != expected.get("sha256"):
        raise DamagedFileError(path, "SHA-256 checksum does not match the manifest (corrupted)")
    return data
