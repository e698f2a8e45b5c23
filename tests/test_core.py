"""The core promise: register, train normally, get per-experiment checkpoints."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest
import torch
from conftest import batch, blocking_commit, load, manifest_steps, mlp, train
from torch import nn

import weightslab_events as wle

REQUIRED_KEYS = {
    "step",
    "experiment_hash",
    "models",
    "optimizers",
    "schedulers",
    "hyperparams",
    "rng",
    "reason",
    "format_version",
}


def test_training_as_usual_saves_periodic_checkpoints_in_the_layout(setup, root):
    system, model, optimizer, _config, _rec = setup(checkpoint_frequency=10)
    h = system.experiment_hash
    train(model, optimizer, 25)
    assert system.step == 25
    system.wait()
    exp = root / "checkpoints" / h
    assert (exp / "model" / f"{h}_step_000010.pt").is_file()
    assert (exp / "model" / f"{h}_step_000020.pt").is_file()
    assert (exp / "model" / f"{h}_architecture.pkl").is_file()
    assert "Linear(in_features=8" in (exp / "model" / f"{h}_architecture.txt").read_text()
    assert (exp / "hp" / f"{h}_config.yaml").is_file()
    assert (exp / "data").is_dir() and (root / "data").is_dir() and (root / "logs" / "events.jsonl").is_file()
    payload = load(exp / "model" / f"{h}_step_000020.pt")
    assert REQUIRED_KEYS <= set(payload)
    assert payload["step"] == 20 and payload["experiment_hash"] == h and payload["reason"] == "periodic"
    assert payload["hyperparams"]["config"]["batch_size"] == 16
    system.close()
    assert manifest_steps(system, h) == [(1, "start"), (10, "periodic"), (20, "periodic"), (25, "final")]
    final = load(exp / "model" / f"{h}_step_000025.pt")
    assert torch.equal(final["models"]["model"]["0.weight"], model[0].weight.detach())


def test_checkpoint_weights_match_the_model_at_that_step(setup, root):
    system, model, optimizer, *_ = setup(checkpoint_frequency=5)
    train(model, optimizer, 5)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, optimizer, 2)
    system.wait()
    saved = load(system.store.checkpoint_path(system.experiment_hash, 5))["models"]["model"]
    assert all(torch.equal(saved[k], expected[k]) for k in expected)


def test_a_mutation_right_after_a_save_does_not_leak_into_the_file(setup):
    system, model, optimizer, *_ = setup(checkpoint_frequency=3)
    train(model, optimizer, 3)
    before = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1000.0)  # the very next thing after the step that saved
    system.wait()
    saved = load(system.store.checkpoint_path(system.experiment_hash, 3))["models"]["model"]["0.weight"]
    assert torch.equal(saved, before)


def test_optimizer_step_returns_before_the_write(setup, monkeypatch):
    system, model, optimizer, *_ = setup(checkpoint_frequency=3)
    train(model, optimizer, 1)
    system.wait()
    release = blocking_commit(system, monkeypatch)
    train(model, optimizer, 3)  # steps 2-4: the save of step 3 is still being written
    assert system.step == 4 and system.saver.pending() == 1
    release.set()
    system.wait()
    assert (3, "periodic") in manifest_steps(system, system.experiment_hash)


def test_get_checkpoint_system_is_the_process_system_and_fresh_after_close(make_system, root):
    first = make_system()
    assert wle.get_checkpoint_system() is first
    with pytest.raises(RuntimeError, match="already open"):
        wle.get_checkpoint_system(str(root), checkpoint_frequency=3)
    first.close()
    with wle.get_checkpoint_system(str(root), checkpoint_frequency=3) as second:
        assert second is not first
    assert wle.current_system() is None


def test_objects_registered_before_the_system_are_picked_up(root):
    model = wle.register_model("model", mlp())
    wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    system = wle.get_checkpoint_system(str(root), checkpoint_frequency=5)
    assert system.experiment_hash is not None
    train(model, wle.get_optimizer("optimizer"), 5)
    system.wait()
    assert manifest_steps(system, system.experiment_hash)[-1] == (5, "periodic")


def test_getters_and_unregister(setup):
    system, model, optimizer, config, rec = setup()
    assert wle.get_model("model") is model and wle.get_optimizer("optimizer") is optimizer
    assert wle.get_hyperparams("config")["lr"] == 0.1
    before = system.experiment_hash
    wle.unregister("config")
    assert rec.of_type("unregistered")[-1].data["name"] == "config"
    assert system.experiment_hash != before
    with pytest.raises(KeyError, match="config"):
        wle.get_hyperparams("config")


def test_registering_a_name_twice_replaces_it_and_is_an_event(setup):
    system, model, optimizer, config, rec = setup()
    before = system.experiment_hash
    bigger = wle.register_model("model", mlp(hidden=32))
    event = rec.of_type("model_registered")[-1]
    assert event.data["replaced"] is True
    assert wle.get_model("model") is bigger and system.experiment_hash != before


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", "x" * 200, None])
def test_names_that_could_escape_the_root_are_refused(make_system, name):
    make_system()
    with pytest.raises(wle.InvalidNameError, match="invalid model name"):
        wle.register_model(name, mlp())


def test_a_value_with_a_memory_address_is_a_clear_error_naming_the_key(make_system):
    make_system()

    class Opaque:
        pass

    with pytest.raises(wle.NotDescribableError, match=r"'config\.nested\.thing'"):
        wle.register_hyperparams("config", {"nested": {"thing": Opaque()}})


def test_explicit_step_api_drives_periodic_saves_without_double_saves(setup):
    system, model, optimizer, *_ = setup(checkpoint_frequency=10)
    x, y = batch()
    for user_step in range(100, 131):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        system.checkpoint_on_step(user_step)
    system.wait()
    assert system.step == 130
    steps = manifest_steps(system, system.experiment_hash)
    assert [s for s, r in steps if r == "periodic"] == [100, 110, 120, 130]
    assert len({s for s, _ in steps}) == len(steps)


def test_explicit_change_calls_save_at_once(setup):
    system, model, optimizer, *_ = setup(checkpoint_frequency=None)
    train(model, optimizer, 3)
    system.checkpoint_on_model_change()
    train(model, optimizer, 1)
    system.checkpoint_on_config_change()
    train(model, optimizer, 1)
    system.checkpoint_on_state_change("pruned")
    system.wait()
    assert manifest_steps(system, system.experiment_hash) == [
        (1, "start"),
        (3, "model_change"),
        (4, "config_change"),
        (5, "state_change:pruned"),
    ]


def test_same_configuration_same_hash_in_another_process(setup):
    system, *_ = setup()
    script = textwrap.dedent(
        """
        import sys, torch, tempfile
        sys.path.insert(0, "tests")
        import weightslab_events as wle
        from conftest import mlp
        system = wle.get_checkpoint_system(tempfile.mkdtemp(), checkpoint_frequency=10)
        model = wle.register_model("model", mlp(seed=123))
        wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
        wle.register_hyperparams("config", {"aug": {"flip": True}, "batch_size": 16, "lr": 0.1})
        print(system.experiment_hash)
        system.close()
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == system.experiment_hash


def test_lazy_modules_do_not_crash_the_hash(make_system):
    system = make_system()
    model = wle.register_model("model", nn.Sequential(nn.LazyLinear(4), nn.ReLU(), nn.Linear(4, 2)))
    assert system.experiment_hash is not None
    model(torch.randn(2, 5))
    optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    loss = model(torch.randn(2, 5)).sum()
    loss.backward()
    optimizer.step()
    assert system.step == 1


def test_edits_from_another_thread_while_training(setup):
    """A UI thread edits while the training thread trains: no deadlock, no torn snapshot."""
    system, model, optimizer, config, rec = setup(checkpoint_frequency=5)
    stop = threading.Event()
    errors: list[BaseException] = []

    def ui() -> None:
        try:
            for i in range(30):
                config["batch_size"] = 16 + i % 3
                optimizer.param_groups[0]["weight_decay"] = (i % 2) * 1e-4
            stop.set()
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    thread = threading.Thread(target=ui)
    thread.start()
    x, y = batch()
    while not stop.is_set() or thread.is_alive():
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    thread.join(10)
    train(model, optimizer, 2)
    system.wait()
    assert not errors and not thread.is_alive()
    for hash in system.store.hashes():
        for record in system.store.records(hash):
            payload = load(system.store.file_of(hash, record))
            assert payload["experiment_hash"] == hash


def test_with_several_optimizers_the_first_drives_steps_unless_configured(make_system):
    system = make_system(checkpoint_frequency=None)
    model = wle.register_model("model", mlp())
    head = wle.register_optimizer("head", torch.optim.SGD(model[2].parameters(), lr=0.1))
    body = wle.register_optimizer("body", torch.optim.SGD(model[0].parameters(), lr=0.1))
    x, y = batch()
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(x), y)
        head.zero_grad()
        body.zero_grad()
        loss.backward()
        head.step()
        body.step()
        body.step()  # an extra step of the second optimizer does not count
    assert system.step == 3
    system.close()

    system = make_system(checkpoint_frequency=None, step_optimizer="body")
    model = wle.register_model("model", mlp())
    head = wle.register_optimizer("head", torch.optim.SGD(model[2].parameters(), lr=0.1))
    body = wle.register_optimizer("body", torch.optim.SGD(model[0].parameters(), lr=0.1))
    for _ in range(2):
        head.step()
        body.step()
        body.step()
    assert system.step == 4
