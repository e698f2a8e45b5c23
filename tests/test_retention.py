"""Retention policies and the invariants no policy may break."""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import manifest_steps, train
from weightslab_events.handlers.retention import protected

import weightslab_events as wle


def kept_steps(system) -> list[int]:
    return [s for s, _ in manifest_steps(system, system.experiment_hash)]


def test_latest_n_keeps_the_newest_and_the_first(setup):
    system, model, optimizer, config, rec = setup(checkpoint_frequency=1, retention=wle.LatestN(2))
    train(model, optimizer, 8)
    system.wait()
    assert kept_steps(system) == [1, 7, 8]
    files = sorted(p.name for p in (system.store.exp_dir(system.experiment_hash) / "model").glob("*_step_*.pt"))
    assert len(files) == 3, "deleted checkpoints are gone from the disk too"


def test_policies_compose(setup):
    policy = wle.EveryNSteps(4) | wle.LatestN(1)
    system, model, optimizer, *_ = setup(checkpoint_frequency=1, retention=policy)
    train(model, optimizer, 10)
    system.wait()
    assert kept_steps(system) == [1, 4, 8, 10]


def test_best_n_by_a_reported_metric(setup):
    system, model, optimizer, *_ = setup(checkpoint_frequency=1, retention=wle.BestN(2, "val_loss", "min"))
    losses = [0.9, 0.5, 0.7, 0.2, 0.8, 0.6, 0.95]
    for loss in losses:
        train(model, optimizer, 1)
        system.report_metric("val_loss", loss)
    train(model, optimizer, 1)
    system.wait()
    # metrics are attached when a save completes (at the next step), so step k carries loss k
    assert kept_steps(system) == [1, 2, 4, 8]


def test_the_newest_is_kept_even_when_the_policy_keeps_nothing(setup):
    system, model, optimizer, *_ = setup(checkpoint_frequency=1, retention=wle.BestN(1, "never_reported"))
    train(model, optimizer, 5)
    system.wait()
    assert kept_steps(system) == [1, 5]


def test_every_fork_checkpoint_is_kept(setup):
    system, model, optimizer, config, rec = setup(checkpoint_frequency=1, retention=wle.LatestN(1))
    train(model, optimizer, 3)
    first = system.experiment_hash
    config["lr"] = 0.01
    train(model, optimizer, 5)
    system.wait()
    assert manifest_steps(system, system.experiment_hash) == [(4, "fork"), (8, "periodic")]
    assert [s for s, _ in manifest_steps(system, first)] == [1, 3]


def test_the_checkpoint_resumed_from_is_kept(setup):
    system, model, optimizer, *_ = setup(checkpoint_frequency=1, retention=wle.LatestN(1))
    train(model, optimizer, 4)
    system.wait()
    system.resume(step=4)
    train(model, optimizer, 4)
    system.wait()
    assert kept_steps(system) == [1, 4, 8]


def test_deletion_runs_on_the_worker_after_a_newer_commit(setup):
    system, model, optimizer, config, rec = setup(checkpoint_frequency=1, retention=wle.LatestN(1))
    threads: list[str] = []
    wle.subscribe(wle.signals.checkpoint_deleted, lambda event: threads.append(threading.current_thread().name))
    train(model, optimizer, 5)
    system.wait()
    assert threads and all(name.startswith("wle-writer") for name in threads)
    saved_steps = []
    for event in rec.events:
        if event.type == "checkpoint_saved":
            saved_steps.append(event.step)
        if event.type == "checkpoint_deleted":
            assert max(saved_steps) > event.step, "a checkpoint is deleted only after a newer one is committed"


def test_protected_set_rules():
    records = [{"file": f"s{i}", "step": i, "reason": "fork" if i == 3 else "periodic"} for i in range(1, 6)]
    assert protected(records, {"s2"}) == {"s1", "s2", "s3", "s5"}
    assert protected([], set()) == set()


@pytest.mark.parametrize("bad", [lambda: wle.LatestN(0), lambda: wle.BestN(1, "m", "up"), lambda: wle.EveryNSteps(0)])
def test_bad_policy_arguments_are_clear_errors(bad):
    with pytest.raises(ValueError, match="needs|mode"):
        bad()


def test_metric_is_recorded_with_the_checkpoint(setup):
    system, model, optimizer, *_ = setup(checkpoint_frequency=2)
    train(model, optimizer, 2)
    system.report_metric("acc", 0.75)
    train(model, optimizer, 1)
    system.wait()
    record = system.store.records(system.experiment_hash)[-1]
    assert record["step"] == 2 and record["metrics"] == {"acc": 0.75}
    assert torch.load(system.store.file_of(system.experiment_hash, record), weights_only=True)["step"] == 2
