"""The ``weightslab-events`` command: look at an experiments root from a terminal.

Built on click (parsing, help, exit codes) and rich (tables, progress). A user mistake (a wrong
path, an unknown or ambiguous hash, a broken log) is one clear line on stderr and exit code 1,
never a traceback.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from .diffing import differences
from .eventlog import EventLogError, read_events
from .events import Event
from .replay import replay as replay_log
from .store import Store
from .tree import Experiment, load_experiments, resolve_hash
from .wording import cause_in_words

__all__ = ["main"]

# Piped output (scripts, CI logs) is not cut to 80 columns: a 16-character hash must stay whole.
console = Console(highlight=False, width=None if Console().is_terminal else 200)
errors = Console(stderr=True, highlight=False)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the errors a user can cause into one line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (FileNotFoundError, KeyError, ValueError, EventLogError, NotADirectoryError) as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
            raise click.ClickException(str(message)) from None

    return wrapper


def _experiments(root: str) -> dict[str, Experiment]:
    return load_experiments(root)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _created(text: str) -> str:
    try:
        return _dt.datetime.fromisoformat(text).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return text


def cause_words(store: Store, exp: Experiment) -> str:
    """The fork cause from the difference to the parent, else as the manifest recorded it."""
    if exp.parent is None:
        return ""
    try:
        diff = differences(store, exp.parent, exp.hash)
    except (OSError, ValueError):
        diff = {}
    words = diff.get("hyperparameters", []) + diff.get("architecture", [])
    return "; ".join(words) if words else (exp.cause or "")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="weightslab-events")
def main() -> None:
    """Inspect experiments recorded by weightslab-events."""


@main.command("ls")
@click.argument("root", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="One JSON object per experiment, for scripts.")
@user_errors
def ls(root: str, as_json: bool) -> None:
    """One row per experiment hash, newest first."""
    experiments = _experiments(root)
    store = Store(root)
    rows = sorted(experiments.values(), key=lambda e: e.created, reverse=True)
    if as_json:
        click.echo(json.dumps([{**e.to_json(), "cause": cause_words(store, e) or None} for e in rows], indent=2))
        return
    table = Table(title=f"{len(rows)} experiments in {root}")
    for column in ("hash", "parent", "fork step", "cause", "steps", "ckpts", "size", "created"):
        table.add_column(column, no_wrap=column != "cause", min_width=16 if column in ("hash", "parent") else None)
    for e in rows:
        steps = f"{e.first_step}-{e.last_step}" if e.checkpoints else "-"
        table.add_row(
            e.hash,
            e.parent or "-",
            "-" if e.fork_step is None else str(e.fork_step),
            cause_words(store, e) or "-",
            steps,
            str(len(e.checkpoints)),
            _size(e.size),
            _created(e.created),
        )
    console.print(table)


@main.command()
@click.argument("root", type=click.Path())
@click.argument("hash")
@user_errors
def show(root: str, hash: str) -> None:
    """An experiment's hyperparameters, architecture, lineage and checkpoints."""
    experiments = _experiments(root)
    store = Store(root)
    exp = experiments[resolve_hash(experiments, hash)]
    console.print(f"[bold]experiment {exp.hash}[/bold]  created {_created(exp.created)}  size {_size(exp.size)}")
    console.print("\n[bold]lineage[/bold]")
    chain, current = [], exp
    while current is not None:
        chain.append(current)
        current = experiments.get(current.parent) if current.parent else None
    for depth, item in enumerate(reversed(chain)):
        why = f"  <- {cause_words(store, item)} (at step {item.fork_step})" if item.parent else "  (root)"
        console.print(f"{'  ' * depth}{item.hash}{why}")
    console.print("\n[bold]hyperparameters[/bold]")
    config_path = store.config_path(exp.hash)
    console.print(config_path.read_text().rstrip() if config_path.is_file() else "(none recorded)")
    console.print("\n[bold]architecture[/bold]")
    text_path = store.architecture_path(exp.hash, "txt")
    console.print(text_path.read_text().rstrip() if text_path.is_file() else "(none recorded)")
    table = Table(title="checkpoints")
    for column in ("step", "reason", "size", "sha256", "created", "metrics"):
        table.add_column(column)
    for record in exp.checkpoints:
        metrics = ", ".join(f"{k}={v:g}" for k, v in (record.get("metrics") or {}).items())
        table.add_row(
            str(record["step"]),
            record["reason"],
            _size(record["size"]),
            record["sha256"][:12],
            _created(record["created"]),
            metrics or "-",
        )
    console.print(table)


@main.command()
@click.argument("root", type=click.Path())
@click.argument("a")
@click.argument("b")
@user_errors
def diff(root: str, a: str, b: str) -> None:
    """Hyperparameter and architecture differences from experiment A to B."""
    experiments = _experiments(root)
    old, new = resolve_hash(experiments, a), resolve_hash(experiments, b)
    found = differences(Store(root), old, new)
    console.print(f"from {old} to {new}")
    for section, lines in found.items():
        console.print(f"\n[bold]{section}[/bold]")
        for line in lines or ["(no differences)"]:
            console.print(f"  {line}")


def _summary(event: Event) -> str:
    data = event.data
    if event.type == "hash_changed":
        return f"{data.get('old_hash')} -> {data.get('new_hash')} ({data.get('words')})"
    if event.type in ("checkpoint_scheduled", "checkpoint_saved", "checkpoint_failed", "checkpoint_skipped"):
        extra = data.get("error") or data.get("path") or data.get("why") or ""
        return f"{data.get('reason')} {extra}".strip()
    if event.type in ("hyperparams_changed", "optimizer_param_changed", "layer_edited", "state_changed"):
        source = f" [{data['source']}]" if data.get("source") == "scheduler" else ""
        return cause_in_words(event.type, data) + source
    keep = {k: v for k, v in data.items() if k not in ("description", "components")}
    return json.dumps(keep, default=str)[:160]


def _print_event(event: Event) -> None:
    exp = (event.exp or "-")[:8]
    console.print(f"{event.seq:>6} step {event.step:>6}  {exp:8}  {event.type:24} {_summary(event)}", markup=False)


@main.command()
@click.argument("root", type=click.Path())
@click.option("--type", "types", multiple=True, help="Only events of this type (repeatable).")
@click.option("--hash", "hash_prefix", help="Only events of experiments whose hash starts with this.")
@click.option("--follow", "-f", is_flag=True, help="Keep watching the log of a running training.")
@user_errors
def log(root: str, types: tuple[str, ...], hash_prefix: str | None, follow: bool) -> None:
    """The event log, optionally filtered."""
    path = Store(root).log_path
    if not path.is_file():
        raise FileNotFoundError(f"no event log at {path}")

    def wanted(event: Event) -> bool:
        return (not types or event.type in types) and (not hash_prefix or (event.exp or "").startswith(hash_prefix))

    if not follow:
        for event in read_events(path):
            if wanted(event):
                _print_event(event)
        return
    with open(path, encoding="utf-8") as file:
        buffer = ""
        while True:
            chunk = file.readline()
            if not chunk:
                time.sleep(0.2)
                continue
            buffer += chunk
            if not buffer.endswith("\n"):
                continue
            line, buffer = buffer, ""
            try:
                event = Event.from_json(line)
            except ValueError:
                continue
            if wanted(event):
                _print_event(event)
                console.file.flush()


@main.command()
@click.argument("root", type=click.Path())
@user_errors
def verify(root: str) -> None:
    """Check every checkpoint's checksum; exit 1 naming each bad file."""
    experiments = _experiments(root)
    store = Store(root)
    total = sum(len(e.checkpoints) for e in experiments.values())
    faults = []
    with Progress(console=errors, transient=True) as progress:
        task = progress.add_task("verifying", total=total)
        for _hash, _record, fault in store.verify(list(experiments)):
            progress.advance(task)
            if fault is not None:
                faults.append(fault)
    for fault in faults:
        errors.print(f"BAD {fault.file}: {fault.problem}", markup=False)
    console.print(f"{total - len(faults)} of {total} checkpoints verified")
    if faults:
        raise SystemExit(1)


@main.command()
@click.argument("root", type=click.Path())
@click.option("--keep-last", type=int, help="Keep the newest N checkpoints of each hash.")
@click.option("--every", type=int, help="Keep checkpoints whose step is a multiple of N.")
@click.option("--best", help="Keep the best by a metric: NAME, NAME:min or NAME:max.")
@click.option("--best-n", type=int, default=1, show_default=True, help="How many best to keep.")
@click.option("--dry-run", is_flag=True, help="Print what would be deleted, delete nothing.")
@user_errors
def gc(root: str, keep_last: int | None, every: int | None, best: str | None, best_n: int, dry_run: bool) -> None:
    """Delete checkpoints a retention policy does not keep (never the newest or fork ones)."""
    from .handlers.retention import BestN, EveryNSteps, LatestN, RetentionPolicy, plan_deletions

    policies: list[RetentionPolicy] = []
    if keep_last:
        policies.append(LatestN(keep_last))
    if every:
        policies.append(EveryNSteps(every))
    if best:
        name, _, mode = best.partition(":")
        policies.append(BestN(best_n, name, mode or "min"))
    if not policies:
        raise click.UsageError("give at least one of --keep-last, --every, --best")
    policy = policies[0]
    for extra in policies[1:]:
        policy = policy | extra
    experiments = _experiments(root)
    store = Store(root)
    freed, count = 0, 0
    with Progress(console=errors, transient=True) as progress:
        task = progress.add_task("collecting", total=len(experiments))
        for hash in experiments:
            for record in plan_deletions(store, hash, policy):
                count += 1
                freed += record["size"]
                verb = "would delete" if dry_run else "deleted"
                if not dry_run:
                    store.delete(hash, record["file"])
                console.print(
                    f"{verb} {hash}/{record['file']} (step {record['step']}, {record['reason']})", markup=False
                )
            progress.advance(task)
    verb = "would free" if dry_run else "freed"
    console.print(f"{count} checkpoints, {verb} {_size(freed)} ({policy!r})")


@main.command("replay")
@click.argument("log_path", metavar="LOG", type=click.Path())
@user_errors
def replay_command(log_path: str) -> None:
    """The hash sequence and checkpoint decisions a log produces."""
    if not Path(log_path).is_file():
        raise FileNotFoundError(f"no event log at {log_path}")
    result = replay_log(log_path)
    console.print("[bold]hashes[/bold]")
    for old, new, cause in result.hash_changes:
        console.print(f"  {old or '-'} -> {new}  ({cause})")
    console.print("[bold]checkpoint decisions[/bold]")
    for hash, step, reason in result.checkpoints:
        console.print(f"  {hash} step {step:>6}  {reason}")


@main.command()
@click.argument("root", type=click.Path())
@click.option("-o", "--output", default="report.html", show_default=True, type=click.Path())
@user_errors
def report(root: str, output: str) -> None:
    """Write a self-contained HTML report of the experiment tree."""
    from .report import build_report

    with Progress(console=errors, transient=True) as progress:
        task = progress.add_task("building the report", total=None)
        path = build_report(root, output)
        progress.update(task, completed=1, total=1)
    console.print(f"wrote {path}")
