"""Values users really pass: NumPy numbers and arrays, odd statefuls, other threads, local classes."""

from __future__ import annotations

import logging
import os
import threading

import numpy as np
import pytest
import torch
import yaml
from conftest import load, manifest_steps, mlp, train
from torch import nn

import weightslab_events as wle


def test_numpy_scalar_lr_and_hyperparameters_save_and_hash_like_python_numbers(make_system, root):
    lr = np.logspace(-3, -1, 3)[0]
    system = make_system(checkpoint_frequency=2)
    model = wle.register_model("model", mlp())
    optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=lr))
    wle.register_hyperparams("config", {"lr": lr, "dropout": np.float32(0.25), "layers": np.int64(3)})
    numpy_hash = system.experiment_hash
    train(model, optimizer, 4)
    system.close()
    assert manifest_steps(system, numpy_hash) == [(1, "start"), (2, "periodic"), (4, "periodic")]
    config = yaml.safe_load(system.store.config_path(numpy_hash).read_text())
    assert config["hyperparams:config"]["values"] == {"lr": 0.001, "dropout": 0.25, "layers": 3}
    load(system.store.checkpoint_path(numpy_hash, 4))

    system = wle.get_checkpoint_system(str(root / "plain"), checkpoint_frequency=2)
    model = wle.register_model("model", mlp())
    wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=float(lr)))
    wle.register_hyperparams("config", {"lr": float(lr), "dropout": 0.25, "layers": 3})
    assert system.experiment_hash == numpy_hash
    system.close()


def test_array_and_tensor_hyperparameters_never_raise_and_an_edit_of_their_contents_forks(setup):
    system, model, optimizer, config, _rec = setup(checkpoint_frequency=None)
    weights = np.array([0.1, 0.2, 0.7])
    config["class_weights"] = weights
    config["mask"] = torch.ones(4)
    train(model, optimizer, 2)
    before = system.experiment_hash
    config.raw["class_weights"][0] = 0.5  # in place, straight into the user's dict
    train(model, optimizer, 1)
    assert system.experiment_hash != before
    edited = system.experiment_hash
    config.raw["mask"][1] = 0.0
    train(model, optimizer, 1)
    assert system.experiment_hash != edited
    description = system.hashing.components["hyperparams:config"]["values"]["class_weights"]["!array"]
    assert description["dtype"] == "float64" and description["shape"] == [3] and len(description["sha256"]) == 16
    system.close()


class NumpySampler:
    """A sampler whose state is NumPy: a RandomState and a permutation array."""

    def __init__(self, seed: int) -> None:
        self.random = np.random.RandomState(seed)
        self.order = self.random.permutation(10)

    def state_dict(self) -> dict:
        return {"random": self.random.get_state(), "order": self.order, "epoch": np.int64(2)}

    def load_state_dict(self, state: dict) -> None:
        self.random.set_state(state["random"])
        self.order = state["order"]


def test_a_stateful_holding_numpy_round_trips_through_a_checkpoint(setup):
    system, model, optimizer, *_ = setup(checkpoint_frequency=3)
    sampler = wle.register_stateful("sampler", NumpySampler(7))
    train(model, optimizer, 3)
    expected_draws = sampler.random.rand(4)
    expected_order = sampler.order.copy()
    system.wait()
    sampler.random.rand(100)
    sampler.order = np.arange(10)
    assert system.resume(step=3) == 3
    assert np.array_equal(sampler.order, expected_order) and sampler.order.dtype == expected_order.dtype
    assert np.array_equal(sampler.random.rand(4), expected_draws)
    system.close()


def test_a_stateful_that_could_never_be_loaded_is_refused_at_registration(setup):
    class Opaque:
        def state_dict(self) -> dict:
            return {"cursor": {"handle": object()}}

        def load_state_dict(self, state: dict) -> None:
            pass

    setup()
    with pytest.raises(wle.UnsaveableStateError, match=r"'loader'.*\['cursor'\]\['handle'\].*builtins\.object"):
        wle.register_stateful("loader", Opaque())
    assert "loader" not in wle.get_checkpoint_system().ledger.names("stateful")


def test_edits_from_another_thread_never_raise_into_training_or_fail_a_save(setup):
    system, model, optimizer, config, _rec = setup(checkpoint_frequency=1)
    stop = threading.Event()
    stepped = threading.Event()
    errors: list[BaseException] = []
    wle.subscribe("step", lambda event: stepped.set())

    def editor() -> None:
        """A burst of edits while each step runs: the dict itself and the live mapping, keys added
        and removed. Paced by the steps (not a tight loop that would starve training of the GIL)."""
        index = 0
        try:
            while not stop.is_set():
                for _ in range(20):
                    config.raw[f"direct{index % 50}"] = index  # the user's dict itself
                    config[f"mapped{index % 50}"] = {"n": index}  # through the live mapping
                    config.raw.pop(f"direct{(index + 25) % 50}", None)
                    index += 1
                stepped.wait()
                stepped.clear()
        except BaseException as error:  # noqa: BLE001 - the test reports anything
            errors.append(error)

    thread = threading.Thread(target=editor)
    thread.start()
    try:
        train(model, optimizer, 60)
    finally:
        stop.set()
        stepped.set()
        thread.join()
    system.close()  # raises CheckpointError if any save failed
    assert not errors
    assert system.saver.take_failures() == []


def test_a_model_class_defined_in_a_function_warns_once_and_still_saves(make_system, caplog):
    class LocalNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    system = make_system(checkpoint_frequency=2)
    model = wle.register_model("model", LocalNet())
    optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    with caplog.at_level(logging.WARNING, logger="weightslab_events"):
        train(model, optimizer, 2)
        optimizer.param_groups[0]["lr"] = 0.05  # a second hash: a second architecture to write
        train(model, optimizer, 3)
        system.close()
    warnings = [r for r in caplog.records if "cannot be pickled" in r.getMessage()]
    assert len(warnings) == 1 and "LocalNet" in warnings[0].getMessage()
    for hash in system.store.hashes():
        assert system.store.records(hash)
        assert not system.store.architecture_path(hash, "pkl").exists()
        assert system.store.architecture_path(hash, "txt").is_file()


def test_a_relative_root_is_resolved_when_the_system_starts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    system = wle.get_checkpoint_system("runs", checkpoint_frequency=2)
    model = wle.register_model("model", mlp())
    optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    (tmp_path / "elsewhere").mkdir()
    os.chdir(tmp_path / "elsewhere")
    train(model, optimizer, 4)
    system.close()
    assert system.root == tmp_path / "runs"
    assert len(system.store.records(system.experiment_hash)) == 3
    assert not (tmp_path / "elsewhere" / "runs").exists()


@pytest.mark.parametrize("frequency", [True, False, 0, -3, 2.5, "10"])
def test_a_checkpoint_frequency_that_is_not_a_positive_integer_is_rejected(root, frequency):
    with pytest.raises(ValueError, match="checkpoint_frequency must be a positive integer"):
        wle.get_checkpoint_system(str(root), checkpoint_frequency=frequency)


def test_a_3000_deep_dict_gives_a_clear_error_naming_it(make_system):
    make_system()
    nested: dict = {"leaf": 1}
    for _ in range(3000):
        nested = {"inner": nested}
    with pytest.raises(wle.NotDescribableError, match=r"'deep\.inner\.inner.*nested more than 100 levels"):
        wle.register_hyperparams("deep", nested)


def test_get_checkpoint_system_returns_the_open_system_for_the_same_options_and_names_a_difference(root):
    system = wle.get_checkpoint_system(root, checkpoint_frequency=5, retention=wle.LatestN(2))
    assert wle.get_checkpoint_system(root, checkpoint_frequency=5, retention=wle.LatestN(2)) is system
    assert wle.get_checkpoint_system(str(root), 5, retention=wle.LatestN(2)) is system
    assert wle.get_checkpoint_system() is system
    with pytest.raises(wle.SystemOptionsError, match=r"checkpoint_frequency \(open: 5, asked: 10\)") as error:
        wle.get_checkpoint_system(root, checkpoint_frequency=10, retention=wle.LatestN(2))
    assert "retention" not in str(error.value)
    with pytest.raises(wle.SystemOptionsError, match="retention"):
        wle.get_checkpoint_system(root, checkpoint_frequency=5, retention=wle.LatestN(3))
    system.close()
