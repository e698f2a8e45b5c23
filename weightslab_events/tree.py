"""The lineage of a root as indented text (what the quickstart prints)."""

from __future__ import annotations

from .reader import Root
from .records import Experiment, ranges_text

__all__ = ["render_tree"]


def render_tree(root: Root) -> str:
    """Roots first, children by fork step; a damaged experiment says why."""
    experiments = {e.hash: e for e in root.experiments()}
    lines: list[str] = []

    def walk(exp: Experiment, depth: int, seen: set[str]) -> None:
        seen.add(exp.hash)
        if exp.damage:
            lines.append(f"{'  ' * depth}{exp.hash}  [damaged: {exp.damage}]")
            return
        steps = f"steps {ranges_text(exp.trained)}"
        cause = f"  <- {exp.cause} (at step {exp.fork_step})" if exp.parent else ""
        lines.append(f"{'  ' * depth}{exp.hash}  [{len(exp.checkpoints)} checkpoints, {steps}]{cause}")
        for child in exp.children:
            if child not in seen:
                walk(experiments[child], depth + 1, seen)

    seen: set[str] = set()
    for exp in experiments.values():
        if exp.parent not in experiments:
            walk(exp, 0, seen)
    for exp in experiments.values():  # a parent cycle (a crafted manifest) has no root to start from
        if exp.hash not in seen:
            walk(exp, 0, seen)
    return "\n".join(lines)
