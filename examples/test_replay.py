"""A user's test: replay a recorded run's event log through your own handler.

No model, no training, no files written: the log says what happened, replay feeds it through a
fresh bus with the library's hashing and checkpoint handlers in dry mode plus yours. Run it with
``pytest examples/test_replay.py`` (the README's test command runs it too).
"""

from __future__ import annotations

import torch
from torch import nn

import weightslab_events as wle


class ForkCounter:
    """The handler under test: collects the causes of every fork checkpoint."""

    def __init__(self) -> None:
        self.causes: list[str] = []

    def __call__(self, event: wle.Event) -> None:
        if event.reason == "fork":
            self.causes.extend(event.causes)


def record_a_run(root) -> None:
    """Make a small real run to have a log (a user would keep one from a real training run)."""
    with wle.get_checkpoint_system(str(root), checkpoint_frequency=5):
        model = wle.register_model("model", nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
        optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
        x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
        for step in range(12):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step == 5:
                optimizer.param_groups[0]["lr"] = 0.01
            if step == 8:
                wle.freeze(model[0])


def test_fork_counter_sees_every_fork(tmp_path):
    record_a_run(tmp_path)
    counter = ForkCounter()
    result = wle.replay(tmp_path / "logs" / "events.jsonl", handlers={"checkpoint_scheduled": counter})
    assert counter.causes == ["lr 0.1 -> 0.01", "froze 0"]
    decisions = [(step, reason) for _hash, step, reason in result.checkpoints]
    assert decisions == [(1, "start"), (5, "periodic"), (7, "fork"), (10, "fork"), (12, "final")]


def test_with_the_recorder_fixture(wle_recorder):
    """The pytest plugin gives a fresh system and a recorder of its events."""
    wle.register_hyperparams("config", {"lr": 0.1})
    wle.get_hyperparams("config")["lr"] = 0.2
    assert wle_recorder.types()[-1] == "hyperparams_changed"
    wle.current_system().checkpoint_on_config_change()  # a boundary: the new experiment is announced
    assert "hash_changed" in wle_recorder.types()
