"""``resume(hash=...)`` puts plain hyperparameters back and never damages the user's live objects."""

from __future__ import annotations

import math
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from conftest import batch
from torch import nn

import weightslab_events as wle


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x) ** 2


def run(root: Path, hyperparams: dict[str, Any], steps: int, resume_to: str | None = None) -> tuple[str, dict]:
    """Train a few steps with ``hyperparams`` (after resuming ``resume_to``); the hash and the live dict."""
    system = wle.get_checkpoint_system(str(root), checkpoint_frequency=2)
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    wle.register_model("model", model)
    wle.register_optimizer("opt", optimizer)
    config = wle.register_hyperparams("config", hyperparams)
    if resume_to is not None:
        system.resume(hash=resume_to)
    x, y = batch()
    for _ in range(steps):
        weight = torch.as_tensor(config["class_weight"], dtype=torch.float32)
        logits = config["act"](model(x).to(config["dtype"]).float())
        loss = config["loss"](logits, y) + nn.functional.cross_entropy(logits, y, weight=weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    hash = system.experiment_hash
    system.close()
    return hash, hyperparams


def values(**plain: Any) -> dict[str, Any]:
    return {
        "class_weight": np.array([0.2, 0.3, 0.5]),
        "loss": nn.CrossEntropyLoss(),
        "act": relu_squared,
        "schedule": lambda e: 0.9**e,
        "dtype": torch.float32,
        "data": PurePosixPath("/data/a"),
        "scale": torch.tensor([1.0, 2.0]),
        **plain,
    }


def test_resume_restores_plain_values_and_keeps_every_live_object(root: Path) -> None:
    stored_hash, _ = run(
        root,
        values(epochs=3, lr2=np.float32(0.5), shape=(2, 3), nested={"k": 1, "w": np.ones(2)}, inf=math.inf),
        steps=4,
    )
    live = values(epochs=9, lr2=np.float32(0.25), shape=(4, 4), nested={"k": 7, "w": np.zeros(2)}, inf=1.0, extra="x")
    objects = {key: live[key] for key in ("class_weight", "loss", "act", "schedule", "dtype", "data", "scale")}
    nested_array = live["nested"]["w"]

    run(root, live, steps=2, resume_to=stored_hash)  # training after the resume runs

    for key, obj in objects.items():
        assert live[key] is obj, f"{key} was replaced by {live[key]!r}"
    assert live["nested"]["w"] is nested_array
    assert live["epochs"] == 3 and type(live["epochs"]) is int
    assert live["lr2"] == np.float32(0.5) and type(live["lr2"]) is np.float32
    assert live["shape"] == (2, 3)
    assert live["nested"]["k"] == 1
    assert live["inf"] == math.inf
    assert "extra" not in live


def test_resume_into_equal_live_objects_keeps_the_stored_hash(root: Path) -> None:
    stored_hash, _ = run(root, values(epochs=3), steps=4)
    live = values(epochs=9)
    loss = live["loss"]

    hash_after, _ = run(root, live, steps=0, resume_to=stored_hash)

    assert hash_after == stored_hash
    assert live["loss"] is loss and live["epochs"] == 3
