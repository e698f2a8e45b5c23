"""What differs between two experiments, in words a person reads at a glance.

Both sides come from the store: ``hp/{hash}_config.yaml`` (hyperparameters, optimizer and
scheduler settings) and ``model/{hash}_architecture.json`` (the canonical architecture).
"""

from __future__ import annotations

import json
from typing import Any

from .store import Store
from .wording import settings_changes, value_text

__all__ = ["architecture_of", "config_of", "differences", "hyperparameter_differences", "architecture_differences"]


def config_of(store: Store, hash: str) -> dict[str, Any]:
    import yaml

    path = store.config_path(hash)
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def architecture_of(store: Store, hash: str) -> dict[str, Any]:
    path = store.architecture_path(hash, "json")
    return json.loads(path.read_text()) if path.is_file() else {}


def _leaves(value: Any, path: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        found: dict[str, Any] = {}
        for key, sub in value.items():
            found.update(_leaves(sub, f"{path}.{key}" if path else str(key)))
        return found
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        found = {}
        for index, sub in enumerate(value):
            found.update(_leaves(sub, f"{path}[{index}]"))
        return found
    return {path: value}


def _readable(path: str) -> str:
    """``optimizer:optimizer.groups[0].lr`` -> ``lr``; ``hyperparams:config.values.aug.flip`` -> ``aug.flip``."""
    component, _, rest = path.partition(".")
    kind = component.split(":", 1)[0]
    if kind == "hyperparams" and rest.startswith("values."):
        return rest[len("values.") :]
    if kind == "optimizer" and rest.startswith("groups["):
        index, _, key = rest[len("groups[") :].partition("].")
        return key if index == "0" else f"group {index} {key}"
    if kind == "scheduler" and rest.startswith("settings."):
        return f"scheduler {rest[len('settings.') :]}"
    return path


def hyperparameter_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    before, after = _leaves(old), _leaves(new)
    lines = []
    for path in list(before) + [p for p in after if p not in before]:
        if before.get(path) == after.get(path):
            continue
        if path.endswith(".type"):
            lines.append(f"{path.split('.')[0]} {value_text(before.get(path))} -> {value_text(after.get(path))}")
        elif path not in after:
            lines.append(f"removed {_readable(path)} (was {value_text(before[path])})")
        elif path not in before:
            lines.append(f"added {_readable(path)} = {value_text(after[path])}")
        else:
            lines.append(f"{_readable(path)} {value_text(before[path])} -> {value_text(after[path])}")
    return lines


def _module_words(path: str, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    name = path or "<root>"
    if old.get("type") != new.get("type"):
        return [f"layer {name} {old.get('type', '?').rsplit('.', 1)[-1]} -> {new.get('type', '?').rsplit('.', 1)[-1]}"]
    lines = []
    changed = settings_changes(old.get("settings"), new.get("settings"))
    if changed:
        lines.append(f"layer {name} " + ", ".join(changed))
    old_params, new_params = old.get("params", {}), new.get("params", {})
    if not changed:
        for param in sorted(set(old_params) | set(new_params)):
            a, b = old_params.get(param, {}), new_params.get(param, {})
            if a.get("shape") != b.get("shape"):
                lines.append(f"parameter {path}.{param} {value_text(a.get('shape'))} -> {value_text(b.get('shape'))}")
    flags_before = {p: s.get("trainable") for p, s in old_params.items()}
    flags_after = {p: s.get("trainable") for p, s in new_params.items()}
    if flags_before != flags_after and set(flags_before) == set(flags_after):
        if not any(flags_after.values()) and any(flags_before.values()):
            lines.append(f"froze {name}")
        elif all(flags_after.values()) and not all(flags_before.values()):
            lines.append(f"unfroze {name}")
        else:
            lines.append(f"trainable changed in {name}")
    if old.get("resets", 0) != new.get("resets", 0):
        lines.append(f"reset {name}")
    return lines


def architecture_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    lines = []
    for model in sorted(set(old) | set(new)):
        label = model.split(":", 1)[-1]
        if model not in old:
            lines.append(f"added model {label}")
            continue
        if model not in new:
            lines.append(f"removed model {label}")
            continue
        before, after = old[model].get("modules", {}), new[model].get("modules", {})
        for path in before:
            if path not in after:
                lines.append(f"removed layer {path} ({before[path].get('type', '?').rsplit('.', 1)[-1]})")
        for path in after:
            if path not in before:
                lines.append(f"added layer {path} ({after[path].get('type', '?').rsplit('.', 1)[-1]})")
            else:
                lines.extend(_module_words(path, before[path], after[path]))
    return lines


def differences(store: Store, old_hash: str, new_hash: str) -> dict[str, list[str]]:
    """``{"hyperparameters": [...], "architecture": [...]}`` from ``old_hash`` to ``new_hash``."""
    return {
        "hyperparameters": hyperparameter_differences(config_of(store, old_hash), config_of(store, new_hash)),
        "architecture": architecture_differences(architecture_of(store, old_hash), architecture_of(store, new_hash)),
    }
