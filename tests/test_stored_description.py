"""What a hash's folder stores describes exactly that hash, however fast the next edit comes."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from conftest import batch, mlp
from torch import nn

import weightslab_events as wle
from weightslab_events.fingerprint import canonical, experiment_hash


def stored_components(folder: Path) -> dict:
    hash = folder.name
    config = yaml.safe_load((folder / "hp" / f"{hash}_config.yaml").read_text(encoding="utf-8")) or {}
    models = json.loads((folder / "model" / f"{hash}_architecture.json").read_text(encoding="utf-8"))
    return {**config, **models}


def assert_every_folder_hashes_to_its_name(root: Path) -> int:
    """Recompute each hash from its stored description, and from each checkpoint's hyperparameters."""
    folders = sorted(p for p in (root / "checkpoints").iterdir() if p.is_dir())
    for folder in folders:
        components = stored_components(folder)
        assert experiment_hash(components) == folder.name, f"{folder.name}: stored description hashes elsewhere"
        for path in sorted((folder / "model").glob("*.pt")):
            saved = torch.load(path, weights_only=True)["hyperparams"]
            with_saved = {
                **components,
                **{f"hyperparams:{n}": {"kind": "hyperparams", "values": canonical(v)} for n, v in saved.items()},
            }
            assert experiment_hash(with_saved) == folder.name, f"{path.name}: hyperparameters of another hash"
    return len(folders)


def train_with(root: Path, before_each_step: Callable[[int, nn.Sequential, dict], None], steps: int) -> None:
    system = wle.get_checkpoint_system(str(root), checkpoint_frequency=50)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    wle.register_model("model", model)
    wle.register_optimizer("opt", optimizer)
    config = wle.register_hyperparams("config", {"warm": 0})
    x, y = batch()
    for step in range(steps):
        before_each_step(step, model, config)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    system.close()


def test_a_hyperparameter_edit_on_every_step_stores_each_hashs_own_config(root: Path) -> None:
    def edit(step: int, model: nn.Sequential, config: dict) -> None:
        config["warm"] = step + 1

    train_with(root, edit, 8)
    assert assert_every_folder_hashes_to_its_name(root) == 8


def test_freeze_unfreeze_and_reset_on_consecutive_steps_store_each_hashs_own_architecture(root: Path) -> None:
    edits = [
        lambda m: wle.freeze(m[0]),
        lambda m: wle.freeze(m[2]),
        lambda m: wle.unfreeze(m[0]),
        lambda m: wle.reset(m[4]),
        lambda m: wle.freeze(m[4]),
        lambda m: wle.unfreeze(m[2]),
    ]

    def edit(step: int, model: nn.Sequential, config: dict) -> None:
        if 1 <= step <= len(edits):
            edits[step - 1](model)

    train_with(root, edit, 7)
    assert assert_every_folder_hashes_to_its_name(root) == 7


def test_edits_from_another_thread_store_hyperparameters_that_match_each_hash(root: Path) -> None:
    system = wle.get_checkpoint_system(str(root), checkpoint_frequency=2)
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    wle.register_model("model", model)
    wle.register_optimizer("opt", optimizer)
    config = wle.register_hyperparams("config", {"a": 1})
    stepped = threading.Semaphore(0)
    steps = 20

    def editor() -> None:  # a burst of edits per step, racing the next step (a tight loop starves training)
        for burst in range(steps):
            stepped.acquire()
            for i in range(50):
                config[f"j{i % 20}"] = burst * 50 + i

    thread = threading.Thread(target=editor)
    thread.start()
    try:
        x, y = batch()
        for _ in range(steps):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            stepped.release()
    finally:
        thread.join()
    system.close()
    assert assert_every_folder_hashes_to_its_name(root) >= 2
