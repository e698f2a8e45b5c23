"""Writing and reading ``manifest.yaml``: one validating parse, and a digest of its own bytes.

A manifest is the commit record of an experiment: everything else trusts it. So it is read in
one place that either returns a manifest whose fields have the documented types or raises
:class:`~weightslab_events.errors.ManifestError` naming the file and the one problem, never a
``KeyError`` or ``TypeError`` deep in a caller. Its first line is a YAML comment holding the
SHA-256 of the rest of the file: a flipped byte, a truncation or a foreign edit is found by
:func:`check_digest` even where the damaged text is still valid YAML. Manifests written before
the digest existed (``format_version: 1``) have none and are accepted without it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml

from . import safe_yaml
from .errors import InvalidNameError, ManifestError
from .names import validate_name

__all__ = ["DIGEST_PREFIX", "FORMAT_VERSION", "check_digest", "manifest_text", "parse_manifest"]

#: 2: the first line holds the digest of the rest (1 had none).
FORMAT_VERSION = 2
DIGEST_PREFIX = "# sha256 "

_RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "step": (int,),
    "file": (str,),
    "reason": (str,),
    "size": (int,),
    "sha256": (str,),
    "created": (str,),
}
_OPTIONAL_RECORD_TYPES: dict[str, tuple[type, ...]] = {"metrics": (dict,)}
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "parent": (str, type(None)),
    "fork_step": (int, type(None)),
    "fork_cause": (str, type(None)),
    "created": (str,),
    "files": (dict,),
}


# libyaml's safe loader and dumper when present (same text, about 6x faster): a manifest is read
# and rewritten at every commit, and with 1000 records the pure-Python pair took 0.5 s a commit.
_YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _digest(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def manifest_text(manifest: dict[str, Any]) -> str:
    """The file text of ``manifest``: the digest line, then the YAML."""
    body = yaml.dump(
        {**manifest, "format_version": FORMAT_VERSION}, Dumper=_YAML_DUMPER, sort_keys=False, default_flow_style=False
    )
    return f"{DIGEST_PREFIX}{_digest(body)}\n{body}"


def check_digest(text: str) -> str | None:
    """The problem with ``text``'s digest line, or ``None`` when it matches (or is legitimately absent)."""
    first, _, body = text.partition("\n")
    if first.startswith(DIGEST_PREFIX):
        if first[len(DIGEST_PREFIX) :].strip() != _digest(body):
            return "its SHA-256 digest line does not match its content (damaged or edited)"
        return None
    try:
        version = (safe_yaml.load(text) or {}).get("format_version")
    except (yaml.YAMLError, AttributeError):
        return "it is not valid YAML"
    if version == 1:
        return None
    return "its SHA-256 digest line is missing (damaged or edited)"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_record(index: int, record: Any) -> str | None:
    if not isinstance(record, dict):
        return f"checkpoint {index} is not a mapping"
    for key, types in _RECORD_TYPES.items():
        if key not in record:
            return f"checkpoint {index} has no {key!r}"
        if not isinstance(record[key], types) or (types == (int,) and not _is_int(record[key])):
            return f"checkpoint {index} has {key}: {record[key]!r}, not a {types[0].__name__}"
    for key, types in _OPTIONAL_RECORD_TYPES.items():
        if key in record and not isinstance(record[key], types):
            return f"checkpoint {index} has {key}: {record[key]!r}, not a {types[0].__name__}"
    metrics = record.get("metrics") or {}
    if not all(isinstance(k, str) and isinstance(v, (int, float)) for k, v in metrics.items()):
        return f"checkpoint {index} has metrics that are not name: number pairs"
    try:
        validate_name(record["file"], "checkpoint file")
    except InvalidNameError:
        return f"checkpoint {index} names a file that cannot be in its folder: {record['file']!r}"
    return None


def parse_manifest(path: Path, text: str, *, digest: bool = True) -> dict[str, Any]:
    """The manifest in ``text`` (read from ``path``), validated; :class:`ManifestError` otherwise.

    ``digest=False`` skips the digest check: ``verify`` uses it to salvage what a damaged
    manifest still says, so the files it lists are checked too.
    """
    problem = check_digest(text) if digest else None
    if problem is not None:
        raise ManifestError(path, problem)
    try:
        data = safe_yaml.load(text)
    except yaml.YAMLError as error:
        raise ManifestError(path, f"it is not valid YAML ({' '.join(str(error).split())})") from None
    if not isinstance(data, dict):
        raise ManifestError(path, "it does not hold a mapping")
    for key, types in _FIELD_TYPES.items():
        if key in data and not isinstance(data[key], types):
            raise ManifestError(path, f"{key}: {data[key]!r} is not a {types[0].__name__}")
    if data.get("fork_step") is not None and not _is_int(data["fork_step"]):
        raise ManifestError(path, f"fork_step: {data['fork_step']!r} is not an int")
    records = data.setdefault("checkpoints", [])
    if not isinstance(records, list):
        raise ManifestError(path, f"checkpoints: {records!r} is not a list")
    for index, record in enumerate(records):
        problem = _check_record(index, record)
        if problem is not None:
            raise ManifestError(path, problem)
    return data
