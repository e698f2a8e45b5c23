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


def kill_while_saving(root: Path, steps: int, delay: float, *extra: str) -> None:
    """Start a worker, wait until it trains, let it run ``delay`` seconds and SIGKILL it."""
    process = start_worker(root, steps, *extra)
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("ready"), process.stderr.read() if process.stderr else line
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def assert_store_is_sound(root: Path) -> int:
    """Every committed checkpoint verifies and loads; no temporary is listed. Returns the count."""
    store = Store(root)
    count = 0
    for hash, record, fault in store.verify():
        assert fault is None, str(fault)
        assert TEMP_MARK not in record["file"]
        payload = torch.load(store.file_of(hash, record), weights_only=True)
        assert payload["step"] == record["step"] and payload["experiment_hash"] == hash
        count += 1
    return count


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
    assert resumed_from > 0, "the killed run must have committed something"
    restarted = tmp_path / "restarted.pt"
    out = run_worker(tmp_path / "b", steps, "--out", str(restarted))
    assert out.startswith("ready ") and int(out.split()[1]) > 0, "the restart must resume, not start over"
    assert_bitwise_equal(final_state(straight), final_state(restarted))


def test_sigkill_at_random_moments_during_saves_never_corrupts(tmp_path):
    """At least 20 kills while a wide model saves every step; each time the store is sound."""
    rng = random.Random(20261128)
    committed = []
    for trial in range(KILL_TRIALS):
        root = tmp_path / f"trial{trial}"
        kill_while_saving(root, 10_000, rng.uniform(0.05, 0.8), "--width", "2048")
        committed.append(assert_store_is_sound(root))
        if trial % 4 == 0 and committed[-1]:
            # A restart resumes from whatever the kill left (and clears its temporaries).
            out = run_worker(root, 1, "--width", "2048")
            assert int(out.split()[1]) >= 1
            assert not list(root.rglob(f"*{TEMP_MARK}*")), "stale temporaries are removed at start-up"
    assert sum(1 for c in committed if c) >= KILL_TRIALS // 2, f"too few trials committed anything: {committed}"
