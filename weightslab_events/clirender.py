"""How the command line draws: consoles that never wrap a pipe, the ``ls`` table, event lines.

A terminal gets rich's tables at its width; anything else (a pipe, a file, CI logs) gets lines
that are never wrapped or cut, so a path or a 16-character hash always stays whole.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .events import Event
from .records import Checkpoint, DataChange, Experiment, ranges_text
from .terminal import printable
from .wording import cause_in_words

__all__ = ["EventPrinter", "console", "errors", "ls_table", "print_checkpoints", "size_text", "when"]

#: The width a pipe is drawn at: wide enough that nothing is ever wrapped.
UNWRAPPED = 10_000


def make_console(stderr: bool = False) -> Console:
    if Console(stderr=stderr).is_terminal:
        return Console(stderr=stderr, highlight=False)
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=UNWRAPPED)


console = make_console()
errors = make_console(stderr=True)


def size_text(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def when(text: str, short: bool = False) -> str:
    try:
        moment = _dt.datetime.fromisoformat(text)
    except ValueError:
        return text
    return moment.strftime("%m-%d %H:%M" if short else "%Y-%m-%d %H:%M:%S")


def _cause_cell(exp: Experiment) -> Text:
    if exp.damage:
        return Text(printable(f"damaged: {exp.damage}"), style="red", no_wrap=True, overflow="ellipsis")
    return Text(printable(exp.cause or "-"), no_wrap=True, overflow="ellipsis")


def _table(rows: Sequence[Experiment], title: str, compact: bool) -> Table:
    """Full hashes and times; ``compact`` (a narrow terminal) shows 8-character prefixes instead.

    Either way the cause column is the one that gives way: cut with an ellipsis, never dropped.
    """
    table = Table(
        title=title,
        box=None if compact else box.HEAVY_HEAD,
        pad_edge=not compact,
        header_style="bold",
    )
    width = 8 if compact else 16
    for column in ("hash", "parent", "fork" if compact else "fork step"):
        table.add_column(column, no_wrap=True, min_width=width if column in ("hash", "parent") else None)
    table.add_column("cause", no_wrap=False, min_width=12, ratio=1 if compact else None)
    for column in ("steps", "ckpts", "size", "created"):
        table.add_column(column, no_wrap=True)
    for e in rows:
        table.add_row(
            e.hash[:width] if compact else e.hash,
            Text(printable(e.parent or "-")[:width]),
            "-" if e.fork_step is None else str(e.fork_step),
            _cause_cell(e),
            ranges_text(e.trained),
            str(len(e.checkpoints)),
            size_text(e.size),
            Text(printable(when(e.created, short=compact))),
        )
    return table


def ls_table(rows: Sequence[Experiment], title: str, target: Console) -> Table:
    """The ``ls`` table for ``target``: compact when the full one does not fit a terminal."""
    full = _table(rows, title, compact=False)
    needed = target.measure(full, options=target.options.update_width(UNWRAPPED)).maximum
    if not target.is_terminal or needed <= target.width:
        return full
    return _table(rows, title, compact=True)


def print_checkpoints(checkpoints: Sequence[Checkpoint], target: Console, run_index: dict[str, int]) -> None:
    """The checkpoints table; ``run_index`` numbers the runs that wrote them (``-`` if unknown)."""
    table = Table(title="checkpoints")
    for column in ("step", "reason", "run", "size", "sha256", "created", "metrics"):
        table.add_column(column, no_wrap=column != "metrics")
    for c in checkpoints:
        metrics = printable(", ".join(f"{k}={v:g}" for k, v in c.metrics.items()))
        run = str(run_index[c.run]) if c.run in run_index else "-"
        cells = (printable(c.reason), run, size_text(c.size), printable(c.sha256[:12]), printable(when(c.created)))
        table.add_row(str(c.step), *(Text(cell) for cell in cells), Text(metrics or "-"))
    target.print(table)


_CHANGE_KINDS = {
    "layer_edited": "model",
    "state_changed": "model",
    "optimizer_param_changed": "optimizer",
    "hyperparams_changed": "hyperparams",
}


class EventPrinter:
    """Prints log events one line each (or as JSON lines), naming settings unambiguously.

    It follows every component's description through the log, as the hashing handler does, so
    ``config.lr`` and ``optimizer.lr`` are told apart in the words it prints.
    """

    def __init__(self, target: Console, as_json: bool = False) -> None:
        self.target = target
        self.as_json = as_json
        self.components: dict[str, Any] = {}

    def feed(self, event: Event, show: bool) -> None:
        self._follow(event)
        if not show:
            return
        if self.as_json:
            click.echo(json.dumps(event.to_dict(), default=str))
            return
        exp = (event.exp or "-")[:8]
        line = f"{event.seq:>6} step {event.step:>6}  {exp:8}  {event.type:24} {self.summary(event)}"
        self.target.print(printable(line), markup=False, highlight=False)

    def _follow(self, event: Event) -> None:
        data = event.data
        if event.type.endswith("_registered"):
            key = f"{event.type[: -len('_registered')]}:{data.get('name')}"
        elif event.type == "unregistered":
            self.components.pop(f"{data.get('kind')}:{data.get('name')}", None)
            return
        elif event.type in _CHANGE_KINDS:
            key = f"{_CHANGE_KINDS[event.type]}:{data.get('name')}"
        else:
            return
        if data.get("description") is not None:
            self.components[key] = data["description"]

    def summary(self, event: Event) -> str:
        data = event.data
        if event.type == "hash_changed":
            return f"{data.get('old_hash')} -> {data.get('new_hash')} ({data.get('words')})"
        if event.type.startswith("checkpoint_"):
            extra = data.get("error") or data.get("path") or data.get("why") or data.get("problem") or ""
            return f"{data.get('reason') or ''} {extra}".strip()
        if event.type in _CHANGE_KINDS:
            source = f" [{data['source']}]" if data.get("source") == "scheduler" else ""
            return cause_in_words(event.type, data, self.components) + source
        if event.type == "data_changed":
            return DataChange.from_event(event.exp, event.step, data).words
        keep = {k: v for k, v in data.items() if k not in ("description", "components")}
        return json.dumps(keep, default=str)[:160]
