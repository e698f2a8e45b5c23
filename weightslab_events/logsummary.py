"""What the event log tells about each experiment: steps trained, data changes, metric curves.

The log is read tolerantly: a damaged line ends the reading there and becomes a one-line
``problem``, because a damaged log must cost only what it holds, never the listing of a root.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .eventlog import EventLogError, iter_events
from .events import Event
from .records import DataChange

__all__ = ["LogSummary", "read_log_summary", "tolerant_events"]


@dataclass
class LogSummary:
    present: bool = False
    steps: dict[str, set[int]] = field(default_factory=dict)
    data_changes: dict[str | None, list[DataChange]] = field(default_factory=dict)
    metrics: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)
    problem: str | None = None


def tolerant_events(path: Path, problems: list[str]) -> Iterator[Event]:
    """The events of ``path`` up to the first damaged line, whose description goes to ``problems``."""
    try:
        yield from iter_events(path)
    except EventLogError as error:
        problems.append(str(error))
    except (OSError, UnicodeDecodeError) as error:
        problems.append(f"event log {path} cannot be read: {error}")


def read_log_summary(path: Path) -> LogSummary:
    summary = LogSummary(present=path.is_file())
    if not summary.present:
        return summary
    problems: list[str] = []
    for event in tolerant_events(path, problems):
        if event.type == "step" and event.exp:
            summary.steps.setdefault(event.exp, set()).add(event.step)
        elif event.type == "data_changed":
            change = DataChange.from_event(event.exp, event.step, event.data)
            summary.data_changes.setdefault(event.exp, []).append(change)
        elif event.type == "metric" and event.exp:
            try:
                point = [event.step, float(event.data["value"])]
            except (KeyError, TypeError, ValueError):
                continue
            curve = summary.metrics.setdefault(event.exp, {}).setdefault(str(event.data.get("name")), [])
            curve.append(point)
    summary.problem = problems[0] if problems else None
    return summary
