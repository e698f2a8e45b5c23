"""Distributed training (DDP, FSDP2): every rank runs the same user code; the ranks agree, rank 0 commits.

The system builds a :class:`Coordinator` only when ``torch.distributed`` is initialised; a single
process never reaches this module's collectives. Policy, and why:

- **Private groups.** The library's collectives never run on the user's process group (sharing
  it is a known deadlock): two gloo groups of its own, one used only by the training thread (the
  agreement check), one only by the writer thread (committing, DCP). Each group's collectives are
  issued by one thread, in the same order on every rank.
- **Agreement, every step, without a hang.** After the step-boundary checks (so the user's edits
  are in), every rank starts one asynchronous all-reduce of (step, experiment hash, digest of its
  save decisions so far); the post-step hook waits for it before the step's decisions are taken.
  Every rank issues it at every step, so a rank that decided differently can never leave another
  waiting. A difference is seen by all ranks at the same step; all of them then gather every
  rank's components and raise :class:`~weightslab_events.errors.RankDisagreementError` naming the
  components that differ. It is one message of six integers (``max`` of ``v`` and ``-v``), so its
  cost does not grow with the world size beyond the all-reduce's ``log2(world)`` rounds.
- **Writing.** Save decisions are identical on every rank, so every rank's writer handles the same
  job in the same order. The ranks first exchange ``(hash, step, reason)`` (a mismatch fails the
  checkpoint on every rank). Each rank writes its own part: its RNG states and statefuls
  (``{hash}_step_{step}.rank{r}.pt``) and, for sharded (FSDP2) state, its shards through
  ``torch.distributed.checkpoint`` into a temporary folder. The ranks exchange the parts' sizes and
  SHA-256s; rank 0 then renames the DCP folder into place, writes the shared state once (the
  models and optimizers too, for replicated DDP state) and commits the manifest last, listing
  every part. A part that failed on any rank fails the checkpoint on every rank, and nothing is
  listed. Rank 0 broadcasts the outcome, so every rank reports the same ``checkpoint_saved``.
- **Logs.** Rank 0 writes ``logs/events.jsonl``; rank ``r > 0`` keeps its own events in
  ``logs/events.rank{r}.jsonl`` (the agreement check keeps the decisions identical; replaying any
  rank's log reproduces them).
- **Resume.** Each rank loads the shared state and its own part. Sharded state is loaded through
  DCP (a collective on the writer group), which reshards to another world size (2 -> 1 ranks).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from .errors import CheckpointError, DistributedSetupError, RankDisagreementError
from .store import TEMP_MARK, sha256_of

if TYPE_CHECKING:
    from torch import nn

    from .bus import Bus
    from .events import Event
    from .saver import SaveJob
    from .snapshot import BufferPool
    from .store import Store

__all__ = ["Coordinator", "copy_sharded", "is_sharded", "load_parts", "rank_log_path"]

log = logging.getLogger("weightslab_events")

#: The manifest's kinds of part: a rank's own state, a DCP shard file, DCP's metadata file.
RANK_PART, SHARD_PART, METADATA_PART = "rank", "shard", "metadata"

_CHECK_FIELDS = ("step", "experiment hash", "save decisions")

#: Seconds a rank waits at start-up for every other rank to create its checkpoint system too.
SETUP_TIMEOUT = 300.0


def rank_log_path(path: Path, rank: int) -> Path:
    """Rank 0 keeps ``events.jsonl``; rank ``r`` writes ``events.rank{r}.jsonl`` beside it."""
    return path if rank == 0 else path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def _as_int(text: str | None) -> int:
    """Sixty bits of a hex digest, as an all-reducible integer (0 for none)."""
    return int(text[:15], 16) if text else 0


def is_sharded(model: nn.Module) -> bool:
    """True when the model's parameters are DTensors (FSDP2's ``fully_shard``)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def copy_sharded(pool: BufferPool, path: tuple[Any, ...], tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor whose local shard is copied into ``pool``: only this rank's bytes are copied."""
    from torch.distributed.tensor import DTensor

    assert isinstance(tensor, DTensor)
    local = pool.copy((*path, "local"), tensor.to_local())
    return DTensor.from_local(
        local, tensor.device_mesh, tensor.placements, run_check=False, shape=tensor.shape, stride=tensor.stride()
    )


class Coordinator:
    """One rank's side of the agreement check and of the checkpoint commit protocol."""

    def __init__(self, bus: Bus, components: Callable[[], Mapping[str, Any]]) -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self._wait_for_every_rank()
        self._checks = dist.new_group(backend="gloo")
        self._writes = dist.new_group(backend="gloo")
        self._components = components
        self._digest = 0
        self._decisions: list[tuple[str, int, str]] = []
        self._inflight: list[tuple[Any, torch.Tensor, list[int]]] = []
        self.failed: RankDisagreementError | None = None
        bus.connect("checkpoint_scheduled", self._on_scheduled, group="core")

    def _wait_for_every_rank(self) -> None:
        """Meet every rank in a group of its own, with a bounded wait: a rank alone raises, never hangs.

        Creating a group waits for every rank to create it. The library's two working groups keep
        the default (long) timeout, since a large write may legitimately keep a rank's writer
        busy; so the first meeting happens here, under ``SETUP_TIMEOUT``.
        """
        try:
            handshake = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=SETUP_TIMEOUT))
        except Exception as error:
            raise DistributedSetupError(
                f"rank {self.rank} of {self.world_size} created a checkpoint system, but not every rank did within "
                f"{SETUP_TIMEOUT:.0f} s ({type(error).__name__}). Under torch.distributed every rank runs the same "
                "code: create the system and register the same objects on every rank."
            ) from error
        dist.destroy_process_group(handshake)

    @property
    def writes_shared_state(self) -> bool:
        return self.rank == 0

    # -- agreement (training thread) ----------------------------------------------------------

    def _on_scheduled(self, event: Event) -> None:
        decision = (str(event.data["hash"]), int(event.step), str(event.data["reason"]))
        self._decisions.append(decision)
        self._digest = _as_int(hashlib.sha256(f"{self._digest}|{decision}".encode()).hexdigest())

    def begin_check(self, step: int, hash: str | None) -> None:
        """Start this step's agreement all-reduce; :meth:`end_check` waits for it."""
        if self.failed is not None:
            return
        local = [int(step), _as_int(hash), self._digest]
        both = torch.tensor(local + [-v for v in local], dtype=torch.int64)
        work = dist.all_reduce(both, op=dist.ReduceOp.MAX, group=self._checks, async_op=True)
        self._inflight.append((work, both, local))

    def end_check(self, hash: str | None) -> None:
        """Wait for the started checks; on a difference, raise on every rank naming it."""
        inflight, self._inflight = self._inflight, []
        for work, both, local in inflight:
            work.wait()
            highest, lowest = both[:3].tolist(), [-v for v in both[3:].tolist()]
            if highest != lowest:
                differing = [f for f, h, low in zip(_CHECK_FIELDS, highest, lowest, strict=True) if h != low]
                self._disagree(local[0], hash, differing)

    def check_now(self, step: int, hash: str | None) -> None:
        self.begin_check(step, hash)
        self.end_check(hash)

    def _disagree(self, step: int, hash: str | None, differing: list[str]) -> None:
        mine = {
            "rank": self.rank,
            "step": step,
            "hash": hash,
            "components": dict(self._components()),
            "decisions": self._decisions[-3:],
        }
        views: list[Any] = [None] * self.world_size
        dist.all_gather_object(views, mine, group=self._checks)
        self.failed = RankDisagreementError(_describe_disagreement(views, differing))
        raise self.failed

    # -- committing (writer thread) -------------------------------------------------------------

    def commit(self, store: Store, job: SaveJob) -> dict[str, Any]:
        """Every rank writes its part; rank 0 commits the manifest last; returns the committed record."""
        stem, token = self._align(store, job)
        final = store.checkpoint_path(job.hash, job.step).with_name(stem)
        folder = _Folder(final, token) if job.payload.get("sharded") else None
        try:
            mine: dict[str, Any] = {"parts": self._write_parts(store, job, stem, folder)}
        except Exception as error:
            mine = {"error": f"rank {self.rank}: {type(error).__name__}: {error}"}
        gathered = self._gather(mine)
        outcome: dict[str, Any] = {}
        if self.rank == 0:
            outcome = self._commit_shared(store, job, gathered, folder)
        outcome = self._broadcast(outcome)
        if "error" in outcome:
            raise CheckpointError(outcome["error"])
        return outcome["record"]

    def _align(self, store: Store, job: SaveJob) -> tuple[str, str]:
        """Exchange the job's key until every rank's writer holds the same checkpoint.

        Returns the parts' stem and a token for the DCP folder's temporary name, both rank 0's.

        A rank that skipped a periodic save (``when_busy="skip"``) or failed to copy one is behind
        the others: a rank holding an older step than another fails that checkpoint and moves on to
        its next job, and the ranks at the newest step exchange again with it. Different
        checkpoints at the same step mean the ranks disagree: none is committed.

        Rank 0 names the parts: ``{hash}_step_{step:06d}`` as the main file, or, when a part of
        that name exists already (another run committed this step), with a fresh token added, so
        no committed part is ever overwritten.
        """
        key = [job.step, job.hash, job.reason]
        while True:
            stem = _free_stem(store, job) if self.rank == 0 else ""
            views = self._gather({"key": key, "stem": stem, "token": uuid.uuid4().hex[:8]})
            keys = [view["key"] for view in views]
            if all(k == key for k in keys):
                return views[0]["stem"], views[0]["token"]
            newest = max(k[0] for k in keys)
            if all(k[0] == newest for k in keys):
                saved = "; ".join(f"rank {r}: {k[1]} step {k[0]} ({k[2]})" for r, k in enumerate(keys))
                raise RankDisagreementError(f"the ranks saved different checkpoints, none was committed: {saved}")
            if key[0] < newest:
                raise CheckpointError(
                    f"{job.label} was not taken on every rank (another rank's writer is at step {newest}); "
                    "not committed"
                )

    def _write_parts(self, store: Store, job: SaveJob, stem: str, folder: _Folder | None) -> list[dict[str, Any]]:
        parts = []
        if folder is not None:
            parts.extend(self._write_shards(job, folder))
        own = {
            "rank": self.rank,
            "world_size": self.world_size,
            "experiment_hash": job.hash,
            "step": job.step,
            "rng": job.payload.get("rng", {}),
            "statefuls": job.payload.get("statefuls", {}),
        }
        path = store.checkpoint_path(job.hash, job.step).with_name(f"{stem}.rank{self.rank}.pt")
        size, digest = store.write_atomic(path, lambda f: torch.save(own, f))
        parts.append({"file": path.name, "kind": RANK_PART, "rank": self.rank, "size": size, "sha256": digest})
        return parts

    def _write_shards(self, job: SaveJob, folder: _Folder) -> list[dict[str, Any]]:
        """This rank's shards through DCP (a collective of every rank's writer); checksums of its files.

        DCP's file writer names a rank's files ``__{rank}_{n}.distcp`` and fsyncs them; the
        coordinator (rank 0) writes ``.metadata`` last, before ``dcp.save`` returns on any rank.
        """
        import torch.distributed.checkpoint as dcp

        folder.temp.mkdir(parents=True, exist_ok=True)
        state = {"models": job.payload["models"], "optimizers": job.payload["optimizers"]}
        writer = dcp.FileSystemWriter(str(folder.temp), sync_files=True)
        dcp.save(state, storage_writer=writer, process_group=self._writes)
        mine = sorted(p for p in folder.temp.iterdir() if p.name.startswith(f"__{self.rank}_"))
        if self.rank == 0:
            mine.append(folder.temp / ".metadata")
        return [
            {
                "file": f"{folder.final.name}/{p.name}",
                "kind": METADATA_PART if p.name == ".metadata" else SHARD_PART,
                "rank": self.rank,
                "size": p.stat().st_size,
                "sha256": sha256_of(p),
            }
            for p in mine
        ]

    def _commit_shared(
        self, store: Store, job: SaveJob, gathered: list[dict[str, Any]], folder: _Folder | None
    ) -> dict[str, Any]:
        errors = [view["error"] for view in gathered if "error" in view]
        if errors:
            return {"error": "a rank could not write its part, nothing was committed: " + "; ".join(errors)}
        parts = [part for view in gathered for part in view["parts"]]
        try:
            store.prepare(job.hash, job.info)
            if folder is not None:
                folder.move_into_place(store)
            shared = {k: v for k, v in job.payload.items() if k not in ("rng", "statefuls")}
            shared["world_size"] = self.world_size
            if folder is not None:
                shared["models"], shared["optimizers"] = {}, {}
            extra = {"world_size": self.world_size, "sharded": folder is not None, "parts": parts}
            record = store.commit(job.hash, job.step, job.reason, shared, job.metrics, extra=extra)
        except Exception as error:
            return {"error": f"rank 0 could not commit: {type(error).__name__}: {error}"}
        return {"record": record}

    def _gather(self, mine: Any) -> list[Any]:
        views: list[Any] = [None] * self.world_size
        dist.all_gather_object(views, mine, group=self._writes)
        return views

    def _broadcast(self, outcome: dict[str, Any]) -> dict[str, Any]:
        box = [outcome]
        dist.broadcast_object_list(box, src=dist.get_global_rank(self._writes, 0), group=self._writes)
        return box[0]

    # -- what the training thread copies ----------------------------------------------------------

    def log_path(self, path: Path) -> Path:
        return rank_log_path(path, self.rank)

    def state_dicts(
        self, models: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer]
    ) -> tuple[dict[str, Any], dict[str, Any], bool]:
        """The models' and optimizers' state dicts, and whether they are sharded (FSDP2).

        Sharded state is keyed by parameter name (``get_state_dict``), so DCP can load it into
        another world size; replicated (DDP) state is the plain ``state_dict()``, copied on rank 0
        only, since only rank 0 writes it.
        """
        if any(is_sharded(model) for model in models.values()):
            return (*sharded_state_dicts(models, optimizers), True)
        if self.rank != 0:
            return {}, {}, False  # replicated: rank 0 writes it; the others need not copy it
        return {n: m.state_dict() for n, m in models.items()}, {n: o.state_dict() for n, o in optimizers.items()}, False


class _Folder:
    """A checkpoint's DCP folder: written under a temporary name, renamed by rank 0 once complete."""

    def __init__(self, final: Path, token: str) -> None:
        self.final = final
        self.temp = final.with_name(f".{final.name}{TEMP_MARK}{token}")

    def move_into_place(self, store: Store) -> None:
        """Rename the complete folder into place (its name is free: see ``_free_stem``)."""
        store.fs.replace(self.temp, self.final)
        store.fs.fsync_dir(self.final.parent)


def _free_stem(store: Store, job: SaveJob) -> str:
    """``{hash}_step_{step:06d}`` unless a part or DCP folder of that name exists; then a fresh variant."""
    default = store.checkpoint_path(job.hash, job.step)
    taken = default.with_name(f"{default.stem}.rank0.pt").exists() or default.with_suffix("").exists()
    return f"{default.stem}.{uuid.uuid4().hex[:8]}" if taken else default.stem


def _describe_disagreement(views: list[dict[str, Any]], differing: list[str]) -> str:
    lines = [f"the {len(views)} ranks disagree on the experiment ({', '.join(differing)} differ):"]
    for view in views:
        lines.append(f"  rank {view['rank']}: step {view['step']}, hash {view['hash']}")
    keys = sorted(set().union(*(view["components"] for view in views)))
    for key in keys:
        values = [view["components"].get(key) for view in views]
        if any(value != values[0] for value in values):
            lines.append(f"  component {key} differs: " + _value_differences(values))
    if all(view["components"] == views[0]["components"] for view in views):
        decided = "; ".join(f"rank {v['rank']}: {v['decisions']}" for v in views)
        lines.append(f"  same components; the save decisions differ (checkpoint_frequency?): {decided}")
    lines.append("Every rank must register the same objects and make the same edits at the same steps.")
    return "\n".join(lines)


def _leaves(value: Any, path: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        found: dict[str, Any] = {}
        for key, sub in value.items():
            found.update(_leaves(sub, f"{path}.{key}" if path else str(key)))
        return found
    if isinstance(value, list):
        found = {}
        for index, sub in enumerate(value):
            found.update(_leaves(sub, f"{path}[{index}]"))
        return found
    return {path: value}


def _value_differences(values: list[Any]) -> str:
    leaves = [_leaves(value) for value in values]
    paths = sorted(set().union(*leaves))
    shown = []
    for path in paths:
        seen = [leaf.get(path, "<missing>") for leaf in leaves]
        if any(v != seen[0] for v in seen):
            shown.append(f"{path or '<value>'}: " + ", ".join(f"rank {r} {v!r}" for r, v in enumerate(seen)))
    return "; ".join(shown[:5]) + (f" (and {len(shown) - 5} more)" if len(shown) > 5 else "")


# -- resuming -----------------------------------------------------------------------------------


def load_parts(
    store: Store,
    hash: str,
    record: Mapping[str, Any],
    payload: dict[str, Any],
    coordinator: Coordinator | None,
    models: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
) -> dict[str, Any]:
    """Complete a multi-rank checkpoint's shared ``payload`` with this rank's part (and its shards).

    A rank beyond the saving world size (1 -> 2 ranks) has no part of its own: it keeps its RNG
    states and statefuls, with a warning. Sharded state is loaded into the live objects through DCP
    (resharded to this world size) and marked ``sharded`` so the caller does not load it again.
    """
    rank = coordinator.rank if coordinator is not None else 0
    own = [p for p in record.get("parts", ()) if p.get("kind") == RANK_PART and p.get("rank") == rank]
    if own:
        part = store.load(store.part_path(hash, own[0]["file"]))
        payload["rng"], payload["statefuls"] = part.get("rng", {}), part.get("statefuls", {})
    else:
        payload.pop("rng", None)
        payload.pop("statefuls", None)
        log.warning(
            "checkpoint %s has no part for rank %d (saved by %s ranks)", record["file"], rank, record.get("world_size")
        )
    if record.get("sharded"):
        folder = store.shard_folder(hash, dict(record))
        if folder is None:
            raise CheckpointError(f"sharded checkpoint {record['file']} lists no DCP folder among its parts")
        _load_sharded(folder, coordinator, models, optimizers)
        payload["sharded"] = True
    return payload


def _load_sharded(
    folder: Path,
    coordinator: Coordinator | None,
    models: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    owners = {name: _owner(optimizer, models) for name, optimizer in optimizers.items()}
    state: dict[str, Any] = {"models": {}, "optimizers": {}}
    for name, model in models.items():
        state["models"][name] = get_state_dict(model, [])[0]
    with _not_a_step(optimizers.values()):
        for name, optimizer in optimizers.items():
            state["optimizers"][name] = get_state_dict(models[owners[name]], optimizer)[1]
    group = coordinator._writes if coordinator is not None else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # a single process, on purpose
        dcp.load(state, storage_reader=dcp.FileSystemReader(str(folder)), process_group=group, no_dist=group is None)
    for name, model in models.items():
        set_state_dict(model, [], model_state_dict=state["models"][name], optim_state_dict={})
    for name, optimizer in optimizers.items():
        set_state_dict(models[owners[name]], optimizer, model_state_dict={}, optim_state_dict=state["optimizers"][name])


@contextmanager
def _not_a_step(optimizers: Iterable[torch.optim.Optimizer]) -> Iterator[None]:
    """Silence the optimizers' step hooks while ``get_state_dict`` prepares their state.

    For an optimizer with no state yet (a resume before the first step), ``get_state_dict`` runs
    a zero-lr ``optimizer.step()`` to create it. That is no training step: the system's hooks
    would count it, see the lr set to 0 and fork a hash of its own, so they are set aside.
    """
    saved = [(o, o._optimizer_step_pre_hooks, o._optimizer_step_post_hooks) for o in optimizers]
    for optimizer, _, _ in saved:
        optimizer._optimizer_step_pre_hooks, optimizer._optimizer_step_post_hooks = OrderedDict(), OrderedDict()
    try:
        yield
    finally:
        for optimizer, pre, post in saved:
            optimizer._optimizer_step_pre_hooks, optimizer._optimizer_step_post_hooks = pre, post


def _owner(optimizer: torch.optim.Optimizer, models: Mapping[str, nn.Module]) -> str:
    """The registered model whose parameters the optimizer trains (DCP keys optimizer state by FQN)."""
    first = optimizer.param_groups[0]["params"][0]
    for name, model in models.items():
        if any(p is first for p in model.parameters()):
            return name
    raise CheckpointError("an optimizer of a sharded checkpoint trains no registered model; register the model too")


def sharded_state_dicts(
    models: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """FQN-keyed state dicts (``get_state_dict``) of sharded models and their optimizers, for DCP."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_states = {name: get_state_dict(model, [])[0] for name, model in models.items()}
    with _not_a_step(optimizers.values()):
        optimizer_states = {
            name: get_state_dict(models[_owner(optimizer, models)], optimizer)[1]
            for name, optimizer in optimizers.items()
        }
    return model_states, optimizer_states
