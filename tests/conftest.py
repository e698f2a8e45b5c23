"""Shared helpers: small real models, a training loop, and a fresh system per test."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import weightslab_events as wle
from weightslab_events import api
from weightslab_events.ledger import LEDGER
from weightslab_events.testing import Recorder


def close_all() -> None:
    system = api.current_system()
    if system is not None:
        try:
            system.close()
        except wle.CheckpointError:
            pass
    for subscription in list(api._subscriptions):
        subscription.close()
    LEDGER.clear()


@pytest.fixture(autouse=True)
def clean_process_state() -> Iterator[None]:
    close_all()
    logging.getLogger("weightslab_events").setLevel(logging.INFO)
    yield
    close_all()


def mlp(seed: int = 0, hidden: int = 16) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 3))


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(16, 8, generator=generator), torch.randint(0, 3, (16,), generator=generator)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, scheduler: Any = None) -> None:
    x, y = batch()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(loss.item())
            else:
                scheduler.step()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "experiments"


@pytest.fixture
def make_system(root: Path) -> Callable[..., wle.CheckpointSystem]:
    def make(**options: Any) -> wle.CheckpointSystem:
        options.setdefault("checkpoint_frequency", 10)
        return wle.get_checkpoint_system(str(root), **options)

    return make


@pytest.fixture
def setup(make_system: Callable[..., wle.CheckpointSystem]) -> Callable[..., tuple]:
    """A system with a registered MLP, SGD and hyperparameters; returns them and a recorder."""

    def make(**options: Any) -> tuple:
        system = make_system(**options)
        model = wle.register_model("model", mlp())
        optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
        config = wle.register_hyperparams("config", {"lr": 0.1, "batch_size": 16, "aug": {"flip": True}})
        recorder = Recorder(system.bus).__enter__()
        return system, model, optimizer, config, recorder

    return make


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def manifest_steps(system: wle.CheckpointSystem, hash: str) -> list[tuple[int, str]]:
    return [(r["step"], r["reason"]) for r in system.store.records(hash)]


def blocking_commit(system: wle.CheckpointSystem, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Make the writer hold each commit until the returned event is set (a slow disk, on demand)."""
    release = threading.Event()
    original = system.store.commit

    def slow(*args: Any, **kwargs: Any) -> dict:
        release.wait(30)
        return original(*args, **kwargs)

    monkeypatch.setattr(system.store, "commit", slow)
    return release


def run_helper(module: str, *args: str) -> str:
    """Run ``tests/helpers/<module>.py``'s ``main(args)`` in a fresh process, imported as a module.

    Imported rather than run as a script, so its classes have the same qualified names as in the
    test process (a run in either resumes the other's experiment). With ``--kill-at`` the helper
    SIGKILLs itself, and that is the exit expected.
    """
    helpers = Path(__file__).parent / "helpers"
    code = f"import sys; sys.path.insert(0, {str(helpers)!r}); import {module}; {module}.main(sys.argv[1:])"
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=180)
    expected = -signal.SIGKILL if "--kill-at" in args else 0
    assert result.returncode == expected, result.stderr[-3000:]
    return result.stdout
