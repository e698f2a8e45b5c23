"""NumPy values as an optimizer's lr: saved, hashed and resumed like the number they hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from conftest import batch
from torch import nn

import weightslab_events as wle


def run_with_lr_edit(root: Path, new_lr: Any) -> tuple[str, float]:
    """Four steps, the lr set to ``new_lr`` after step 2; the final hash and the stored lr."""
    system = wle.get_checkpoint_system(str(root), checkpoint_frequency=2)
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    wle.register_model("model", model)
    wle.register_optimizer("opt", optimizer)
    x, y = batch()
    for step in range(4):
        if step == 2:
            optimizer.param_groups[0]["lr"] = new_lr
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    hash = system.experiment_hash
    system.close()  # raises CheckpointError if a save failed
    assert hash is not None
    latest = sorted((root / "checkpoints" / hash / "model").glob("*.pt"))[-1]
    stored = torch.load(latest, weights_only=True)["optimizers"]["opt"]["param_groups"][0]["lr"]
    return hash, stored


def test_a_zero_dimensional_array_lr_is_saved_and_hashed_like_its_number(tmp_path: Path) -> None:
    array_hash, array_lr = run_with_lr_edit(tmp_path / "array", np.array(0.05))
    float_hash, float_lr = run_with_lr_edit(tmp_path / "float", 0.05)
    assert array_lr == float_lr == 0.05
    assert array_hash == float_hash


def train_float32_lr(root: Path, until: int, resume: bool = False) -> tuple[str, Any]:
    """SGD with an ``np.float32`` lr, ``lr *= 0.3`` at step 6; train until step ``until``."""
    system = wle.get_checkpoint_system(str(root), checkpoint_frequency=2, resume=resume)
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=np.float32(0.05), momentum=0.9)
    wle.register_model("model", model)
    wle.register_optimizer("opt", optimizer)
    x, y = batch()
    while system.step < until:
        if system.step == 6:
            optimizer.param_groups[0]["lr"] *= 0.3
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    hash, lr = system.experiment_hash, optimizer.param_groups[0]["lr"]
    system.close()
    assert hash is not None
    return hash, lr


def test_a_resumed_float32_lr_keeps_its_type_and_a_relative_edit_forks_like_the_straight_run(tmp_path: Path) -> None:
    straight_hash, straight_lr = train_float32_lr(tmp_path / "straight", until=10)

    train_float32_lr(tmp_path / "resumed", until=4)
    resumed_hash, resumed_lr = train_float32_lr(tmp_path / "resumed", until=10, resume=True)

    assert type(resumed_lr) is type(straight_lr) is np.float32
    assert resumed_lr == straight_lr
    assert resumed_hash == straight_hash
