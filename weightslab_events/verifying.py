"""Checking every file an experiment holds, not only its checkpoints.

What is checked, per experiment folder:

- ``manifest.yaml``: it parses, its fields have their types and its digest line matches;
- the files written once when the experiment was created (config, architecture ``.txt``,
  ``.json`` and ``.pkl``): size and SHA-256 as the manifest's ``files`` records them; a manifest
  older than that record gets the checks the format allows (YAML and JSON parse, the pickle's
  zip archive passes its CRC check);
- each committed checkpoint: present, size and SHA-256 as listed;
- no part of any path below the root is a symbolic link (a link is reported, never followed).

A folder under ``checkpoints/`` that is not an experiment (a name that is not a hash, a link)
is a fault too, and so is an event log with a damaged line before its last one.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from . import safe_yaml
from .errors import InvalidNameError, ManifestError
from .logsummary import tolerant_events
from .manifests import parse_manifest
from .setaside import set_aside_manifests
from .store import Fault, Store, sha256_of

__all__ = ["check_experiment", "check_root", "foreign_folders"]


def foreign_folders(store: Store) -> list[tuple[Path, str]]:
    """Entries of ``checkpoints/`` that are not experiment folders, with the reason."""
    found = []
    if not store.checkpoints_dir.is_dir() or store.checkpoints_dir.is_symlink():
        return found
    hashes = set(store.hashes())
    for path in sorted(store.checkpoints_dir.iterdir()):
        if path.name in hashes or path.name.startswith("."):
            continue
        if path.is_symlink():
            found.append((path, "is a symbolic link (not followed)"))
        elif not path.is_dir():
            found.append((path, "is a file where experiment folders belong"))
        elif (path / "manifest.yaml").exists():
            found.append((path, "is not named like an experiment hash"))
        else:
            found.append((path, "holds no manifest.yaml"))
    return found


def _check_file(store: Store, hash: str, path: Path, expected: dict[str, Any] | None) -> str | None:
    problem = store.outside_problem(path)
    if problem is not None:
        return problem
    if not path.is_file():
        return "file is missing"
    if expected is not None:
        size = path.stat().st_size
        if size != expected.get("size"):
            return f"size is {size} bytes, manifest says {expected.get('size')} (truncated?)"
        if sha256_of(path) != expected.get("sha256"):
            return "SHA-256 checksum does not match the manifest (corrupted)"
        return None
    return _legacy_check(path)


def _legacy_check(path: Path) -> str | None:
    """What a file without a recorded checksum allows to check."""
    try:
        if path.suffix == ".yaml":
            safe_yaml.load(path.read_bytes().decode("utf-8"))
        elif path.suffix == ".json":
            json.loads(path.read_bytes().decode("utf-8"))
        elif path.suffix == ".pkl":
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad is not None:
                return f"member {bad} fails its CRC check (corrupted)"
    except (yaml.YAMLError, ValueError) as error:
        return f"cannot be parsed ({' '.join(str(error).split())[:120]})"
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        return f"is not a readable archive ({error})"
    return None


def _setup_files(store: Store, hash: str, manifest: dict[str, Any]) -> Iterator[tuple[Path, dict[str, Any] | None]]:
    recorded = manifest.get("files")
    if isinstance(recorded, dict):
        for relative, expected in recorded.items():
            parts = Path(str(relative)).parts
            if ".." in parts or Path(str(relative)).is_absolute():
                continue
            yield store.exp_dir(hash) / str(relative), expected if isinstance(expected, dict) else {}
        return
    for path in (
        store.config_path(hash),
        store.architecture_path(hash, "json"),
        store.architecture_path(hash, "pkl"),
        store.architecture_path(hash, "txt"),
    ):
        if path.exists() or path.is_symlink():
            yield path, None


def check_experiment(store: Store, hash: str) -> list[Fault]:
    """Every fault of one experiment folder (empty when it is sound)."""
    manifest_path = store.manifest_path(hash)
    problem = store.outside_problem(manifest_path)
    if problem is not None:
        return [Fault(hash, manifest_path, problem)]
    try:
        manifest = store.manifest(hash)
    except (ManifestError, OSError) as error:
        problem = error.problem if isinstance(error, ManifestError) else f"cannot be read: {error}"
        return [Fault(hash, manifest_path, problem), *_check_with_damaged_manifest(store, hash)]
    set_aside = [
        Fault(hash, path, "a damaged manifest set aside by a later run: what it listed is not listed any more")
        for path in set_aside_manifests(store.exp_dir(hash))
    ]
    return _check_listed(store, hash, manifest)[0] + set_aside


def _check_listed(
    store: Store, hash: str, manifest: dict[str, Any], salvaged: bool = False
) -> tuple[list[Fault], set[Path]]:
    """Faults of the files ``manifest`` lists, and which files those were checked against a checksum.

    A ``salvaged`` manifest vouches only for the checksums it still holds.
    """
    faults, listed = [], set()
    expected_files = [*_setup_files(store, hash, manifest)]
    for record in manifest["checkpoints"]:
        expected_files.append((store.file_of(hash, record), record))
        for part in record.get("parts") or ():
            try:
                expected_files.append((store.part_path(hash, part["file"]), part))
            except (InvalidNameError, KeyError, TypeError):
                faults.append(Fault(hash, store.manifest_path(hash), f"lists a part that cannot be a file: {part!r}"))
    for path, expected in expected_files:
        if expected is None and salvaged:
            continue
        listed.add(path)
        problem = _check_file(store, hash, path, expected)
        if problem is not None:
            faults.append(Fault(hash, path, problem))
    return faults, listed


def _check_with_damaged_manifest(store: Store, hash: str) -> list[Fault]:
    """What can still be said when the manifest is damaged.

    The files a salvaged reading of it still lists are checked; every other file of the folder
    is named too, because nothing vouches for it any more.
    """
    faults: list[Fault] = []
    listed: set[Path] = set()
    try:
        text = store.manifest_path(hash).read_bytes().decode("utf-8")
        salvaged = parse_manifest(store.manifest_path(hash), text, digest=False)
        faults, listed = _check_listed(store, hash, salvaged, salvaged=True)
    except (ManifestError, OSError, UnicodeDecodeError):
        pass
    for path in sorted(store.exp_dir(hash).rglob("*")):
        if path.is_file() and not path.is_symlink() and path.name != "manifest.yaml" and path not in listed:
            faults.append(Fault(hash, path, "cannot be verified: the manifest that vouches for it is damaged"))
    return faults


def check_root(store: Store) -> Iterator[tuple[str, list[Fault]]]:
    """``(name, faults)`` for every entry of ``checkpoints/``, then the event log as ``("log", ...)``."""
    for path, reason in foreign_folders(store):
        yield path.name, [Fault(path.name, path, reason)]
    for hash in store.hashes():
        yield hash, check_experiment(store, hash)
    problems: list[str] = []
    if store.log_path.is_file():
        for _ in tolerant_events(store.log_path, problems):
            pass
    yield "log", [Fault("log", store.log_path, problem) for problem in problems]
