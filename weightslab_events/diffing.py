"""What differs between two experiments, in words a person reads at a glance.

Both sides come from the store: ``hp/{hash}_config.yaml`` (hyperparameters, optimizer and
scheduler settings) and ``model/{hash}_architecture.json`` (the canonical architecture).
"""

from __future__ import annotations

from typing import Any

from .wording import leaves, setting_labels, settings_changes, value_text

__all__ = ["architecture_differences", "hyperparameter_differences"]


def hyperparameter_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Each setting that differs, named by its shortest unambiguous label (``lr`` or ``config.lr``)."""
    before, after = leaves(old), leaves(new)
    label = setting_labels({*before, *after})
    lines = []
    for path in list(before) + [p for p in after if p not in before]:
        if before.get(path) == after.get(path):
            continue
        if path.endswith(".type"):
            lines.append(f"{path.split('.')[0]} {value_text(before.get(path))} -> {value_text(after.get(path))}")
        elif path not in after:
            lines.append(f"removed {label[path]} (was {value_text(before[path])})")
        elif path not in before:
            lines.append(f"added {label[path]} = {value_text(after[path])}")
        else:
            lines.append(f"{label[path]} {value_text(before[path])} -> {value_text(after[path])}")
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
