"""Setting a damaged manifest aside so that a run can go on saving, without hiding the damage.

A manifest that no longer verifies cannot take new records: rewriting it would either vouch
for its damaged content or silently drop it. Failing every save instead loses the new run's
training. So the writer renames the damaged file to ``manifest.yaml.damaged-<UTC time>`` (kept
whole, for whoever wants to recover what it listed), says so once in a warning naming it, and
starts a fresh manifest. ``verify`` names every set-aside manifest as a fault, so the damage
stays visible after the run has gone on.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from pathlib import Path

__all__ = ["SET_ASIDE_MARK", "set_aside", "set_aside_manifests"]

log = logging.getLogger("weightslab_events")

SET_ASIDE_MARK = ".damaged-"


def set_aside(manifest: Path, problem: str) -> Path:
    """Rename the damaged ``manifest`` beside itself; returns the new path (warned once)."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    target = manifest.with_name(f"{manifest.name}{SET_ASIDE_MARK}{stamp}")
    os.replace(manifest, target)
    log.warning(
        "manifest %s is damaged (%s): set aside as %s; a fresh manifest records this run's checkpoints, "
        "and the checkpoints the damaged one listed are no longer listed",
        manifest,
        problem,
        target.name,
    )
    return target


def set_aside_manifests(folder: Path) -> list[Path]:
    """The set-aside manifests in an experiment folder (regular files only), oldest first."""
    if not folder.is_dir() or folder.is_symlink():
        return []
    found = [p for p in folder.iterdir() if p.name.startswith(f"manifest.yaml{SET_ASIDE_MARK}")]
    return sorted(p for p in found if p.is_file() and not p.is_symlink())
