"""A checkpoint records the metrics reported at its own step, under its own hash."""

from __future__ import annotations

from conftest import train


def test_a_fork_checkpoint_does_not_carry_its_parents_last_metric(setup):
    system, model, optimizer, config, rec = setup(checkpoint_frequency=5)
    for step in range(1, 8):
        train(model, optimizer, 1)
        system.report_metric("loss", float(step))
    parent = system.experiment_hash
    optimizer.param_groups[0]["lr"] = 0.01  # forks at the next step
    train(model, optimizer, 1)  # step 8: the fork checkpoint; no loss reported for it yet
    train(model, optimizer, 2)
    system.report_metric("loss", 10.0)
    system.close()
    parent_metrics = {r["step"]: r.get("metrics") or {} for r in system.store.records(parent)}
    assert parent_metrics[5] == {"loss": 5.0}
    assert parent_metrics[1] == {"loss": 1.0}
    fork = {r["step"]: (r["reason"], r.get("metrics") or {}) for r in system.store.records(system.experiment_hash)}
    assert fork[8] == ("fork", {}), "the parent's loss at step 7 is not the fork's"
    assert fork[10] == ("periodic", {"loss": 10.0})
