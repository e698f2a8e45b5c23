"""Changes in words a person reads at a glance ("lr 0.01 -> 0.001", "froze conv1")."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["cause_in_words", "leaves", "setting_labels", "settings_changes", "settings_of", "value_text"]

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


def leaves(value: Any, path: str = "") -> dict[str, Any]:
    """Every leaf of a config as ``{"optimizer:optimizer.groups[0].lr": 0.1, ...}``."""
    if isinstance(value, Mapping):
        found: dict[str, Any] = {}
        for key, sub in value.items():
            found.update(leaves(sub, f"{path}.{key}" if path else str(key)))
        return found
    if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        found = {}
        for index, sub in enumerate(value):
            found.update(leaves(sub, f"{path}[{index}]"))
        return found
    return {path: value}


def _short_and_qualified(path: str) -> tuple[str, str]:
    """``optimizer:optimizer.groups[0].lr`` -> ``("lr", "optimizer.lr")``.

    ``hyperparams:config.values.aug.flip`` -> ``("aug.flip", "config.aug.flip")``; a scheduler
    setting keeps the word ``scheduler`` in its short form.
    """
    component, _, rest = path.partition(".")
    kind, _, name = component.partition(":")
    short = rest
    if kind == "hyperparams" and rest.startswith("values."):
        short = rest[len("values.") :]
    elif kind == "optimizer" and rest.startswith("groups["):
        index, _, key = rest[len("groups[") :].partition("].")
        short = key if index == "0" else f"groups[{index}].{key}"
    elif kind == "scheduler" and rest.startswith("settings."):
        return f"scheduler {rest[len('settings.') :]}", f"{name or kind}.{rest[len('settings.') :]}"
    else:
        return path, path
    return short, f"{name or kind}.{short}"


def setting_labels(paths: Any) -> dict[str, str]:
    """Each setting path's shortest unambiguous label.

    ``lr`` when one setting is called that; ``config.lr`` and ``optimizer.lr`` when the
    registered config and the optimizer both have one, as the report's tables name them.
    """
    forms = {path: _short_and_qualified(path) for path in paths}
    counts: dict[str, int] = {}
    for short, _ in forms.values():
        counts[short] = counts.get(short, 0) + 1
    return {path: short if counts[short] == 1 else qualified for path, (short, qualified) in forms.items()}


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


def _setting_path(event_type: str, data: Mapping[str, Any]) -> str:
    name, key = data.get("name"), data.get("key", "?")
    if event_type == "hyperparams_changed":
        return f"hyperparams:{name}.values.{key}"
    return f"optimizer:{name}.groups[{data.get('group') or 0}].{key}"


def cause_in_words(event_type: str, data: Mapping[str, Any], components: Mapping[str, Any] | None = None) -> str:
    """One short phrase for a change event's data.

    ``components`` (the current description of every component, keyed ``kind:name``) lets a
    setting be named unambiguously: ``config.lr`` rather than ``lr`` when the optimizer has one too.
    """
    if event_type in ("hyperparams_changed", "optimizer_param_changed"):
        if data.get("key") == "params":
            return f"added param group {data.get('group')}"
        path = _setting_path(event_type, data)
        known = leaves({k: v for k, v in (components or {}).items() if not k.startswith("model:")})
        label = setting_labels({*known, path})[path]
        return f"{label} {value_text(data.get('old'))} -> {value_text(data.get('new'))}"
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
