"""The one public way to read an experiments root: ``wle.open_root(path)``.

::

    root = wle.open_root("./experiments")
    for exp in root:                                  # oldest first
        print(exp.hash, exp.parent, exp.fork_step, exp.cause, len(exp.checkpoints))
    exp = root.experiment("5044d339")                 # any unique prefix, as in git
    root.lineage("5044")                              # root experiment first
    root.checkpoint("5044", "best:train_accuracy:max")
    root.restore("5044", 80, model=model, optimizer=optimizer, scheduler=scheduler)

Policy, and why:

- **Read only, a snapshot.** Opening reads every manifest once; the values returned never change
  underneath the caller. Open again to see later saves.
- **One damaged experiment never hides or breaks the others.** An unreadable manifest, a
  damaged config, a missing checkpoint file, a folder that is not an experiment: each is listed
  as an :class:`Experiment` whose ``damage`` says what is wrong in one line. Nothing here raises
  a ``KeyError`` or ``TypeError`` at a caller because of what is on disk.
- **No link is followed out of the root**: a symbolic link anywhere below ``checkpoints/`` is
  reported, not read through.
- **torch is imported only to load a checkpoint**, so listing a root is fast; checkpoint files
  are verified against their SHA-256 before loading and load with ``weights_only=True``.

The command line, the web report and ``system.resume(hash=prefix)`` are built on this reader.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from . import safe_yaml
from .diffing import architecture_differences, hyperparameter_differences
from .errors import (
    AmbiguousHashError,
    CheckpointNotFoundError,
    ExperimentNotFoundError,
    ManifestError,
    RootNotFoundError,
)
from .logsummary import LogSummary, read_log_summary
from .records import Checkpoint, DataChange, Experiment, RunSummary, step_ranges
from .store import Fault, Store
from .verifying import check_experiment, check_root, foreign_folders

__all__ = ["Checkpoint", "DataChange", "Experiment", "Root", "RunSummary", "Which", "open_root", "resolve_prefix"]

#: A checkpoint selector: a step, ``"latest"`` or ``"best:<metric>"`` (``"best:<metric>:max"``).
Which = int | str


def open_root(path: str | os.PathLike[str]) -> Root:
    """Read the experiments root at ``path``; :class:`RootNotFoundError` says why it is not one."""
    return Root(path)


def resolve_prefix(hashes: list[str], prefix: str) -> str:
    """The one hash starting with ``prefix`` (as git does); a clear error otherwise."""
    matches = [h for h in hashes if h.startswith(prefix)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ExperimentNotFoundError(f"no experiment hash starts with {prefix!r}")
    raise AmbiguousHashError(f"hash prefix {prefix!r} is ambiguous: {', '.join(sorted(matches))}")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:200]


class Root:
    """An experiments root, read once. Iterating gives its experiments, oldest first."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise RootNotFoundError(f"{self.path} does not exist")
        if not self.path.is_dir():
            raise RootNotFoundError(f"{self.path} is not a directory")
        self.store = Store(self.path)
        checkpoints = self.store.checkpoints_dir
        if checkpoints.is_symlink():
            raise RootNotFoundError(f"{checkpoints} is a symbolic link; a root's folders are never followed out of it")
        if not checkpoints.is_dir():
            raise RootNotFoundError(f"{self.path} is not an experiments root (no {checkpoints.name}/ folder in it)")
        self._configs: dict[str, tuple[dict[str, Any], str | None]] = {}
        self._architectures: dict[str, dict[str, Any]] = {}
        self._folders: set[str] = set()
        self._experiments = self._read_all()

    # -- listing ----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Experiment]:
        return iter(self.experiments())

    def __len__(self) -> int:
        return len(self._experiments)

    def experiments(self) -> list[Experiment]:
        """Every experiment, damaged ones included (``exp.damaged``), oldest first."""
        return sorted(self._experiments.values(), key=lambda e: (e.created, e.hash))

    @property
    def damaged(self) -> list[Experiment]:
        return [e for e in self.experiments() if e.damaged]

    @property
    def problems(self) -> list[str]:
        """Damage outside any experiment (a damaged event log line), one line each."""
        return [self._log.problem] if self._log.problem else []

    @property
    def runs(self) -> list[RunSummary]:
        """The runs (processes) the event log records, in start order (empty without a log)."""
        return list(self._log.runs)

    def runs_of(self, prefix: str) -> list[RunSummary]:
        """The runs that trained under an experiment or wrote one of its checkpoints."""
        exp = self.experiment(prefix)
        writers = {c.run for c in exp.checkpoints}
        return [run for run in self._log.runs if exp.hash in run.hashes or run.id in writers]

    def resolve(self, prefix: str) -> str:
        return resolve_prefix(list(self._experiments), prefix)

    def experiment(self, prefix: str) -> Experiment:
        """The experiment whose hash starts with ``prefix``; it may be damaged (``exp.damage``)."""
        return self._experiments[self.resolve(prefix)]

    def lineage(self, prefix: str) -> list[Experiment]:
        """The experiment and its ancestors present in this root, the root experiment first."""
        chain: list[Experiment] = []
        current: Experiment | None = self.experiment(prefix)
        while current is not None and current not in chain:
            chain.append(current)
            current = self._experiments.get(current.parent) if current.parent else None
        return chain[::-1]

    # -- what an experiment was -------------------------------------------------------------

    def config(self, prefix: str) -> dict[str, Any]:
        """Hyperparameters, optimizer and scheduler settings (``{}`` when unreadable)."""
        return self._config(self.resolve(prefix))[0]

    def architecture_text(self, prefix: str) -> str | None:
        """The readable architecture (``architecture.txt``), or ``None``."""
        hash = self.resolve(prefix)
        if hash not in self._folders:
            return None
        path = self.store.architecture_path(hash, "txt")
        if self.store.outside_problem(path) or not path.is_file():
            return None
        return path.read_bytes().decode("utf-8", errors="replace")

    def differences(self, old: str, new: str) -> dict[str, list[str]]:
        """``{"hyperparameters": [...], "architecture": [...]}`` from ``old`` to ``new``, in words."""
        return self._differences(self.resolve(old), self.resolve(new))

    def _differences(self, a: str, b: str) -> dict[str, list[str]]:
        try:
            architecture = architecture_differences(self._architecture(a), self._architecture(b))
        except (AttributeError, TypeError, ValueError):  # a damaged description costs only its words
            architecture = ["(an architecture description cannot be read)"]
        return {
            "hyperparameters": hyperparameter_differences(self._config(a)[0], self._config(b)[0]),
            "architecture": architecture,
        }

    def metrics(self, prefix: str) -> dict[str, list[list[float]]]:
        """Reported metrics of one experiment: ``{name: [[step, value], ...]}`` (from the log)."""
        return self._log.metrics.get(self.resolve(prefix), {})

    # -- checkpoints ------------------------------------------------------------------------

    def checkpoint(self, prefix: str, which: Which = "latest") -> Checkpoint:
        """One checkpoint: by step, ``"latest"`` or ``"best:<metric>"`` (lowest; ``:max`` for highest)."""
        exp = self.experiment(prefix)
        if not exp.checkpoints:
            reason = f" ({exp.damage})" if exp.damage else ""
            raise CheckpointNotFoundError(f"experiment {exp.hash} has no readable checkpoints{reason}")
        if isinstance(which, str) and which.isdigit():
            which = int(which)
        if isinstance(which, int) and not isinstance(which, bool):
            for checkpoint in reversed(exp.checkpoints):
                if checkpoint.step == which:
                    return checkpoint
            steps = ", ".join(str(c.step) for c in exp.checkpoints)
            raise CheckpointNotFoundError(f"experiment {exp.hash} has no checkpoint at step {which} (it has {steps})")
        if which == "latest":
            return exp.checkpoints[-1]
        if isinstance(which, str) and which.startswith("best:"):
            return _best(exp, which)
        raise ValueError(f"which checkpoint: give a step, 'latest' or 'best:<metric>[:min|max]', not {which!r}")

    def load(self, prefix: str, which: Which = "latest") -> dict[str, Any]:
        """The checkpoint's payload, after checking its size and SHA-256 (``weights_only=True``)."""
        return self._load(self.checkpoint(prefix, which))

    def restore(
        self,
        prefix: str,
        which: Which = "latest",
        *,
        model: Any = None,
        optimizer: Any = None,
        scheduler: Any = None,
    ) -> Checkpoint:
        """Load a checkpoint into the given objects; returns which checkpoint it was.

        Each of ``model``, ``optimizer`` and ``scheduler`` is one object (when the checkpoint
        holds one of that kind) or a mapping of registered name to object. The architecture is
        compared first, and the optimizers' class and param groups, so a mismatch raises
        :class:`ArchitectureMismatchError` (:class:`OptimizerMismatchError` for an optimizer) listing
        every difference and leaves every object as it was.
        """
        from .restore import check_architecture, check_optimizers

        checkpoint = self.checkpoint(prefix, which)
        payload = self._load(checkpoint)
        models = _by_name("model", model, payload.get("models", {}))
        optimizers = _by_name("optimizer", optimizer, payload.get("optimizers", {}))
        schedulers = _by_name("scheduler", scheduler, payload.get("schedulers", {}))
        check_architecture(models, payload.get("models", {}), str(checkpoint.path))
        check_optimizers(optimizers, payload, str(checkpoint.path))
        for name, obj in models.items():
            obj.load_state_dict(payload["models"][name])
        for name, obj in optimizers.items():
            obj.load_state_dict(payload["optimizers"][name])
        for name, obj in schedulers.items():
            obj.load_state_dict(payload["schedulers"][name])
        return checkpoint

    # -- checking ---------------------------------------------------------------------------

    def verify(self, prefix: str | None = None) -> list[Fault]:
        """Every fault: each damaged file (manifest, config, architecture, checkpoint), link or log line."""
        if prefix is not None:
            hash = self.resolve(prefix)
            if hash not in self._folders:  # a folder that is not an experiment
                return [Fault(hash, self.store.checkpoints_dir / hash, self._experiments[hash].damage or "")]
            return check_experiment(self.store, hash)
        return [fault for _, faults in check_root(self.store) for fault in faults]

    # -- reading ----------------------------------------------------------------------------

    @cached_property
    def _log(self) -> LogSummary:
        return read_log_summary(self.store.log_path)

    def _read_all(self) -> dict[str, Experiment]:
        found: dict[str, Experiment] = {}
        self._folders = set(self.store.hashes())
        for path, reason in foreign_folders(self.store):
            found[path.name] = Experiment(path.name, damage=f"{path.name} {reason}")
        for hash in sorted(self._folders):
            found[hash] = self._read_one(hash)
        children: dict[str, list[Experiment]] = {}
        for exp in found.values():
            if exp.parent in found:
                children.setdefault(exp.parent, []).append(exp)
        for parent, kids in children.items():
            kids.sort(key=lambda e: (e.fork_step or 0, e.created, e.hash))
            found[parent] = replace(found[parent], children=tuple(k.hash for k in kids))
        for hash, exp in list(found.items()):
            if exp.parent and exp.parent in found and not exp.damaged:
                found[hash] = replace(exp, cause=self._cause(exp))
        return found

    def _read_one(self, hash: str) -> Experiment:
        try:
            manifest = self.store.manifest(hash)
        except ManifestError as error:
            return Experiment(hash, damage=f"manifest.yaml: {error.problem}")
        except OSError as error:
            return Experiment(hash, damage=f"manifest.yaml cannot be read: {_one_line(error)}")
        checkpoints = tuple(
            Checkpoint(
                hash=hash,
                step=r["step"],
                reason=r["reason"],
                file=r["file"],
                path=self.store.file_of(hash, r),
                size=r["size"],
                sha256=r["sha256"],
                created=r["created"],
                metrics=dict(r.get("metrics") or {}),
                run=r.get("run"),
            )
            for r in sorted(manifest["checkpoints"], key=lambda r: (r["step"], r["created"]))
        )
        trained = self._log.steps.get(hash) or {c.step for c in checkpoints}
        return Experiment(
            hash=hash,
            parent=manifest.get("parent"),
            fork_step=manifest.get("fork_step"),
            cause=(manifest.get("fork_cause") or "") if manifest.get("parent") else "",
            recorded_cause=manifest.get("fork_cause"),
            created=str(manifest.get("created", "")),
            checkpoints=checkpoints,
            size=self.store.size_on_disk(hash),
            data_changes=tuple(self._log.data_changes.get(hash, ())),
            trained=step_ranges(trained),
            damage=self._quick_damage(hash, manifest, checkpoints),
        )

    def _quick_damage(self, hash: str, manifest: dict[str, Any], checkpoints: tuple[Checkpoint, ...]) -> str | None:
        """What a listing sees without hashing files: a readable config, every file present at its size.

        ``verify`` also compares checksums; a listing stays fast.
        """
        problem = self._config(hash)[1]
        if problem is not None:
            return problem
        recorded = manifest.get("files") or {}
        expected = [(self.store.exp_dir(hash) / str(name), info) for name, info in recorded.items()]
        expected += [(c.path, {"size": c.size}) for c in checkpoints]
        for path, info in expected:
            name = path.relative_to(self.store.exp_dir(hash)).as_posix()
            where = self.store.outside_problem(path) if ".." not in Path(name).parts else "points outside its folder"
            if where is not None:
                return f"{name}: {where}"
            if not path.is_file():
                return f"{name}: file is missing"
            size = path.stat().st_size
            if isinstance(info, dict) and size != info.get("size"):
                return f"{name}: size is {size} bytes, manifest says {info.get('size')} (truncated?)"
        return None

    def _config(self, hash: str) -> tuple[dict[str, Any], str | None]:
        """The config and, when it cannot be read, the one-line problem (the config is then ``{}``)."""
        if hash not in self._configs:
            self._configs[hash] = self._read_config(hash)
        return self._configs[hash]

    def _read_config(self, hash: str) -> tuple[dict[str, Any], str | None]:
        if hash not in self._folders:  # not an experiment folder: nothing in it is read
            return {}, None
        path = self.store.config_path(hash)
        name = f"hp/{path.name}"
        problem = self.store.outside_problem(path)
        if problem is not None:
            return {}, f"{name}: {problem}"
        if not path.is_file():
            return {}, None
        try:
            config = safe_yaml.load(path.read_bytes().decode("utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            return {}, f"{name} is not valid YAML ({_one_line(error)[:120]})"
        if not isinstance(config, dict):
            return {}, f"{name} does not hold a mapping"
        return config, None

    def _architecture(self, hash: str) -> dict[str, Any]:
        if hash not in self._architectures and hash not in self._folders:
            self._architectures[hash] = {}
        if hash not in self._architectures:
            path = self.store.architecture_path(hash, "json")
            data: Any = {}
            if not self.store.outside_problem(path) and path.is_file():
                try:
                    data = json.loads(path.read_bytes().decode("utf-8"))
                except (ValueError, UnicodeDecodeError):
                    data = {}
            self._architectures[hash] = data if isinstance(data, dict) else {}
        return self._architectures[hash]

    def _cause(self, exp: Experiment) -> str:
        """The fork cause from the difference to the parent, else as the manifest recorded it."""
        assert exp.parent is not None
        diff = self._differences(exp.parent, exp.hash)
        words = diff["hyperparameters"] + diff["architecture"]
        return "; ".join(words) if words else (exp.recorded_cause or "")

    def _load(self, checkpoint: Checkpoint) -> dict[str, Any]:
        fault = next((f for f in check_experiment(self.store, checkpoint.hash) if f.file == checkpoint.path), None)
        if fault is not None:
            raise CheckpointNotFoundError(f"checkpoint {checkpoint.path} is damaged: {fault.problem}")
        try:
            payload = self.store.load(checkpoint.path)
        except Exception as error:  # torch raises many types for a file it cannot read
            problem = _one_line(error)
            raise CheckpointNotFoundError(f"checkpoint {checkpoint.path} cannot be loaded: {problem}") from None
        if not isinstance(payload, dict):
            raise CheckpointNotFoundError(f"checkpoint {checkpoint.path} does not hold a checkpoint mapping")
        return payload


def _best(exp: Experiment, which: str) -> Checkpoint:
    _, _, spec = which.partition(":")
    name, _, mode = spec.partition(":")
    mode = mode or "min"
    if mode not in ("min", "max") or not name:
        raise ValueError(f"which checkpoint: 'best:<metric>' or 'best:<metric>:min|max', not {which!r}")
    scored = [c for c in exp.checkpoints if name in c.metrics]
    if not scored:
        recorded = sorted({m for c in exp.checkpoints for m in c.metrics})
        listing = ", ".join(recorded) or "none"
        raise CheckpointNotFoundError(f"no checkpoint of {exp.hash} recorded metric {name!r} (recorded: {listing})")
    pick = min if mode == "min" else max
    return pick(reversed(scored), key=lambda c: c.metrics[name])


def _by_name(kind: str, given: Any, saved: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` (one object or a mapping of name to object) matched to the checkpoint's names."""
    if given is None:
        return {}
    if isinstance(given, Mapping):
        unknown = [name for name in given if name not in saved]
        if unknown:
            holds = ", ".join(saved) or "none"
            raise KeyError(f"the checkpoint holds no {kind} named {unknown[0]!r} (it holds {holds})")
        return dict(given)
    if len(saved) != 1:
        names = ", ".join(repr(n) for n in saved) or "none"
        raise ValueError(f"the checkpoint holds {len(saved)} {kind}s ({names}): pass a mapping {{name: {kind}}}")
    return {next(iter(saved)): given}
