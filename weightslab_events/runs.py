"""A run: one process's lifetime on a root, and the OS locks that let several share the root.

Policy, and why:

- A run gets a time-sortable id (UTC start time to the millisecond plus random hex), so sorting
  ids sorts runs by start time and two processes started in the same millisecond still differ.
- While it is alive a run holds an exclusive ``flock`` on ``root/runs/<id>.lock``. The kernel
  drops that lock when the process dies, however it dies (SIGKILL included), so "is the writer of
  this temporary still alive?" is answered by trying the lock, with no pid reuse or clock to
  trust. The file also holds the run's pid, host, start time and argv for people reading it.
- Manifest read-modify-write takes ``root/runs/manifest.lock`` (an exclusive ``flock``) on top of
  a thread lock: two processes updating one manifest would otherwise each write back what they
  read and lose the other's entry.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import re
import secrets
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = ["Run", "RunLock", "RootLock", "new_run_id", "run_is_alive", "RUN_ID_PATTERN"]

RUN_ID_PATTERN = re.compile(r"\d{8}-\d{6}-\d{3}-[0-9a-f]{6}")


def new_run_id(now: _dt.datetime | None = None) -> str:
    """``YYYYMMDD-HHMMSS-mmm-xxxxxx``: sorts by start time, safe as part of a file name."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{now.microsecond // 1000:03d}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Run:
    """Who is writing: the id and what identifies the process behind it."""

    id: str = field(default_factory=new_run_id)
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    argv: tuple[str, ...] = field(default_factory=lambda: tuple(sys.argv))
    started: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"))

    def describe(self) -> dict[str, Any]:
        """The fields a ``started`` event and the lock file carry."""
        return {"run": self.id, "pid": self.pid, "host": self.host, "argv": list(self.argv), "started": self.started}


def runs_dir(root: Path) -> Path:
    return Path(root) / "runs"


def _lock_path(root: Path, run_id: str) -> Path:
    return runs_dir(root) / f"{run_id}.lock"


class RunLock:
    """The liveness lock a run holds from start to close (see the module's policy)."""

    def __init__(self, root: Path, run: Run) -> None:
        self.root = Path(root)
        self.run = run
        self._file: IO[str] | None = None

    def acquire(self) -> RunLock:
        path = _lock_path(self.root, self.run.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        file = open(path, "a+", encoding="utf-8")
        fcntl.flock(file.fileno(), fcntl.LOCK_EX)
        file.truncate(0)
        file.write(json.dumps(self.run.describe()) + "\n")
        file.flush()
        self._file = file
        return self

    def release(self) -> None:
        if self._file is None:
            return
        _lock_path(self.root, self.run.id).unlink(missing_ok=True)
        self._file.close()
        self._file = None


def run_is_alive(root: Path, run_id: str) -> bool:
    """True while the run ``run_id`` holds its lock; a run with no lock file has ended."""
    try:
        file = open(_lock_path(root, run_id), encoding="utf-8")
    except FileNotFoundError:
        return False
    with file:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(file.fileno(), fcntl.LOCK_UN)
        return False


def remove_dead_run_locks(root: Path) -> list[str]:
    """Remove the lock files of runs that died without closing; returns their ids."""
    folder = runs_dir(root)
    if not folder.is_dir():
        return []
    dead = []
    for path in sorted(folder.glob("*.lock")):
        if RUN_ID_PATTERN.fullmatch(path.stem) and not run_is_alive(root, path.stem):
            path.unlink(missing_ok=True)
            dead.append(path.stem)
    return dead


class RootLock:
    """An exclusive lock over a root's manifests: a thread lock plus an OS ``flock``.

    Re-entrant within a thread, so a manifest update may call helpers that lock again. The file
    is opened once per holder and kept, since opening it for every update costs a system call
    per checkpoint for nothing.
    """

    def __init__(self, root: Path) -> None:
        self.path = runs_dir(root) / "manifest.lock"
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._file: IO[bytes] | None = None

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._thread_lock:
            if self._depth == 0:
                if self._file is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self._file = open(self.path, "ab")
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)

    def close(self) -> None:
        with self._thread_lock:
            if self._file is not None:
                self._file.close()
                self._file = None
