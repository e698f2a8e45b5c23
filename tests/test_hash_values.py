"""Distinct experiments get distinct hashes: modules, paths, dtypes and sets keep their identity."""

from __future__ import annotations

import itertools
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import weightslab_events as wle


class FocalLoss(nn.Module):
    def __init__(self, alpha: float, gamma: float = 2.0) -> None:
        super().__init__()
        self.alpha = alpha
        self.gamma = gamma


class Scaled(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.factor = factor


def hash_of(root: Path, hyperparams: dict[str, Any] | None = None, model: nn.Module | None = None) -> str:
    system = wle.get_checkpoint_system(str(root))
    model = model if model is not None else nn.Linear(4, 4)
    wle.register_model("model", model)
    wle.register_optimizer("opt", torch.optim.SGD(model.parameters(), lr=0.1))
    if hyperparams is not None:
        wle.register_hyperparams("config", hyperparams)
    hash = system.experiment_hash
    system.close()
    assert hash is not None
    return hash


DISTINCT_HYPERPARAMETERS = {
    "loss": [
        nn.CrossEntropyLoss(),
        nn.CrossEntropyLoss(label_smoothing=0.1),
        nn.CrossEntropyLoss(weight=torch.tensor([1.0, 9.0])),
        nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0])),
        FocalLoss(0.25),
        FocalLoss(0.5),
        FocalLoss(0.25, gamma=1.0),
        "CrossEntropyLoss()",
    ],
    "path": [PurePosixPath("/data/a"), "PurePosixPath('/data/a')", "/data/a"],
    "dtype": [torch.float16, "torch.float16", torch.bfloat16],
    "ids": [{1, 2}, [1, 2], (1, 3)],
}


@pytest.mark.parametrize("key", sorted(DISTINCT_HYPERPARAMETERS))
def test_distinct_hyperparameter_values_give_distinct_hashes(tmp_path: Path, key: str) -> None:
    candidates = DISTINCT_HYPERPARAMETERS[key]
    hashes = [hash_of(tmp_path / f"r{i}", {key: value}) for i, value in enumerate(candidates)]
    for (a, ha), (b, hb) in itertools.combinations(zip(candidates, hashes, strict=True), 2):
        assert ha != hb, f"{a!r} and {b!r} got the same hash"


def test_equal_modules_and_numpy_settings_hash_alike_across_instances(tmp_path: Path) -> None:
    assert hash_of(tmp_path / "a", {"loss": FocalLoss(0.25)}) == hash_of(tmp_path / "b", {"loss": FocalLoss(0.25)})
    assert hash_of(tmp_path / "c", {"loss": FocalLoss(np.float64(0.25))}) == hash_of(
        tmp_path / "d", {"loss": FocalLoss(0.25)}
    )


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (lambda: nn.MultiheadAttention(4, 2, dropout=0.0), lambda: nn.MultiheadAttention(4, 2, dropout=0.3)),
        (lambda: Scaled(2.0), lambda: Scaled(3.0)),
    ],
    ids=["MultiheadAttention dropout", "custom module attribute"],
)
def test_module_attributes_inside_the_model_are_part_of_the_hash(tmp_path: Path, first: Any, second: Any) -> None:
    assert hash_of(tmp_path / "a", model=first()) != hash_of(tmp_path / "b", model=second())


def test_eval_mode_is_not_another_experiment(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1))
    trained = hash_of(tmp_path / "a", model=model)
    model.eval()
    assert hash_of(tmp_path / "b", model=model) == trained
