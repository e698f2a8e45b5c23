"""Restoring into an optimizer of another class or layout is refused before anything is touched."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import mlp, train
from torch import nn

import weightslab_events as wle

Make = Callable[[nn.Module], torch.optim.Optimizer]


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def adam(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=0.01)


def two_groups(model: nn.Module) -> torch.optim.Optimizer:
    first, *rest = list(model.parameters())
    return torch.optim.SGD([{"params": [first]}, {"params": rest}], lr=0.1, momentum=0.9)


def trained_root(root: Path, make: Make) -> str:
    system = wle.get_checkpoint_system(str(root), checkpoint_frequency=2)
    model = mlp()
    optimizer = make(model)
    wle.register_model("model", model)
    wle.register_optimizer("opt", optimizer)
    train(model, optimizer, 4)
    hash = system.experiment_hash
    system.close()
    assert hash is not None
    return hash


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    ("saved_with", "restored_into", "named"),
    [(sgd, adam, "torch.optim.adam.Adam"), (adam, sgd, "torch.optim.sgd.SGD"), (sgd, two_groups, "param group")],
    ids=["SGD into Adam", "Adam into SGD", "another group layout"],
)
def test_resume_into_another_optimizer_is_refused_and_touches_nothing(
    root: Path, saved_with: Make, restored_into: Make, named: str
) -> None:
    hash = trained_root(root, saved_with)
    system = wle.get_checkpoint_system(str(root), checkpoint_frequency=2)
    model = mlp(seed=5)
    optimizer = restored_into(model)
    wle.register_model("model", model)
    wle.register_optimizer("opt", optimizer)
    before, optimizer_before = weights(model), optimizer.state_dict()

    with pytest.raises(wle.OptimizerMismatchError, match=named) as raised:
        system.resume(hash=hash, step=4)

    assert "'opt'" in str(raised.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert optimizer.state_dict() == optimizer_before
    assert system.step == 0
    system.close()


def test_root_restore_into_another_optimizer_is_refused_and_touches_nothing(root: Path) -> None:
    hash = trained_root(root, sgd)
    model = mlp(seed=5)
    optimizer = adam(model)
    before = weights(model)

    with pytest.raises(wle.OptimizerMismatchError, match="'opt'"):
        wle.open_root(root).restore(hash, model=model, optimizer=optimizer)

    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert len(optimizer.state) == 0
