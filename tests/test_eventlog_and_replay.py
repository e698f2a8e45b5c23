"""The event log and its replay."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from conftest import mlp, train
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import weightslab_events as wle
from weightslab_events import signals
from weightslab_events.eventlog import EventLogError
from weightslab_events.events import Event


def every_change_kind(root) -> wle.CheckpointSystem:
    """A real run that makes every change kind of the core table, then closes."""
    system = wle.get_checkpoint_system(str(root), checkpoint_frequency=4)
    raw = {"lr": 0.1, "aug": {"flip": True}}
    model = wle.register_model("model", mlp())
    optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    scheduler = wle.register_scheduler("scheduler", torch.optim.lr_scheduler.StepLR(optimizer, 3, gamma=0.5))
    config = wle.register_hyperparams("config", raw)
    wle.register_stateful("sampler", torch.Generator().manual_seed(3))
    train(model, optimizer, 5, scheduler)  # scheduler moves: no fork
    config["aug"]["flip"] = False  # mapping edit
    raw["lr"] = 0.2  # direct edit
    train(model, optimizer, 2, scheduler)
    optimizer.param_groups[0]["momentum"] = 0.5  # param-group edit
    model[2] = nn.Linear(16, 4)  # layer replaced
    train(model, optimizer, 1, scheduler)
    optimizer.add_param_group({"params": model[2].parameters(), "lr": 0.01})
    model.append(nn.Softmax(dim=1))  # layer added
    model[0].weight = nn.Parameter(torch.randn(12, 8))  # parameter replaced and reshaped
    model[0].bias.data = torch.zeros(12)  # reshaped without a hook
    model[2] = nn.Linear(12, 4)
    optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))  # replaced
    train(model, optimizer, 1)
    del model[3]  # layer removed
    model[2].weight.requires_grad_(False)
    train(model, optimizer, 1)
    wle.freeze(model[0])
    wle.unfreeze(model[0])
    wle.reset(model[2])
    wle.data_changed("discard", sample_ids=[1, 2])
    system.report_metric("loss", 0.5)
    train(model, optimizer, 3)
    system.checkpoint_on_model_change()
    wle.register_hyperparams("extra", {"seed": 1})
    wle.unregister("extra")
    train(model, optimizer, 2)
    system.wait()
    system.resume(step=system.store.records(system.experiment_hash)[-1]["step"])
    train(model, optimizer, 2)
    system.close()
    return system


def test_replaying_a_real_run_reproduces_its_hashes_and_checkpoint_decisions(root):
    system = every_change_kind(root)
    log_path = root / "logs" / "events.jsonl"
    recorded = wle.read_events(log_path)
    kinds = {e.type for e in recorded}
    assert set(signals.CHANGE_SIGNALS) | {"data_changed", "step", "resumed", "metric"} <= kinds
    result = wle.replay(log_path)
    live_hashes = [
        (e.data["old_hash"], e.data["new_hash"], e.data["cause"]) for e in recorded if e.type == "hash_changed"
    ]
    live_saves = [(e.data["hash"], e.step, e.data["reason"]) for e in recorded if e.type == "checkpoint_scheduled"]
    assert len(live_hashes) >= 5 and len(live_saves) > 5
    assert result.hash_changes == live_hashes
    assert result.checkpoints == live_saves
    assert result.hashes[-1] == system.experiment_hash


def test_replay_touches_no_global_state_and_writes_nothing(root, tmp_path):
    every_change_kind(root)
    log_path = root / "logs" / "events.jsonl"
    before = sorted(p for p in tmp_path.rglob("*"))
    seen = []
    result = wle.replay(log_path, handlers={"hash_changed": seen.append})
    assert wle.current_system() is None
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert [e.data["new_hash"] for e in seen] == result.hashes


def test_log_lines_have_the_documented_shape(setup, root):
    system, model, optimizer, *_ = setup()
    train(model, optimizer, 2)
    system.close()
    lines = (root / "logs" / "events.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    events = [r for r in records if "compact" not in r]
    assert all({"v", "run", "seq", "ts", "type", "exp", "src", "data"} <= set(r) for r in events)
    assert {r["run"] for r in records} == {system.run.id} and all(r["v"] == 2 for r in records)
    assert any("compact" in r for r in records), "step progress is written compactly"
    read = wle.read_events(root / "logs" / "events.jsonl")
    assert [e.seq for e in read] == list(range(1, len(read) + 1)), "every event, seq orders them"
    assert [e.step for e in read if e.type == "step"] == [1, 2]
    registered = next(r for r in records if r["type"] == "model_registered")
    weight = registered["data"]["description"]["modules"]["0"]["params"]["weight"]
    assert weight == {"shape": [16, 8], "dtype": "torch.float32", "trainable": True}


def test_tensors_are_summarised_never_stored():
    event = Event(type="data_changed", data={"weights": torch.ones(3, 4)})
    assert event.to_dict()["data"]["weights"] == {"tensor": {"shape": [3, 4], "dtype": "torch.float32"}}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    type=st.sampled_from(signals.NAMES),
    exp=st.none() | st.text(alphabet="0123456789abcdef", min_size=16, max_size=16),
    step=st.integers(min_value=0, max_value=10**9),
    src=st.none() | st.text(max_size=10),
    data=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
    seq=st.integers(min_value=1, max_value=10**12),
    ts=st.floats(min_value=0, max_value=2e9),
)
def test_every_event_type_round_trips_through_json(type, exp, step, src, data, seq, ts):
    event = Event(type=type, exp=exp, step=step, src=src, data=data, seq=seq, ts=ts)
    again = Event.from_json(event.to_json())
    assert again == event
    assert again.to_json() == event.to_json()


def write_log(path, lines):
    path.write_text("\n".join(lines) + "\n")


def test_a_torn_last_line_is_skipped_with_a_warning(tmp_path, caplog):
    good = [Event(type="step", step=i, seq=i).to_json() for i in range(1, 4)]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(good) + "\n" + good[0][:25])
    with caplog.at_level(logging.WARNING, "weightslab_events"):
        events = wle.read_events(path)
    assert [e.step for e in events] == [1, 2, 3] and "torn last line 4" in caplog.text


def test_a_broken_middle_line_and_an_unknown_version_are_errors(tmp_path):
    good = Event(type="step", step=1, seq=1).to_json()
    path = tmp_path / "events.jsonl"
    write_log(path, [good, "{not json", good])
    with pytest.raises(EventLogError, match="line 2: not valid JSON"):
        wle.read_events(path)
    record = json.loads(good)
    record["v"] = 99
    write_log(path, [good, json.dumps(record)])
    with pytest.raises(EventLogError, match="line 2: event log format version 99 is not supported"):
        wle.read_events(path)
    with pytest.raises(EventLogError, match="does not exist"):
        wle.read_events(tmp_path / "missing.jsonl")


def test_replay_of_a_killed_runs_log_with_a_torn_line(root):
    every_change_kind(root)
    path = root / "logs" / "events.jsonl"
    with open(path, "a") as file:
        file.write('{"v":1,"seq":99999,"ty')
    result = wle.replay(path)
    assert result.hashes
