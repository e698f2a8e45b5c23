"""Real processes killed with SIGKILL while they save; restarted runs resume exactly."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from weightslab_events.store import TEMP_MARK, Store

WORKER = Path(__file__).parent / "helpers" / "crash_worker.py"
KILL_TRIALS = 20


def start_worker(root: Path, steps: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), "--root", str(root), "--steps", str(steps), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_worker(root: Path, steps: int, *extra: str) -> str:
    process = start_worker(root, steps, *extra)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return out


def kill_while_saving(root: Path, steps: int, delay: float, *extra: str) -> int:
    """Start a worker, wait until it has committed a checkpoint, let it save on for ``delay``
    seconds and SIGKILL it. Returns the last step the worker reported as committed.

    Waiting for a reported commit (not a fixed time) makes every trial kill a process that is
    in the middle of saving, however loaded the machine is.
    """
    process = start_worker(root, steps, "--announce-saves", *extra)
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("ready"), process.stderr.read() if process.stderr else line
    line = process.stdout.readline()
    assert line.startswith("saved"), process.stderr.read() if process.stderr else line
    time.sleep(delay)  # a random moment of saving, not a synchronisation
    process.send_signal(signal.SIGKILL)
    out, _ = process.communicate(timeout=30)
    whole_lines = (line + out).split("\n")[:-1]  # the kill may cut the last line short
    return max(int(text.split()[1]) for text in whole_lines if text.startswith("saved "))


def assert_store_is_sound(root: Path) -> set[int]:
    """Every committed checkpoint verifies and loads; no temporary is listed. Returns their steps."""
    store = Store(root)
    steps = set()
    for hash, record, fault in store.verify():
        assert fault is None, str(fault)
        assert TEMP_MARK not in record["file"]
        payload = torch.load(store.file_of(hash, record), weights_only=True)
        assert payload["step"] == record["step"] and payload["experiment_hash"] == hash
        steps.add(record["step"])
    return steps


def final_state(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def assert_bitwise_equal(a: object, b: object) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            assert_bitwise_equal(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_bitwise_equal(x, y)
    else:
        assert a == b


def test_killed_and_restarted_run_ends_bitwise_equal_to_a_straight_run(tmp_path):
    steps = 40
    straight = tmp_path / "straight.pt"
    run_worker(tmp_path / "a", steps, "--out", str(straight))
    kill_while_saving(tmp_path / "b", steps, 0.6, "--width", "64")
    resumed_from = assert_store_is_sound(tmp_path / "b")
    assert resumed_from, "the killed run must have committed something"
    restarted = tmp_path / "restarted.pt"
    out = run_worker(tmp_path / "b", steps, "--out", str(restarted))
    assert out.startswith("ready ") and int(out.split()[1]) > 0, "the restart must resume, not start over"
    assert_bitwise_equal(final_state(straight), final_state(restarted))


def test_sigkill_at_random_moments_during_saves_never_corrupts(tmp_path):
    """At least 20 kills while a wide model saves every step; each time the store is sound."""
    rng = random.Random(20261128)
    for trial in range(KILL_TRIALS):
        root = tmp_path / f"trial{trial}"
        last_reported = kill_while_saving(root, 10_000, rng.uniform(0.05, 0.8), "--width", "2048")
        committed = assert_store_is_sound(root)
        assert last_reported in committed, f"step {last_reported} was reported saved but is not listed: {committed}"
        if trial % 4 == 0:
            # A restart resumes from whatever the kill left (and clears its temporaries).
            out = run_worker(root, 1, "--width", "2048")
            assert int(out.split()[1]) >= last_reported
            assert not list(root.rglob(f"*{TEMP_MARK}*")), "stale temporaries are removed at start-up"
