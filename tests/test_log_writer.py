"""The log writer: compact step blocks read back exactly, v1 logs still read, a full disk survived."""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path

import pytest
import torch
from conftest import mlp, train
from weightslab_events.handlers import event_log

import weightslab_events as wle
from weightslab_events.eventlog import EventLogError, read_runs
from weightslab_events.events import Event
from weightslab_events.store import FileSystem
from weightslab_events.testing import Recorder


def cosine_run(root: Path, steps: int, **options) -> tuple[wle.CheckpointSystem, list[Event]]:
    system = wle.get_checkpoint_system(str(root), checkpoint_frequency=7, **options)
    model = wle.register_model("model", mlp())
    optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    scheduler = wle.register_scheduler("scheduler", torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps))
    recorder = Recorder(system.bus).__enter__()
    train(model, optimizer, steps, scheduler)
    return system, recorder.events


def without_time(event: Event) -> tuple:
    return (event.run, event.seq, event.type, event.exp, event.step, event.src, event.to_dict()["data"])


def test_compact_blocks_give_back_every_live_event_exactly(root):
    system, live = cosine_run(root, 40)
    system.close()
    log_path = root / "logs" / "events.jsonl"
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    read = wle.read_events(log_path)
    moves = [e for e in read if e.type == "optimizer_param_changed" and e.data["source"] == "scheduler"]
    plain = [line.get("type") for line in lines if "compact" not in line]
    assert len(moves) >= 39 and "step" not in plain, "steps and scheduler moves were written compactly"
    assert sum(line["compact"]["n"] for line in lines if "compact" in line) == len(moves) + 40
    live_by_seq = {e.seq: e for e in live}
    for event in read:
        if event.seq in live_by_seq:
            assert without_time(event) == without_time(live_by_seq[event.seq])
            assert abs(event.ts - live_by_seq[event.seq].ts) <= 0.001, "time is kept to the millisecond"
    assert {e.seq for e in live} <= {e.seq for e in read}, "every event the live subscribers saw is in the log"
    live_moves = [e for e in live if e.type == "optimizer_param_changed" and e.data["source"] == "scheduler"]
    assert [without_time(m) for m in moves] == [without_time(m) for m in live_moves]


def test_a_version_1_log_of_two_processes_reads_as_two_runs(tmp_path):
    def v1(seq: int, type: str, step: int = 0, **data) -> str:
        record = Event(type=type, seq=seq, step=step, data=data).to_dict()
        record["v"] = 1
        del record["run"]
        return json.dumps(record)

    first = [v1(1, "started", checkpoint_frequency=2), v1(2, "step", 1), v1(3, "step", 2)]
    second = [v1(1, "started", checkpoint_frequency=2), v1(2, "step", 1)]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(first + second) + "\n")
    runs = read_runs(path)
    assert [(r.id, [e.step for e in r.events]) for r in runs] == [("v1-1", [0, 1, 2]), ("v1-2", [0, 1])]
    assert [r.id for r in wle.replay(path).runs] == ["v1-1", "v1-2"]


def test_a_damaged_compact_block_before_the_end_is_an_error_naming_the_line(root):
    system, _ = cosine_run(root, 10)
    system.close()
    log_path = root / "logs" / "events.jsonl"
    lines = log_path.read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if '"compact"' in line)
    record = json.loads(lines[index])
    record["compact"]["z"] = "not base85 ~~~"
    lines[index] = json.dumps(record)
    log_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(EventLogError, match=f"line {index + 1}"):
        wle.read_events(log_path)


class FullDisk(FileSystem):
    """The event log's writes fail with ENOSPC while ``full`` (root cannot fill a real disk)."""

    def __init__(self) -> None:
        self.full = False
        self.partial = True

    def append(self, fd: int, data: bytes) -> int:
        if not self.full:
            return super().append(fd, data)
        if self.partial:  # the kernel wrote part of the batch before the disk filled up
            self.partial = False
            return os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_never_stops_the_log_memory_stays_bounded_and_the_gap_is_recorded(root, monkeypatch, caplog):
    monkeypatch.setattr(event_log, "MAX_UNWRITTEN", 30)
    disk = FullDisk()
    system = wle.get_checkpoint_system(str(root), checkpoint_frequency=None, file_system=disk)
    model = wle.register_model("model", mlp())
    optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    system.report_metric("loss", 1.0)
    system.wait()
    disk.full = True
    with caplog.at_level(logging.WARNING, "weightslab_events"):
        for step in range(100):  # training goes on while nothing can be written
            train(model, optimizer, 1)
            system.report_metric("loss", float(step))
            system.wait()
            assert system.event_log.unwritten <= 30, "memory stays bounded"
        assert "No space left on device" in caplog.text
        disk.full = False
        train(model, optimizer, 2)
        system.report_metric("loss", -1.0)
        system.wait()
        system.close()
    assert "lost" in caplog.text and str(system.event_log.lost) in caplog.text
    log_path = root / "logs" / "events.jsonl"
    assert all(json.loads(line) for line in log_path.read_text().splitlines()), "no half batch was left"
    events = wle.read_events(log_path)
    (gap,) = [e for e in events if e.type == "events_lost"]
    assert gap.data["count"] == system.event_log.lost > 0
    assert "No space left" in gap.data["error"]
    seqs = {e.seq for e in events if e.type != "events_lost"}
    assert len(seqs) + gap.data["count"] == max(seqs), "every event is either in the log or counted lost"
    assert [e.data["value"] for e in events if e.type == "metric"][-1] == -1.0, "logging resumed"
    assert "closing" in [e.type for e in events]
    assert len(wle.replay(log_path).gaps) == 1
