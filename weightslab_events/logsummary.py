"""What the event log tells about each experiment and run: steps trained, data changes, metric
curves, and which run (process) did what.

The log is read tolerantly: a damaged line ends the reading there and becomes a one-line
``problem``, because a damaged log must cost only what it holds, never the listing of a root.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .eventlog import EventLogError, iter_events, name_v1_runs
from .events import Event
from .records import DataChange, RunSummary

__all__ = ["LogSummary", "read_log_summary", "tolerant_events"]


@dataclass
class LogSummary:
    present: bool = False
    steps: dict[str, set[int]] = field(default_factory=dict)
    data_changes: dict[str | None, list[DataChange]] = field(default_factory=dict)
    metrics: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)
    runs: list[RunSummary] = field(default_factory=list)
    problem: str | None = None


class _RunTally:
    """What one pass over the log learns about each run (kept small: no event is stored)."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.fields: dict[str, dict] = {}

    def feed(self, event: Event) -> None:
        run = event.run or ""
        if run not in self.fields:
            self.order.append(run)
            self.fields[run] = {"hashes": {}, "last_step": 0, "closed": False}
        found = self.fields[run]
        found["last_step"] = max(found["last_step"], event.step if isinstance(event.step, int) else 0)
        if event.type == "step" and event.exp:
            found["hashes"][event.exp] = None
        elif event.type == "started":
            data = event.data
            found.update(started_at=data.get("started"), host=data.get("host"), pid=data.get("pid"))
        elif event.type == "resumed" and "resumed_step" not in found:
            found.update(
                resumed_from=event.data.get("from_run"), resumed_hash=event.data.get("hash"), resumed_step=event.step
            )
        elif event.type == "closing":
            found["closed"] = True

    def summaries(self) -> list[RunSummary]:
        runs = []
        for index, run in enumerate(self.order, start=1):
            found = dict(self.fields[run])
            hashes = tuple(found.pop("hashes"))
            runs.append(RunSummary(index=index, id=run, hashes=hashes, **found))
        return runs


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
    tally = _RunTally()
    for event in name_v1_runs(tolerant_events(path, problems)):
        tally.feed(event)
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
    summary.runs = tally.summaries()
    summary.problem = problems[0] if problems else None
    return summary
