"""Every row of the change table: detected without explicit calls, with the right signal."""

from __future__ import annotations

import pytest
import torch
from conftest import load, manifest_steps, mlp, train
from torch import nn

import weightslab_events as wle


def hashes(rec) -> list[str]:
    return [e.data["new_hash"] for e in rec.of_type("hash_changed")]


def test_hyperparameter_edit_through_the_mapping_forks_at_once_nested_too(setup):
    system, model, optimizer, config, rec = setup()
    before = system.experiment_hash
    config["aug"]["flip"] = False
    event = rec.of_type("hyperparams_changed")[-1]
    assert (event.data["key"], event.data["old"], event.data["new"]) == ("aug.flip", True, False)
    assert system.experiment_hash != before
    assert wle.get_hyperparams("config").raw["aug"]["flip"] is False
    train(model, optimizer, 1)  # the new experiment is announced where it takes effect
    assert rec.of_type("hash_changed")[-1].data["new_hash"] == system.experiment_hash


def test_direct_edit_of_the_registered_dict_is_found_by_the_next_step(make_system):
    system = make_system()
    raw = {"lr": 0.1, "nested": {"depth": 2}}
    model = wle.register_model("model", mlp())
    optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    wle.register_hyperparams("config", raw)
    before = system.experiment_hash
    raw["nested"]["depth"] = 3
    assert system.experiment_hash == before
    train(model, optimizer, 1)
    assert system.experiment_hash != before


def test_user_param_group_edit_forks_by_the_next_step(setup):
    system, model, optimizer, config, rec = setup()
    train(model, optimizer, 2)
    before = system.experiment_hash
    optimizer.param_groups[0]["lr"] = 0.01
    train(model, optimizer, 1)
    event = rec.of_type("optimizer_param_changed")[-1]
    assert (event.data["key"], event.data["old"], event.data["new"], event.data["source"]) == ("lr", 0.1, 0.01, "user")
    assert system.experiment_hash != before


def test_add_param_group_forks(make_system):
    system = make_system()
    model = wle.register_model("model", mlp())
    optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model[0].parameters(), lr=0.1))
    train(model, optimizer, 1)
    before = system.experiment_hash
    optimizer.add_param_group({"params": model[2].parameters(), "lr": 0.01})
    train(model, optimizer, 1)
    assert system.experiment_hash != before


SCHEDULERS = {
    "StepLR": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
    "CosineAnnealingLR": lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10),
    "OneCycleLR": lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=50),
    "ReduceLROnPlateau": lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5),
}


@pytest.mark.parametrize("registered", [True, False], ids=["registered", "unregistered"])
@pytest.mark.parametrize("kind", list(SCHEDULERS))
def test_scheduler_moves_never_fork(setup, kind, registered):
    system, model, optimizer, config, rec = setup()
    scheduler = SCHEDULERS[kind](optimizer)
    if registered:
        wle.register_scheduler("scheduler", scheduler)
    start = system.experiment_hash
    lrs = []
    for _ in range(12):
        train(model, optimizer, 1, scheduler)
        lrs.append(optimizer.param_groups[0]["lr"])
    if kind == "ReduceLROnPlateau":
        # The loss keeps falling on one batch, so force plateaus by stepping with a constant metric.
        for _ in range(4):
            scheduler.step(1.0)
        train(model, optimizer, 1)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert len(set(lrs)) > 1, "the scheduler must really have moved the lr"
    assert system.experiment_hash == start
    moves = [e for e in rec.of_type("optimizer_param_changed") if e.data["source"] == "scheduler"]
    assert moves and all(e.data["description"] is None for e in moves)
    assert all(e.data["source"] == "scheduler" for e in rec.of_type("optimizer_param_changed"))


def test_user_lr_edit_under_a_scheduler_forks_even_if_the_scheduler_rewrites_it(setup):
    system, model, optimizer, config, rec = setup()
    scheduler = wle.register_scheduler("scheduler", torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.9))
    train(model, optimizer, 3, scheduler)
    before = system.experiment_hash
    optimizer.param_groups[0]["lr"] = 0.001
    scheduler.step()  # rewrites lr before the next optimizer step sees the edit
    train(model, optimizer, 1, scheduler)
    assert system.experiment_hash != before
    user = [e for e in rec.of_type("optimizer_param_changed") if e.data["source"] == "user"]
    assert user[-1].data["new"] == 0.001


def test_layer_assignment_is_an_edit_at_once(setup):
    system, model, optimizer, config, rec = setup()
    train(model, optimizer, 1)
    before = system.experiment_hash
    model[2] = nn.Linear(16, 5)
    event = rec.of_type("layer_edited")[-1]
    assert event.data["path"] == "2" and event.data["how"] == "assign"
    assert event.data["old"]["settings"].endswith("out_features=3, bias=True")
    assert system.experiment_hash != before
    train(model, optimizer, 1)
    assert rec.of_type("hash_changed")[-1].data["words"] == "layer 2 out_features 3 -> 5"


def test_new_submodule_and_parameter_replacement_at_once(setup):
    system, model, optimizer, config, rec = setup()
    h0 = system.experiment_hash
    model.append(nn.Softmax(dim=1))
    h1 = system.experiment_hash
    model[0].weight = nn.Parameter(torch.zeros(12, 8))  # prune four neurons' weights
    h2 = system.experiment_hash
    assert len({h0, h1, h2}) == 3
    assert [e.data["path"] for e in rec.of_type("layer_edited")] == ["3", "0.weight"]


def test_edits_without_hooks_are_found_by_the_next_step(setup):
    system, model, optimizer, config, rec = setup()
    train(model, optimizer, 1)
    h0 = system.experiment_hash
    model[0].bias.data = torch.zeros(20)  # reshaped through .data: no hook fires
    assert system.experiment_hash == h0
    train_safe = [p for p in model.parameters()]
    assert train_safe
    optimizer.zero_grad()
    optimizer.step()  # the boundary check runs before the step
    h1 = system.experiment_hash
    assert h1 != h0 and rec.of_type("layer_edited")[-1].data["how"] == "diff"
    del model[2]
    optimizer.step()
    assert system.experiment_hash not in (h0, h1)
    assert "removed 2" in rec.of_type("hash_changed")[-1].data["words"]


def test_requires_grad_is_found_by_the_next_step_and_freeze_at_once(setup):
    system, model, optimizer, config, rec = setup()
    train(model, optimizer, 1)
    h0 = system.experiment_hash
    model[2].weight.requires_grad_(False)
    train(model, optimizer, 1)
    h1 = system.experiment_hash
    assert h1 != h0 and rec.of_type("state_changed")[-1].data["kind"] == "freeze"
    wle.freeze(model[0])
    h2 = system.experiment_hash
    assert h2 != h1 and rec.of_type("state_changed")[-1].data["paths"] == ("0.weight", "0.bias")
    train(model, optimizer, 1)  # announced where it takes effect
    assert rec.of_type("hash_changed")[-1].data["words"] == "froze 0"
    wle.unfreeze(model[0])
    assert system.experiment_hash == h1, "returning to an earlier configuration returns to its hash"


def test_reset_reinitialises_forks_and_saves_at_once(setup):
    system, model, optimizer, config, rec = setup()
    train(model, optimizer, 4)
    before = model[2].weight.detach().clone()
    h0 = system.experiment_hash
    wle.reset(model[2])
    assert not torch.equal(model[2].weight, before)
    assert rec.of_type("state_changed")[-1].data["kind"] == "reset"
    h1 = system.experiment_hash
    assert h1 != h0
    system.wait()
    assert manifest_steps(system, h1) == [(4, "reset")]
    saved = load(system.store.checkpoint_path(h1, 4))["models"]["model"]["2.weight"]
    assert torch.equal(saved, model[2].weight.detach())
    wle.reset(model[2])
    assert system.experiment_hash not in (h0, h1), "each reset counts"


def test_data_changes_are_announced_but_never_fork_or_save(setup):
    system, model, optimizer, config, rec = setup(checkpoint_frequency=None)
    train(model, optimizer, 2)
    system.wait()
    files = {r["file"] for r in system.store.records(system.experiment_hash)}
    before = system.experiment_hash
    wle.data_changed("discard", sample_ids=[3, 5, 8], reason="mislabelled")
    wle.data_changed("tag", sample_ids=[1], tag="hard")
    event = rec.of_type("data_changed")[0]
    assert event.data["kind"] == "discard" and event.data["sample_ids"] == (3, 5, 8)
    train(model, optimizer, 2)
    system.wait()
    assert system.experiment_hash == before
    assert {r["file"] for r in system.store.records(before)} == files
    assert not [e for e in rec.events if e.type == "checkpoint_scheduled" and e.step > 2]


def test_every_step_is_an_event(setup):
    system, model, optimizer, config, rec = setup()
    train(model, optimizer, 7)
    assert [e.step for e in rec.of_type("step")] == list(range(1, 8))


def test_a_burst_of_edits_between_two_steps_gives_one_fork(setup):
    system, model, optimizer, config, rec = setup(checkpoint_frequency=None)
    train(model, optimizer, 3)
    config["lr"] = 0.05
    config["batch_size"] = 32
    optimizer.param_groups[0]["momentum"] = 0.5
    model[2] = nn.Linear(16, 4)
    wle.freeze(model[0])
    train(model, optimizer, 3)
    system.wait()
    forks = [e for e in rec.of_type("checkpoint_scheduled") if e.data["reason"] == "fork"]
    assert len(forks) == 1 and forks[0].step == 4
    assert len(forks[0].data["causes"]) == 5
    manifest = system.store.manifest(system.experiment_hash)
    assert manifest["fork_step"] == 4 and "lr 0.1 -> 0.05" in manifest["fork_cause"]
    assert "momentum 0.9 -> 0.5" in manifest["fork_cause"]


def test_edit_and_undo_between_steps_gives_no_fork(setup):
    system, model, optimizer, config, rec = setup(checkpoint_frequency=None)
    train(model, optimizer, 2)
    h = system.experiment_hash
    config["lr"] = 0.5
    config["lr"] = 0.1
    train(model, optimizer, 2)
    assert system.experiment_hash == h
    assert not [e for e in rec.of_type("checkpoint_scheduled") if e.data["reason"] == "fork"]


def test_returning_to_an_earlier_configuration_returns_to_its_directory(setup):
    system, model, optimizer, config, rec = setup(checkpoint_frequency=None)
    train(model, optimizer, 2)
    first = system.experiment_hash
    config["lr"] = 0.5
    train(model, optimizer, 2)
    config["lr"] = 0.1
    train(model, optimizer, 2)
    system.wait()
    assert system.experiment_hash == first
    assert [s for s, _ in manifest_steps(system, first)] == [1, 5]
    assert system.store.manifest(first)["parent"] is None


def test_hash_leaves_out_weights_devices_and_runtime_flags(make_system):
    system = make_system()
    model = wle.register_model("model", mlp(seed=1))
    wle.register_optimizer("optimizer", torch.optim.Adam(model.parameters(), lr=1e-3, foreach=False))
    h = system.experiment_hash
    wle.register_model("model", mlp(seed=2))
    wle.register_optimizer("optimizer", torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True))
    assert system.experiment_hash == h
