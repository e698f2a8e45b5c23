"""The examples run as a user runs them, and say what the README says they say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(script: str, tmp_path: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_quickstart_prints_the_experiment_tree(tmp_path):
    out = run("quickstart.py", tmp_path, "--root", str(tmp_path / "experiments"))
    tree = out.split("experiment tree:")[1]
    assert "<- lr 0.1 -> 0.02" in tree
    assert "<- layer fc1 out_features 128 -> 96; layer fc2 in_features 128 -> 96" in tree
    assert "<- froze fc1" in tree
    assert len([line for line in tree.strip().splitlines() if "checkpoints" in line]) == 4


def test_custom_handlers_example(tmp_path):
    out = run("custom_handlers.py", tmp_path, "--root", str(tmp_path / "demo"))
    assert "new experiment" in out and "after lr 0.01 -> 0.001" in out
    directories = [p.name for p in (tmp_path / "demo" / "checkpoints").iterdir()]
    announced = [line.split()[2] for line in out.splitlines() if line.startswith("new experiment")]
    assert sorted(announced) == sorted(directories), "one line per experiment directory"
    assert "failed: ZeroDivisionError" in out
    assert "uploaded 6 checkpoints" in out


def test_resume_after_crash_example(tmp_path):
    out = run("resume_after_crash.py", tmp_path, "--root", str(tmp_path / "crash"))
    assert "killed the child with SIGKILL" in out
    starts = [int(line.rsplit(" ", 1)[1]) for line in out.splitlines() if line.startswith("child: starting at step")]
    assert starts[0] == 0 and 0 < starts[1] < 300, "the restart resumed mid-run"
    assert "bitwise equal to the uninterrupted run: True" in out


def test_lightning_example_resumes_and_forks(tmp_path):
    out = run("lightning_fit.py", tmp_path, "--root", str(tmp_path / "lightning"))
    assert "first fit: ended at global step 16, epoch 2" in out
    assert "resumed fit: ended at global step 32, epoch 4" in out
    tree = out.split("experiment tree:")[1]
    assert "[4 checkpoints, steps 1-24]" in tree, "the resumed fit continued the first one's experiment"
    assert "[2 checkpoints, steps 25-32]  <- optimizer.lr 0.05 -> 0.01 (at step 25)" in tree


def test_huggingface_example_forks_on_an_optimizer_edit(tmp_path):
    out = run("huggingface_trainer.py", tmp_path, "--root", str(tmp_path / "hf"))
    assert "trained: global step 12, epoch 2" in out
    tree = out.split("experiment tree:")[1]
    assert "[2 checkpoints, steps 1-6]" in tree
    assert "[3 checkpoints, steps 7-12]  <- optimizer.weight_decay 0.01 -> 0 (at step 7)" in tree
