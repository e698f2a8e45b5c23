"""A self-contained HTML report of an experiments root: one file, no server, no network.

The data (lineage, checkpoints, differences from the parent, hyperparameters, metric curves) is
embedded as JSON; a small inline script draws the tree, the step axis and the curves as SVG, so
the page opens from disk anywhere. It stays readable with a hundred hashes: a chain of single
forks stays at one indent level, a filter box narrows the tree, and the details of one hash show
at a time.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import os
from pathlib import Path
from typing import Any

from .diffing import config_of, differences
from .eventlog import EventLogError, iter_events
from .store import Store
from .tree import load_experiments

__all__ = ["build_report", "report_data"]


def _metrics(store: Store) -> dict[str, dict[str, list[list[float]]]]:
    curves: dict[str, dict[str, list[list[float]]]] = {}
    if not store.log_path.is_file():
        return curves
    try:
        for event in iter_events(store.log_path):
            if event.type == "metric" and event.exp:
                curve = curves.setdefault(event.exp, {}).setdefault(str(event.data["name"]), [])
                curve.append([event.step, float(event.data["value"])])
    except EventLogError:
        pass  # a damaged log only costs the curves, never the report
    return curves


def report_data(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data."""
    store = Store(Path(root))
    experiments = load_experiments(root)
    items = []
    for exp in experiments.values():
        diff = differences(store, exp.parent, exp.hash) if exp.parent in experiments else {}
        items.append(
            {
                **exp.to_json(),
                "children": exp.children,
                "checkpoints": [
                    {k: r.get(k) for k in ("step", "reason", "size", "created", "metrics")} for r in exp.checkpoints
                ],
                "diff": diff,
                "config": config_of(store, exp.hash),
                "recorded_cause": exp.cause,
            }
        )
    items.sort(key=lambda e: e["created"])
    return {
        "root": str(Path(root).resolve()),
        "generated": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "experiments": items,
        "metrics": _metrics(store),
    }


def build_report(root: str | os.PathLike[str], output: str | os.PathLike[str]) -> Path:
    data = json.dumps(report_data(root), default=str).replace("</", "<\\/")
    title = html.escape(f"weightslab-events: {Path(root).resolve().name}")
    template = (Path(__file__).parent / "report_template.html").read_text(encoding="utf-8")
    page = template.replace("__TITLE__", title).replace("__DATA__", data)
    path = Path(output)
    path.write_text(page, encoding="utf-8")
    return path
