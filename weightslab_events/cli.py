"""The ``weightslab-events`` command: look at an experiments root from a terminal or a script.

Built on click (parsing, help, exit codes), rich (tables, progress) and the public reader
(:mod:`weightslab_events.reader`), which the web report uses too. Policies:

- A user mistake (a wrong path, an unknown or ambiguous hash, a damaged log a command needs) is
  one clear line on stderr and exit code 1, never a traceback.
- A damaged experiment is listed as damaged, with its reason in one line, and never hides the
  others; only ``verify`` (and a command that cannot do its job) exits non-zero because of it.
- Output to a pipe or a file is never wrapped or cut (paths and hashes stay whole), and every
  command has ``--json`` for scripts.
- Nothing here imports torch: ``ls``, ``show``, ``diff``, ``log``, ``replay`` start in a
  fraction of a second.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from .clirender import EventPrinter, console, errors, ls_table, print_checkpoints, size_text, when
from .events import Event
from .reader import Root, open_root
from .records import runs_in_words
from .terminal import printable

__all__ = ["main"]


class _Failed(click.ClickException):
    """A command that could not do its job: one line on stderr, exit code 1."""


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every error into one line and exit code 1; an unexpected one says it is a bug."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except KeyError as error:
            raise _Failed(printable(error.args[0] if error.args else error)) from None
        except (LookupError, OSError, ValueError) as error:
            raise _Failed(printable(" ".join(str(error).split()))) from None
        except Exception as error:  # the promise is: no traceback, ever
            bug = f"unexpected {type(error).__name__}: {error} (a bug in weightslab-events; please report it)"
            raise _Failed(printable(bug)) from None

    return wrapper


def _open(root: str) -> Root:
    opened = open_root(root)
    for problem in opened.problems:
        errors.print(printable(f"warning: {problem}"), markup=False, soft_wrap=True)
    return opened


def _emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="weightslab-events")
def main() -> None:
    """Inspect experiments recorded by weightslab-events."""


@main.command("ls")
@click.argument("root", type=click.Path())
@json_option
@user_errors
def ls(root: str, as_json: bool) -> None:
    """One row per experiment hash, newest first (damaged ones say why)."""
    opened = _open(root)
    rows = opened.experiments()[::-1]
    if as_json:
        _emit_json([e.to_json() for e in rows])
        return
    console.print(ls_table(rows, f"{len(rows)} experiments in {root}", console))
    if opened.runs:
        console.print(printable(runs_in_words(opened.runs)), markup=False)


@main.command()
@click.argument("root", type=click.Path())
@click.argument("hash")
@json_option
@user_errors
def show(root: str, hash: str, as_json: bool) -> None:
    """An experiment's lineage, hyperparameters, architecture, data changes and checkpoints."""
    opened = _open(root)
    exp = opened.experiment(hash)
    lineage = opened.lineage(exp.hash)
    config = opened.config(exp.hash)
    architecture = opened.architecture_text(exp.hash)
    runs = opened.runs_of(exp.hash)
    if as_json:
        _emit_json(
            {
                **exp.to_json(),
                "lineage": [{"hash": e.hash, "fork_step": e.fork_step, "cause": e.cause or None} for e in lineage],
                "config": config,
                "architecture": architecture,
                "data_changes": [c.to_json() for c in exp.data_changes],
                "checkpoints": [c.to_json() for c in exp.checkpoints],
                "runs": [r.to_json() for r in runs],
            }
        )
        return
    created = escape(printable(when(exp.created)))
    console.print(f"[bold]experiment {exp.hash}[/bold]  created {created}  size {size_text(exp.size)}")
    if exp.damage:
        console.print(f"[red]damaged:[/red] {escape(printable(exp.damage))}", soft_wrap=True)
    console.print("\n[bold]lineage[/bold]")
    for depth, item in enumerate(lineage):
        why = f"  <- {item.cause} (at step {item.fork_step})" if item.parent else "  (root)"
        console.print(printable(f"{'  ' * depth}{item.hash}{why}"), markup=False)
    console.print("\n[bold]hyperparameters[/bold]")
    console.print(_yaml(config) if config else "(none recorded)", markup=False)
    console.print("\n[bold]architecture[/bold]")
    drawing = printable(architecture.rstrip(), keep_newlines=True) if architecture else "(none recorded)"
    console.print(drawing, markup=False)
    console.print("\n[bold]data changes[/bold]")
    summary = exp.data_summary()
    if not summary:
        console.print("(none)")
    for kind, counts in summary.items():
        line = f"  {kind}: {counts['changes']} announcement(s), {counts['samples']} sample(s)"
        console.print(printable(line), markup=False)
    for change in exp.data_changes:
        console.print(printable(f"    step {change.step}: {change.words}"), markup=False)
    console.print("\n[bold]runs[/bold]")
    if not runs:
        console.print("(none in the event log)")
    for run in runs:
        ended = "closed" if run.closed else "ended without close() (killed or crashed)"
        where = f", pid {run.pid} on {run.host}" if run.pid is not None else ""
        line = f"  {run.words(opened.runs)}: {run.id}{where}, last step {run.last_step}, {ended}"
        console.print(printable(line), markup=False)
    index = {run.id: run.index for run in opened.runs}
    print_checkpoints(exp.checkpoints, console, index)


def _yaml(config: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(config, sort_keys=True).rstrip()


@main.command()
@click.argument("root", type=click.Path())
@click.argument("a")
@click.argument("b")
@json_option
@user_errors
def diff(root: str, a: str, b: str, as_json: bool) -> None:
    """Hyperparameter and architecture differences from experiment A to B."""
    opened = _open(root)
    old, new = opened.resolve(a), opened.resolve(b)
    found = opened.differences(old, new)
    if as_json:
        _emit_json({"from": old, "to": new, **found})
        return
    console.print(f"from {old} to {new}")
    for section, lines in found.items():
        console.print(f"\n[bold]{section}[/bold]")
        for line in lines or ["(no differences)"]:
            console.print(printable(f"  {line}"), markup=False)


@main.command()
@click.argument("root", type=click.Path())
@click.option("--type", "types", multiple=True, help="Only events of this type (repeatable).")
@click.option("--hash", "hash_prefix", help="Only events of experiments whose hash starts with this.")
@click.option("--follow", "-f", is_flag=True, help="Keep watching the log of a running training.")
@json_option
@user_errors
def log(root: str, types: tuple[str, ...], hash_prefix: str | None, follow: bool, as_json: bool) -> None:
    """The event log, optionally filtered (--json: one JSON object per line)."""
    from .eventlog import read_events_partial
    from .signals import NAMES

    unknown = [t for t in types if t not in NAMES]
    if unknown:
        raise _Failed(f"unknown event type {unknown[0]!r}; known types: {', '.join(NAMES)}")
    path = _log_path(root)

    def wanted(event: Event) -> bool:
        return (not types or event.type in types) and (not hash_prefix or (event.exp or "").startswith(hash_prefix))

    printer = EventPrinter(console, as_json=as_json)
    if follow:
        _follow(path, wanted, printer)
        return
    events, damage = read_events_partial(path)
    for event in events:
        printer.feed(event, show=wanted(event))
    if damage is not None:
        raise _Failed(f"{damage} (the events before it are shown)") from None


def _log_path(root: str) -> Path:
    given = Path(root)
    if not given.exists():
        raise FileNotFoundError(f"{given} does not exist")
    path = given if given.is_file() else given / "logs" / "events.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no event log at {path} (does not exist)")
    return path


def _follow(path: Path, wanted: Callable[[Event], bool], printer: EventPrinter) -> None:
    from .eventlog import follow_events

    for event in follow_events(path):
        printer.feed(event, show=wanted(event))
        sys.stdout.flush()


@main.command()
@click.argument("root", type=click.Path())
@json_option
@user_errors
def verify(root: str, as_json: bool) -> None:
    """Check every file of every experiment (checksums, manifests, links); exit 1 naming each bad one."""
    from rich.progress import Progress

    from .verifying import check_root

    opened = _open(root)
    store = opened.store
    faults = []
    checked = 0
    with Progress(console=errors, transient=True, disable=not errors.is_terminal) as progress:
        task = progress.add_task("verifying", total=len(opened) + 1)
        for _name, found in check_root(store):
            faults.extend(found)
            checked += 1
            progress.advance(task)
    listed = {c.path for e in opened for c in e.checkpoints}
    checkpoints = len(listed)
    bad_checkpoints = len(listed & {f.file for f in faults})
    if as_json:
        listing = [{"hash": f.hash, "file": _relative(store.root, f.file), "problem": f.problem} for f in faults]
        _emit_json({"checkpoints": checkpoints, "verified": checkpoints - bad_checkpoints, "faults": listing})
    else:
        for fault in faults:
            bad = printable(f"BAD {_relative(store.root, fault.file)}: {fault.problem}")
            errors.print(bad, markup=False, soft_wrap=True)
        console.print(
            f"{checkpoints - bad_checkpoints} of {checkpoints} checkpoints verified; "
            f"{len(faults)} damaged file(s) in {checked - 1} experiment folder(s)"
        )
    if faults:
        raise SystemExit(1)


def _relative(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


@main.command()
@click.argument("root", type=click.Path())
@click.option("--keep-last", type=click.IntRange(min=1), help="Keep the newest N checkpoints of each hash.")
@click.option("--every", type=click.IntRange(min=1), help="Keep checkpoints whose step is a multiple of N.")
@click.option("--best", help="Keep the best by a metric: NAME, NAME:min or NAME:max.")
@click.option("--best-n", type=click.IntRange(min=1), default=1, show_default=True, help="How many best to keep.")
@click.option("--dry-run", is_flag=True, help="Print what would be deleted, delete nothing.")
@json_option
@user_errors
def gc(
    root: str, keep_last: int | None, every: int | None, best: str | None, best_n: int, dry_run: bool, as_json: bool
) -> None:
    """Delete checkpoints a retention policy does not keep (never the newest or fork ones)."""
    from .collecting import collect, policy_of

    policy = policy_of(keep_last, every, best, best_n)
    if policy is None:
        raise click.UsageError(
            "give at least one of --keep-last N, --every N, --best METRIC: gc has no default policy "
            "and deletes nothing unless told what to keep"
        )
    opened = _open(root)
    recorded = sorted({name for exp in opened for c in exp.checkpoints for name in c.metrics})
    metric = (best or "").partition(":")[0]
    if best and metric not in recorded:
        raise _Failed(
            printable(
                f"no checkpoint recorded metric {metric!r} (recorded: {', '.join(recorded) or 'none'}); "
                "gc deleted nothing"
            )
        )
    result = collect(opened, policy, dry_run=dry_run)
    if as_json:
        _emit_json(result.to_json())
        return
    verb = "would delete" if dry_run else "deleted"
    for item in result.deleted:
        line = f"{verb} {item['path']} (step {item['step']}, {item['reason']})"
        console.print(printable(line), markup=False, soft_wrap=True)
    for hash, why in result.skipped:
        errors.print(printable(f"skipped {hash}: {why}"), markup=False, soft_wrap=True)
    freed = "would free" if dry_run else "freed"
    console.print(f"{len(result.deleted)} checkpoints, {freed} {size_text(result.freed)} ({policy!r})", markup=False)


@main.command("replay")
@click.argument("source", metavar="ROOT_OR_LOG", type=click.Path())
@json_option
@user_errors
def replay_command(source: str, as_json: bool) -> None:
    """The hash sequence and checkpoint decisions a log (or a root's log) produces."""
    from .replay import replay as replay_log

    result = replay_log(_log_path(source))
    if as_json:
        _emit_json(
            {
                "hash_changes": [{"old": o, "new": n, "cause": c} for o, n, c in result.hash_changes],
                "checkpoints": [{"hash": h, "step": s, "reason": r} for h, s, r in result.checkpoints],
            }
        )
        return
    console.print("[bold]hashes[/bold]")
    for old, new, cause in result.hash_changes:
        console.print(printable(f"  {old or '-'} -> {new}  ({cause})"), markup=False)
    console.print("[bold]checkpoint decisions[/bold]")
    for hash, step, reason in result.checkpoints:
        console.print(printable(f"  {hash} step {step:>6}  {reason}"), markup=False)


@main.command()
@click.argument("root", type=click.Path())
@click.option("-o", "--output", default="report.html", show_default=True, type=click.Path())
@user_errors
def report(root: str, output: str) -> None:
    """Write a self-contained HTML report of the experiment tree."""
    from .report import build_report

    opened = _open(root)
    path = build_report(opened, output)
    console.print(printable(f"wrote {path}"), markup=False, soft_wrap=True)
