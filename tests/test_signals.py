"""``hash_changed`` means "a new experiment exists": one per fork, with every cause of the burst."""

from __future__ import annotations

import torch
from conftest import close_all, mlp, train

import weightslab_events as wle


def test_registration_before_the_first_step_announces_one_experiment(setup):
    system, model, optimizer, config, rec = setup()
    assert rec.of_type("hash_changed") == [], "nothing is announced before the hash takes effect"
    train(model, optimizer, 1)
    (event,) = rec.of_type("hash_changed")
    assert event.data["old_hash"] is None and event.data["new_hash"] == system.experiment_hash
    assert [c["type"] for c in event.data["causes"]] == [
        "model_registered",
        "optimizer_registered",
        "hyperparams_registered",
    ]


def test_a_burst_of_edits_is_one_event_with_every_cause_and_the_detail_stays_on_the_specific_signals(setup):
    system, model, optimizer, config, rec = setup()
    train(model, optimizer, 1)
    before = system.experiment_hash
    config["batch_size"] = 32
    optimizer.param_groups[0]["lr"] = 0.01
    model[2] = torch.nn.Linear(16, 5)
    assert len(rec.of_type("hash_changed")) == 1, "no announcement inside the burst"
    train(model, optimizer, 1)
    event = rec.of_type("hash_changed")[-1]
    assert len(rec.of_type("hash_changed")) == 2
    assert (event.data["old_hash"], event.data["new_hash"]) == (before, system.experiment_hash)
    causes = [c["type"] for c in event.data["causes"]]
    assert causes == ["hyperparams_changed", "layer_edited", "optimizer_param_changed"]
    assert "batch_size 16 -> 32" in event.data["words"] and "layer 2 out_features 3 -> 5" in event.data["words"]
    assert event.step == 2 and event.data["boundary"] == "step"
    assert rec.of_type("hyperparams_changed")[-1].data["key"] == "batch_size"  # per-edit detail is still there
    fork = rec.of_type("checkpoint_scheduled")[-1]
    assert (fork.data["reason"], fork.data["parent"], fork.step) == ("fork", before, 2)


def test_a_burst_undone_before_the_next_step_announces_nothing(setup):
    system, model, optimizer, config, rec = setup()
    train(model, optimizer, 1)
    config["batch_size"] = 32
    config["batch_size"] = 16
    train(model, optimizer, 1)
    assert len(rec.of_type("hash_changed")) == 1


def test_a_reset_is_announced_at_once(setup):
    system, model, optimizer, config, rec = setup()
    train(model, optimizer, 1)
    wle.reset(model[2])
    event = rec.of_type("hash_changed")[-1]
    assert event.data["boundary"] == "reset" and event.data["new_hash"] == system.experiment_hash
    assert rec.of_type("checkpoint_scheduled")[-1].data["reason"] == "reset"


def test_the_readme_handler_prints_one_line_per_experiment_directory_and_replay_agrees(root):
    lines: list[str] = []

    @wle.subscribe(wle.signals.hash_changed)
    def announce(event):  # the README's example handler
        lines.append(f"new experiment {event.new_hash} after {event.cause}: {event.words}")

    wle.get_checkpoint_system(str(root), checkpoint_frequency=10)
    model = wle.register_model("model", mlp())
    optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    config = wle.register_hyperparams("config", {"lr": 0.1, "batch_size": 16})
    train(model, optimizer, 3)
    config["lr"] = 0.05  # a burst of three edits: one new experiment
    optimizer.param_groups[0]["lr"] = 0.05
    wle.freeze(model[0])
    train(model, optimizer, 3)
    model[2] = torch.nn.Linear(16, 5)
    train(model, optimizer, 3)
    config["batch_size"] = 8
    train(model, optimizer, 3)
    close_all()
    directories = sorted(p.name for p in (root / "checkpoints").iterdir())
    assert len(lines) == len(directories) == 4
    assert sorted(line.split()[2] for line in lines) == directories
    replayed = wle.replay(root / "logs" / "events.jsonl")
    assert sorted(replayed.hashes) == directories
