"""Changes in words a person reads at a glance ("lr 0.01 -> 0.001", "froze conv1")."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["cause_in_words", "settings_changes", "settings_of", "value_text"]

_SETTING = re.compile(r"(\w+)=((?:\([^)]*\))|[^,]+)")


def value_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(value_text(v) for v in value) + ")"
    return str(value)


def settings_of(text: str | None) -> dict[str, str]:
    """``"in_features=784, out_features=128"`` as a dict (``extra_repr`` text)."""
    return {key: value.strip() for key, value in _SETTING.findall(text or "")}


def settings_changes(old: str | None, new: str | None) -> list[str]:
    """``["out_features 128 -> 96"]``: each constructor setting that differs between two ``extra_repr`` texts."""
    before, after = settings_of(old), settings_of(new)
    return [
        f"{key} {before.get(key)} -> {after.get(key)}"
        for key in list(before) + [k for k in after if k not in before]
        if before.get(key) != after.get(key)
    ]


def _module_paths(paths: Any) -> str:
    modules = []
    for path in paths or []:
        module = path.rsplit(".", 1)[0] if "." in path else path
        if module not in modules:
            modules.append(module)
    return ", ".join(modules) or "model"


def _layer_words(data: Mapping[str, Any]) -> str:
    path, old, new = data.get("path", ""), data.get("old"), data.get("new")
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        if "settings" in old and "settings" in new:
            if old.get("type") != new.get("type"):
                return f"layer {path} {old.get('type')} -> {new.get('type')}"
            changed = settings_changes(old["settings"], new["settings"])
            return f"layer {path} " + (", ".join(changed) or "replaced")
        if "shape" in old and "shape" in new:
            return f"parameter {path} {value_text(old['shape'])} -> {value_text(new['shape'])}"
        added, removed = new.get("modules"), old.get("modules")
        if added or removed:
            parts = ([f"added {', '.join(added)}"] if added else []) + (
                [f"removed {', '.join(removed)}"] if removed else []
            )
            return "layer " + "; ".join(parts)
        reshaped = new.get("params") or {}
        if reshaped:
            before = old.get("params") or {}
            return ", ".join(
                f"parameter {p} {value_text(before.get(p, '?'))} -> {value_text(s)}" for p, s in reshaped.items()
            )
    if old is None and isinstance(new, Mapping):
        return f"added layer {path} ({new.get('type', 'parameter')})"
    if new is None and isinstance(old, Mapping):
        return f"removed layer {path}"
    return f"layer {path} edited"


def cause_in_words(event_type: str, data: Mapping[str, Any]) -> str:
    """One short phrase for a change event's data."""
    if event_type in ("hyperparams_changed", "optimizer_param_changed"):
        key = data.get("key", "?")
        if event_type == "optimizer_param_changed" and data.get("group"):
            key = f"group {data['group']} {key}"
        if key == "params":
            return f"added param group {data.get('group')}"
        return f"{key} {value_text(data.get('old'))} -> {value_text(data.get('new'))}"
    if event_type == "layer_edited":
        return _layer_words(data)
    if event_type == "state_changed":
        verbs = {"freeze": "froze", "unfreeze": "unfroze", "reset": "reset"}
        return f"{verbs.get(data.get('kind', ''), data.get('kind'))} {_module_paths(data.get('paths'))}"
    if event_type.endswith("_registered"):
        kind = event_type[: -len("_registered")]
        verb = "replaced" if data.get("replaced") else "registered"
        return f"{verb} {kind} {data.get('name')}"
    if event_type == "unregistered":
        return f"unregistered {data.get('kind')} {data.get('name')}"
    return event_type
