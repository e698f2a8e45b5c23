"""DDP and FSDP2 jobs of real processes (gloo on CPU, loopback): killed, resumed, checked.

Each job is ``WORLD_SIZE`` processes of ``helpers/distributed_worker.py`` on a free port, as
torchrun would start them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

import weightslab_events as wle
from weightslab_events.eventlog import read_events
from weightslab_events.replay import replay
from weightslab_events.store import Store, sha256_of

WORKER = Path(__file__).parent / "helpers" / "distributed_worker.py"
STEPS = 20
JOB_TIMEOUT = 120

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")


@dataclass
class Job:
    """A job's ranks and the rendezvous store they share, hosted here as torchrun's agent hosts it.

    The store binds a free port itself (no port picked and released, so no race with another job)
    and outlives every rank, so a rank that exits first never takes the store from the others.
    """

    processes: list[subprocess.Popen[str]]
    store: torch.distributed.TCPStore


def launch(root: Path, world: int, *extra: str) -> Job:
    store = torch.distributed.TCPStore("127.0.0.1", 0, world, is_master=True, wait_for_workers=False)
    processes = []
    for rank in range(world):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(store.port),
            "TORCHELASTIC_USE_AGENT_STORE": "True",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
        }
        command = [sys.executable, str(WORKER), "--root", str(root), *extra]
        processes.append(
            subprocess.Popen(
                command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    return Job(processes, store)


def finish(job: Job, expect: int = 0) -> list[tuple[str, str]]:
    """Wait for every rank (bounded: a hang fails the test) and return each rank's (stdout, stderr)."""
    results = []
    processes = job.processes
    try:
        for process in processes:
            out, err = process.communicate(timeout=JOB_TIMEOUT)
            assert process.returncode == expect, f"rank exited with {process.returncode}:\n{err[-3000:]}"
            results.append((out, err))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


def run_job(root: Path, world: int, *extra: str) -> list[str]:
    return [out for out, _ in finish(launch(root, world, *extra))]


def kill_job_mid_run(root: Path, world: int, *extra: str) -> None:
    """Start the job, wait until every rank is past its pause step, SIGKILL every rank."""
    job = launch(root, world, "--steps", str(STEPS), "--pause-at", "12", *extra)
    processes = job.processes  # the job keeps its store alive until the ranks are gone
    try:
        for process in processes:
            assert process.stdout is not None
            for line in process.stdout:
                if line.startswith("paused"):
                    break
            else:
                raise AssertionError(f"a rank ended before pausing: {process.stderr.read() if process.stderr else ''}")
    finally:
        for process in processes:
            process.send_signal(signal.SIGKILL)
        for process in processes:
            process.wait(timeout=30)


def assert_bitwise_equal(a: object, b: object, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_bitwise_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_bitwise_equal(x, y, f"{where}[{index}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def finals(prefix: Path, world: int) -> list[dict]:
    return [torch.load(f"{prefix}.rank{rank}.pt", weights_only=True) for rank in range(world)]


def assert_committed_and_sound(root: Path, world: int) -> list[dict]:
    """verify is clean; every checkpoint lists one part per rank; returns the records."""
    store = Store(root)
    records = []
    for _, record, fault in store.verify():
        assert fault is None, str(fault)
        ranks = sorted(p["rank"] for p in record["parts"] if p["kind"] == "rank")
        assert ranks == list(range(world)) and record["world_size"] == world
        records.append(record)
    assert records, "the job must have committed checkpoints"
    return records


def assert_one_log_that_replays(root: Path) -> None:
    """Rank 0 writes events.jsonl once; rank 1 keeps its own log; both replay to the same decisions."""
    logs = root / "logs"
    assert sorted(p.name for p in logs.iterdir()) == ["events.jsonl", "events.rank1.jsonl"]
    recorded = read_events(logs / "events.jsonl")
    assert len({e.seq for e in recorded}) == len(recorded), "no duplicated events"
    decisions = [(e.data["hash"], e.step, e.data["reason"]) for e in recorded if e.type == "checkpoint_scheduled"]
    assert [(step, reason) for _, step, reason in decisions] == [
        (1, "start"),
        (5, "periodic"),
        (8, "fork"),
        (10, "periodic"),
        (15, "periodic"),
        (20, "periodic"),
    ]
    assert replay(logs / "events.jsonl").checkpoints == decisions
    other = read_events(logs / "events.rank1.jsonl")
    assert [(e.data["hash"], e.step, e.data["reason"]) for e in other if e.type == "checkpoint_scheduled"] == decisions


def assert_only_listed_files(root: Path) -> None:
    """Every checkpoint file on disk is listed (retention removed every part of what it deleted)."""
    store = Store(root)
    for hash in store.hashes():
        listed = {r["file"] for r in store.records(hash)} | {
            p["file"] for r in store.records(hash) for p in r.get("parts", ())
        }
        folder = store.exp_dir(hash) / "model"
        on_disk = {str(p.relative_to(folder)) for p in folder.rglob("*_step_*") if p.is_file()}
        on_disk |= {str(p.relative_to(folder)) for p in folder.rglob(".metadata")}
        assert on_disk == listed


def test_ddp_job_killed_and_resumed_ends_bitwise_equal_to_a_straight_run_on_every_rank(tmp_path):
    run_job(tmp_path / "straight", 2, "--steps", str(STEPS), "--keep", "1", "--out", str(tmp_path / "straight"))
    assert_one_log_that_replays(tmp_path / "straight")
    assert_only_listed_files(tmp_path / "straight")
    # A fresh rerun (other data, no resume) saves the same hash and steps: no committed part changes.
    straight_store = Store(tmp_path / "straight")
    committed_parts = {
        straight_store.part_path(hash, part["file"]): part["sha256"]
        for hash in straight_store.hashes()
        for record in straight_store.records(hash)
        for part in record["parts"]
    }
    run_job(tmp_path / "straight", 2, "--steps", "6", "--fresh")
    for path, digest in committed_parts.items():
        assert sha256_of(path) == digest, f"a rerun saving the same steps overwrote {path}"
    kill_job_mid_run(tmp_path / "killed", 2)
    records = assert_committed_and_sound(tmp_path / "killed", 2)

    store = Store(tmp_path / "killed")
    for hash in store.hashes():
        model_files = sorted(
            p.name for p in (store.exp_dir(hash) / "model").glob("*_step_*.pt") if ".rank" not in p.name
        )
        assert model_files == sorted(r["file"] for r in store.records(hash)), "one set of model files per checkpoint"
        for record in store.records(hash):
            part = torch.load(store.part_path(hash, record["parts"][1]["file"]), weights_only=True)
            assert set(part) >= {"rng", "statefuls"} and "models" not in part, "a rank's part holds only its own state"
    assert any(r["reason"] == "fork" for r in records), "the lr edit forked the experiment"

    outputs = run_job(tmp_path / "killed", 2, "--steps", str(STEPS), "--out", str(tmp_path / "resumed"))
    assert all(int(out.split()[1]) > 0 for out in outputs), f"every rank must resume, not start over: {outputs}"
    straight, resumed = finals(tmp_path / "straight", 2), finals(tmp_path / "resumed", 2)
    for rank in range(2):
        assert_bitwise_equal(straight[rank], resumed[rank], f"rank {rank}")
    assert_bitwise_equal(resumed[0]["model"], resumed[1]["model"], "the ranks' models")
    assert not torch.equal(resumed[0]["rng"], resumed[1]["rng"]), "each rank restored its own RNG state"
    assert Store(tmp_path / "killed").hashes() == Store(tmp_path / "straight").hashes(), "no hash of a resume's own"
    assert_committed_and_sound(tmp_path / "killed", 2)


def test_a_system_on_rank_0_alone_is_a_clear_error_there_and_no_rank_hangs(tmp_path):
    """Only rank 0 creates a system: it raises after the set-up wait; the other rank fails too, none hangs."""
    job = launch(tmp_path / "root", 2, "--steps", "5", "--only-rank-0", "--setup-timeout", "3")
    outcome = [(process.communicate(timeout=JOB_TIMEOUT), process.returncode) for process in job.processes]
    (_, rank_0_err), rank_0_code = outcome[0]
    assert rank_0_code == 3 and "not every rank did within 3 s" in rank_0_err, rank_0_err[-2000:]
    assert outcome[1][1] != 0, "rank 1's training fails once rank 0 is gone"


def test_a_system_created_before_init_process_group_refuses_registrations_on_every_rank(tmp_path):
    """Such a system cannot coordinate: its ranks would overwrite each other's files."""
    for _, err in finish(launch(tmp_path / "root", 2, "--steps", "1", "--system-first"), expect=3):
        assert "Create the system after init_process_group()" in err, err[-2000:]


@pytest.mark.parametrize(
    ("how", "component", "difference", "last_committed"),
    [
        ("register", "hyperparams:config", "batch_size: rank 0 16, rank 1 17", 0),
        ("edit", "optimizer:optimizer", "groups[0].lr: rank 0 0.01, rank 1 0.001", 1),
    ],
)
def test_ranks_that_disagree_all_get_a_clear_error_and_nothing_mixed_is_committed(
    tmp_path, how, component, difference, last_committed
):
    """Different registrations, or an edit on one rank only: every rank raises, none hangs."""
    results = finish(launch(tmp_path / "root", 2, "--steps", "8", "--disagree", how), expect=3)
    for rank, (_, err) in enumerate(results):
        assert f"component {component} differs" in err, f"rank {rank}: {err[-2000:]}"
        assert difference in err, f"rank {rank}: {err[-2000:]}"
    store = Store(tmp_path / "root")
    steps = [r["step"] for h in store.hashes() for r in store.records(h)]
    assert max(steps, default=0) <= last_committed, "only checkpoints taken before the disagreement may exist"


def test_fsdp2_job_killed_and_resumed_matches_a_straight_run_and_resumes_on_one_rank(tmp_path):
    run_job(tmp_path / "straight", 2, "--mode", "fsdp", "--steps", str(STEPS), "--out", str(tmp_path / "straight"))
    records = assert_committed_and_sound(tmp_path / "straight", 2)
    shards = {p["file"].split("/", 1)[1] for p in records[-1]["parts"] if p["kind"] != "rank"}
    assert shards == {"__0_0.distcp", "__1_0.distcp", ".metadata"}, "every DCP file is checksummed"

    kill_job_mid_run(tmp_path / "killed", 2, "--mode", "fsdp")
    assert_committed_and_sound(tmp_path / "killed", 2)
    outputs = run_job(
        tmp_path / "killed", 2, "--mode", "fsdp", "--steps", str(STEPS), "--out", str(tmp_path / "resumed")
    )
    assert all(int(out.split()[1]) > 0 for out in outputs), outputs
    straight, resumed = finals(tmp_path / "straight", 2), finals(tmp_path / "resumed", 2)
    for rank in range(2):
        assert_bitwise_equal(straight[rank], resumed[rank], f"rank {rank}")
    assert Store(tmp_path / "killed").hashes() == Store(tmp_path / "straight").hashes(), "no hash of a resume's own"

    # One rank resumes the two-rank checkpoint: DCP reshards it; rank 0's own RNG comes back.
    last = Store(tmp_path / "straight").records
    (child,) = [h for h in Store(tmp_path / "straight").hashes() if last(h)[-1]["step"] == STEPS]
    extra = ("--mode", "fsdp", "--steps", str(STEPS), "--resume-hash", child, "--out", str(tmp_path / "one"))
    outputs = run_job(tmp_path / "straight", 1, *extra)
    assert outputs[0].startswith(f"ready {STEPS}")
    (one,) = finals(tmp_path / "one", 1)
    assert_bitwise_equal(straight[0], one, "one rank")

    # A damaged shard fails verify, and resume falls back to the previous good checkpoint; here in
    # a single process, where DCP loads the two ranks' shards into a plain model.
    store = Store(tmp_path / "straight")
    shard = store.shard_folder(child, store.records(child)[-1]) / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert [f.file for _, _, f in store.verify() if f] == [shard]
    system = wle.get_checkpoint_system(str(tmp_path / "straight"), checkpoint_frequency=None)
    torch.manual_seed(0)
    model = wle.register_model("model", nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 4)))
    wle.register_optimizer("optimizer", torch.optim.Adam(model.parameters(), lr=1e-2))
    wle.register_hyperparams("config", {"batch_size": 16})
    wle.register_stateful("sampler", torch.Generator())
    assert system.resume(child) == STEPS - 5
    assert not torch.equal(model[0].weight, straight[0]["model"]["0.weight"]), "step 15, not the damaged 20"
