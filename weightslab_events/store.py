"""The on-disk layout, atomic commits, manifests and checksums.

::

    root/
      data/  logs/events.jsonl
      checkpoints/{hash}/
        model/{hash}_step_{step:06d}.pt      weights + optimizer + scheduler + RNG + step
        model/{hash}_architecture.pkl        the model with meta tensors (structure, no weights)
        model/{hash}_architecture.txt        readable architecture
        model/{hash}_architecture.json       canonical architecture description
        hp/{hash}_config.yaml                hyperparameters, optimizer and scheduler settings
        data/
        manifest.yaml                        parent, fork step, fork cause, committed checkpoints

Commit policy: every file is written under a temporary name, fsynced, renamed into place and
its directory fsynced; a checkpoint enters the manifest (with its size and SHA-256) only after
that. A reader therefore trusts only what the manifest lists and verifies it; temporaries left
by a crash are never listed and are removed when a store is opened.

Several processes (runs, :mod:`.runs`) may share a root:

- A temporary's name carries its writer (``.{name}.tmp-{run id}-{random}``); start-up removes
  only temporaries whose run no longer holds its lock (for a writer without a run,
  ``p{pid}``: whose process is gone), never a live writer's.
- Manifest read-modify-write, and the rename that puts a checkpoint in place, happen under the
  root's OS lock, so no entry is lost and the choice of a file name cannot race.
- A checkpoint file is never replaced by another run: the first run to commit ``hash`` at a
  step gets ``{hash}_step_{step:06d}.pt``; another run gets ``{hash}_step_{step:06d}.{run}.pt``.
  Every record names its run. A manifest is replaced by rename, so readers (who take no lock)
  see the old one or the new one, never half of one.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from .errors import InvalidNameError, ManifestError
from .manifests import FORMAT_VERSION, manifest_text, parse_manifest
from .names import validate_name
from .runs import RUN_ID_PATTERN, RootLock, Run, remove_dead_run_locks, run_is_alive
from .setaside import set_aside

__all__ = ["FileSystem", "Fault", "Store", "TEMP_MARK", "now_iso"]

TEMP_MARK = ".tmp-"
#: The one hidden file name a part may have: DCP's metadata file in a sharded checkpoint's folder.
DCP_METADATA = ".metadata"
# torch is imported where a tensor file is written or read, not at import: the command line
# reads roots without it (start-up time).


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


class FileSystem:
    """The OS calls a commit makes, in one place so tests can inject the kernel's errors."""

    def open_write(self, path: Path) -> IO[bytes]:
        return open(path, "xb")

    def fsync(self, file: IO[bytes]) -> None:
        os.fsync(file.fileno())

    def replace(self, source: Path, target: Path) -> None:
        os.replace(source, target)

    def fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def makedirs(self, path: Path) -> None:
        os.makedirs(path, exist_ok=True)

    def append(self, fd: int, data: bytes) -> int:
        """One write to the event log (opened ``O_APPEND``); returns the bytes written."""
        return os.write(fd, data)


class _HashingWriter:
    """Passes writes through to a file while computing their SHA-256 and size."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        self._sha.update(data)
        written = self._file.write(data)
        self.size += len(memoryview(data).cast("B"))
        return written

    def flush(self) -> None:
        self._file.flush()

    @property
    def hexdigest(self) -> str:
        return self._sha.hexdigest()


@dataclass(frozen=True)
class Fault:
    """A committed checkpoint that does not verify."""

    hash: str
    file: Path
    problem: str

    def __str__(self) -> str:
        return f"{self.file}: {self.problem}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _pid_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    """One root directory of experiments, written by ``run`` (``None`` for tools and readers)."""

    def __init__(self, root: str | os.PathLike[str], fs: FileSystem | None = None, *, run: Run | None = None) -> None:
        self.root = Path(root)
        self.fs = fs or FileSystem()
        self.run = run
        self._lock = RootLock(self.root)
        self._sound: set[str] = set()  # hashes whose manifest prepare() found sound or wrote

    # -- layout -----------------------------------------------------------------------------

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def log_path(self) -> Path:
        return self.root / "logs" / "events.jsonl"

    def exp_dir(self, hash: str) -> Path:
        return self.checkpoints_dir / validate_name(hash, "experiment hash")

    def checkpoint_path(self, hash: str, step: int) -> Path:
        return self.exp_dir(hash) / "model" / f"{hash}_step_{int(step):06d}.pt"

    def shard_folder(self, hash: str, record: dict[str, Any]) -> Path | None:
        """The DCP folder a sharded (FSDP2) checkpoint's listed parts live in; ``None`` if it has none."""
        folders = {str(p.get("file", "")).split("/")[0] for p in record.get("parts", ()) if "/" in str(p.get("file"))}
        return self.part_path(hash, folders.pop()) if record.get("sharded") and len(folders) == 1 else None

    def part_path(self, hash: str, relative: str) -> Path:
        """A listed part of a multi-rank checkpoint (``name`` or ``folder/name``), kept inside ``model/``."""
        components = str(relative).split("/")
        if len(components) > 2:
            raise InvalidNameError(f"invalid checkpoint part {relative!r}: at most one folder level")
        for component in components:
            if component != DCP_METADATA:
                validate_name(component, "checkpoint part")
        return self.exp_dir(hash) / "model" / Path(*components)

    def architecture_path(self, hash: str, suffix: str) -> Path:
        return self.exp_dir(hash) / "model" / f"{hash}_architecture.{suffix}"

    def config_path(self, hash: str) -> Path:
        return self.exp_dir(hash) / "hp" / f"{hash}_config.yaml"

    def manifest_path(self, hash: str) -> Path:
        return self.exp_dir(hash) / "manifest.yaml"

    @property
    def _writer(self) -> str:
        return self.run.id if self.run is not None else f"p{os.getpid()}"

    def writer_is_alive(self, temp: Path) -> bool:
        """Whether the writer named in a temporary's name may still be writing it."""
        owner = temp.name.rsplit(TEMP_MARK, 1)[-1].rsplit("-", 1)[0]
        if RUN_ID_PATTERN.fullmatch(owner):
            return run_is_alive(self.root, owner)
        pid = owner[1:] if owner.startswith("p") else owner
        return pid.isdigit() and _pid_is_alive(int(pid))

    def open(self) -> list[Path]:
        """Create the top-level folders and remove temporaries of dead writers; returns them."""
        for folder in (self.root / "data", self.root / "logs", self.checkpoints_dir):
            self.fs.makedirs(folder)
        remove_dead_run_locks(self.root)
        stale = [p for p in self.checkpoints_dir.rglob(f"*{TEMP_MARK}*") if p.is_file() and not self.writer_is_alive(p)]
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    def close(self) -> None:
        self._lock.close()

    # -- atomic writes ----------------------------------------------------------------------

    def write_atomic(self, path: Path, write: Callable[[Any], None]) -> tuple[int, str]:
        """Write ``path`` through a temporary, fsync and rename; returns ``(size, sha256)``."""
        temp, size, digest = self._write_temporary(path, write)
        self._install(temp, path)
        return size, digest

    def _write_temporary(self, path: Path, write: Callable[[Any], None]) -> tuple[Path, int, str]:
        """Write and fsync a temporary beside ``path``; returns it with its size and SHA-256."""
        self.fs.makedirs(path.parent)
        temp = path.with_name(f".{path.name}{TEMP_MARK}{self._writer}-{uuid.uuid4().hex[:8]}")
        try:
            with self.fs.open_write(temp) as file:
                writer = _HashingWriter(file)
                write(writer)
                file.flush()
                self.fs.fsync(file)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return temp, writer.size, writer.hexdigest

    def _install(self, temp: Path, path: Path) -> None:
        """Rename a written temporary into place and make the rename durable."""
        try:
            self.fs.replace(temp, path)
            self.fs.fsync_dir(path.parent)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    def write_text_atomic(self, path: Path, text: str) -> None:
        self.write_atomic(path, lambda f: f.write(text.encode()))

    # -- manifests --------------------------------------------------------------------------

    def hashes(self) -> list[str]:
        """Experiment folders: valid names, real folders (a symlink is never followed), with a manifest."""
        if not self.checkpoints_dir.is_dir():
            return []
        return sorted(
            p.name
            for p in self.checkpoints_dir.iterdir()
            if _valid(p.name) and not p.is_symlink() and (p / "manifest.yaml").is_file()
        )

    def has_experiment(self, hash: str) -> bool:
        return self.manifest_path(hash).is_file()

    def manifest(self, hash: str) -> dict[str, Any]:
        """The validated manifest; :class:`ManifestError` names the file and the problem."""
        path = self.manifest_path(hash)
        try:
            text = path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no experiment {hash!r} under {self.checkpoints_dir} ({path} is missing)"
            ) from None
        except UnicodeDecodeError:
            raise ManifestError(path, "it is not UTF-8 text") from None
        return parse_manifest(path, text)

    def _write_manifest(self, hash: str, manifest: dict[str, Any]) -> None:
        self.write_text_atomic(self.manifest_path(hash), manifest_text(manifest))

    def prepare(self, hash: str, info: dict[str, Any]) -> None:
        """Create an experiment's folder, config and architecture files, once per hash.

        ``info`` holds ``parent``, ``fork_step``, ``cause``, ``config``, and optionally
        ``architecture`` (a picklable module), ``architecture_text`` and ``description``.
        A damaged manifest found here is set aside (:mod:`.setaside`) and the folder is set up
        afresh, so this run's checkpoints are saved; once checked, a hash is not checked again.
        """
        with self._lock.held():
            if self.has_experiment(hash) and (hash in self._sound or self._keeps_manifest(hash)):
                self._sound.add(hash)
                return
            import torch

            exp = self.exp_dir(hash)
            for sub in ("model", "hp", "data"):
                self.fs.makedirs(exp / sub)
            written: dict[str, Any] = {}

            def write(path: Path, save: Callable[[Any], None]) -> None:
                size, digest = self.write_atomic(path, save)
                written[path.relative_to(exp).as_posix()] = {"size": size, "sha256": digest}

            config = yaml.safe_dump(info.get("config", {}), sort_keys=True)
            write(self.config_path(hash), lambda f: f.write(config.encode()))
            if info.get("architecture_text") is not None:
                text = info["architecture_text"]
                write(self.architecture_path(hash, "txt"), lambda f: f.write(text.encode()))
            if info.get("description") is not None:
                text_json = json.dumps(info["description"], sort_keys=True, indent=1)
                write(self.architecture_path(hash, "json"), lambda f: f.write(text_json.encode()))
            if info.get("architecture") is not None:
                write(self.architecture_path(hash, "pkl"), lambda f: torch.save(info["architecture"], f))
            self._write_manifest(
                hash,
                {
                    "format_version": FORMAT_VERSION,
                    "hash": hash,
                    "parent": info.get("parent"),
                    "fork_step": info.get("fork_step"),
                    "fork_cause": info.get("cause"),
                    "created": now_iso(),
                    "files": written,
                    "run": self.run.id if self.run is not None else None,
                    "checkpoints": [],
                },
            )
            self._sound.add(hash)

    def _keeps_manifest(self, hash: str) -> bool:
        """Whether ``hash``'s manifest verifies; a damaged one is set aside (``False``)."""
        try:
            self.manifest(hash)
        except ManifestError as error:
            set_aside(self.manifest_path(hash), error.problem)
            return False
        return True

    def commit(
        self,
        hash: str,
        step: int,
        reason: str,
        payload: dict[str, Any],
        metrics: dict[str, float] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write one checkpoint atomically, then record it in the manifest; returns the record.

        ``extra`` adds fields to the record (a multi-rank checkpoint's ``parts``, already durable).
        The file is written outside the lock; its name is chosen, the rename made and the
        manifest updated under it (see the module's policy on runs).
        """
        import torch

        plain = self.checkpoint_path(hash, step)
        temp, size, digest = self._write_temporary(plain, lambda f: torch.save(payload, f))
        run_id = self.run.id if self.run is not None else None
        try:
            with self._lock.held():
                manifest = self.manifest(hash)
                path = self._name_for(hash, step, plain, manifest["checkpoints"], run_id)
                self._install(temp, path)
                record: dict[str, Any] = {
                    "step": int(step),
                    "file": path.name,
                    "reason": reason,
                    "size": size,
                    "sha256": digest,
                    "created": now_iso(),
                    "run": run_id,
                }
                if metrics:
                    record["metrics"] = {k: float(v) for k, v in metrics.items()}
                record.update(extra or {})
                kept = [r for r in manifest["checkpoints"] if r.get("file") != path.name]
                manifest["checkpoints"] = [*kept, record]
                self._write_manifest(hash, manifest)
        finally:
            temp.unlink(missing_ok=True)
        return record

    def _name_for(self, hash: str, step: int, plain: Path, records: list[dict[str, Any]], run_id: str | None) -> Path:
        """The plain name unless another run (or an unlisted file) holds it; then a run's own."""
        owner = next((r for r in records if r.get("file") == plain.name), None)
        if owner is not None and owner.get("run") == run_id:
            return plain
        if owner is None and not plain.exists():
            return plain
        return self.exp_dir(hash) / "model" / f"{hash}_step_{int(step):06d}.{run_id or 'unnamed'}.pt"

    def delete(self, hash: str, file: str) -> None:
        """Remove one checkpoint: out of the manifest first, then off the disk.

        Only a regular file that the manifest lists, directly inside ``checkpoints/<hash>/model/``
        of this root, is ever removed (with the parts its record lists): a symlink (of the file,
        its folder or the experiment folder) is refused, so no deletion reaches outside the root.
        """
        path = self.exp_dir(hash) / "model" / validate_name(file, "checkpoint file")
        problem = self.outside_problem(path)
        if problem is not None:
            raise PermissionError(f"refusing to delete {path}: {problem}")
        with self._lock.held():
            manifest = self.manifest(hash)
            doomed = [r for r in manifest["checkpoints"] if r["file"] == file]
            if not doomed:  # not listed (another process deleted it first): touch nothing
                return
            manifest["checkpoints"] = [r for r in manifest["checkpoints"] if r["file"] != file]
            self._write_manifest(hash, manifest)
        if path.exists() and stat.S_ISREG(path.lstat().st_mode):
            path.unlink()
        for record in doomed:
            for part in record.get("parts", ()):
                part_path = self.part_path(hash, part["file"])
                if self.outside_problem(part_path) is None:
                    part_path.unlink(missing_ok=True)
            shard = self.shard_folder(hash, record)
            if shard is not None and self.outside_problem(shard) is None:
                shutil.rmtree(shard, ignore_errors=True)

    def outside_problem(self, path: Path) -> str | None:
        """Why ``path`` (under ``checkpoints/``) is not plainly inside this root, or ``None``.

        Every part below the root must be a real folder or file, not a symbolic link, so that a
        reader or a deletion never follows a link out of the root.
        """
        relative = path.relative_to(self.root)
        current = self.root
        for part in relative.parts:
            current = current / part
            if current.is_symlink():
                return f"{current} is a symbolic link (not followed)"
        return None

    # -- reading and verifying ----------------------------------------------------------------

    def records(self, hash: str) -> list[dict[str, Any]]:
        """Committed checkpoints of ``hash``, oldest step first."""
        return sorted(self.manifest(hash)["checkpoints"], key=lambda r: (r["step"], r["created"]))

    def file_of(self, hash: str, record: dict[str, Any]) -> Path:
        return self.exp_dir(hash) / "model" / validate_name(record["file"], "checkpoint file")

    def check(self, hash: str, record: dict[str, Any]) -> Fault | None:
        """Verify one committed checkpoint's size and checksum, and those of every listed part."""
        fault = self._check_file(hash, self.file_of(hash, record), record)
        for part in record.get("parts", ()):
            fault = fault or self._check_file(hash, self.part_path(hash, part["file"]), part)
        return fault

    def _check_file(self, hash: str, path: Path, expected: dict[str, Any]) -> Fault | None:
        if not path.is_file():
            return Fault(hash, path, "file is missing")
        size = path.stat().st_size
        if size != expected.get("size"):
            return Fault(hash, path, f"size is {size} bytes, manifest says {expected.get('size')} (truncated?)")
        if sha256_of(path) != expected.get("sha256"):
            return Fault(hash, path, "SHA-256 checksum does not match the manifest (corrupted)")
        return None

    def verify(self, hashes: list[str] | None = None) -> Iterator[tuple[str, dict[str, Any], Fault | None]]:
        """Check every committed checkpoint; yields ``(hash, record, fault_or_None)``."""
        for hash in hashes if hashes is not None else self.hashes():
            for record in self.records(hash):
                yield hash, record, self.check(hash, record)

    def load(self, path: Path) -> dict[str, Any]:
        """Load a checkpoint file with ``weights_only=True``: it never unpickles code."""
        import torch

        return torch.load(path, map_location="cpu", weights_only=True)

    def size_on_disk(self, hash: str) -> int:
        """Bytes of the regular files in an experiment's folder (symlinks are not followed)."""
        return sum(p.lstat().st_size for p in self.exp_dir(hash).rglob("*") if stat.S_ISREG(p.lstat().st_mode))


def _valid(name: str) -> bool:
    try:
        validate_name(name)
    except InvalidNameError:
        return False
    return True
