"""Handlers that wait, hang or close the system: no deadlock, a bounded close, no lost final save."""

from __future__ import annotations

import threading
import time

import anyio
import pytest
import torch
from conftest import blocking_commit, train

import weightslab_events as wle


def logged(system: wle.CheckpointSystem, type: str) -> list[dict]:
    return [event.to_dict() for event in wle.read_events(system.store.log_path) if event.type == type]


def test_an_async_handler_awaiting_drain_waits_for_the_others_but_not_itself(setup):
    system, model, optimizer, config, rec = setup(checkpoint_frequency=1, close_timeout=20)
    release_other = threading.Event()
    order: list[str] = []

    async def slow_upload(event):
        await anyio.to_thread.run_sync(release_other.wait, 20)
        order.append("other handler done")

    async def drain_then_note(event):
        await wle.drain(timeout=20)
        order.append("drained")

    wle.subscribe(wle.signals.checkpoint_saved, slow_upload)
    wle.subscribe(wle.signals.checkpoint_saved, drain_then_note)
    train(model, optimizer, 2)  # the second step completes the first step's save
    system.saver.flush(20)
    assert not system.bus.wait_handlers(timeout=0.3), "the drain waits while another handler runs"
    assert order == []
    release_other.set()
    assert system.bus.wait_handlers(timeout=20)
    assert order == ["other handler done", "drained"]


def test_two_async_handlers_draining_at_once_do_not_wait_for_each_other(setup):
    system, model, optimizer, config, rec = setup(checkpoint_frequency=1)
    drained: list[str] = []

    async def first(event):
        await wle.drain(timeout=20)
        drained.append("first")

    async def second(event):
        await wle.drain(timeout=20)
        drained.append("second")

    wle.subscribe(wle.signals.checkpoint_saved, first)
    wle.subscribe(wle.signals.checkpoint_saved, second)
    train(model, optimizer, 2)  # the second step completes the first step's save
    system.saver.flush(20)
    assert system.bus.wait_handlers(timeout=20)
    assert sorted(drained) == ["first", "second"]


def test_an_async_handler_calling_system_wait_returns_and_close_is_prompt(setup):
    system, model, optimizer, config, rec = setup(checkpoint_frequency=2, close_timeout=5)
    waited: list[int] = []

    async def wait_then_note(event):
        system.wait()  # blocks the loop thread: waits for the saves, not for async handlers
        waited.append(event.step)

    wle.subscribe(wle.signals.checkpoint_saved, wait_then_note)
    train(model, optimizer, 3)
    started = time.monotonic()
    system.close()
    assert time.monotonic() - started < 5
    assert sorted(waited) == [1, 2, 3]  # start, periodic, then the final one at close
    assert system.store.records(system.experiment_hash)[-1]["reason"] == "final"


def test_close_returns_within_close_timeout_and_names_the_handlers_it_abandoned(setup, caplog):
    system, model, optimizer, config, rec = setup(checkpoint_frequency=1, close_timeout=2)
    never = threading.Event()

    async def hangs_awaiting(event):
        await anyio.to_thread.run_sync(never.wait, abandon_on_cancel=True)

    async def blocks_the_loop(event):
        never.wait(30)  # a sync call inside async code: nothing can cancel it

    wle.subscribe(wle.signals.checkpoint_saved, hangs_awaiting)
    wle.subscribe(wle.signals.step, blocks_the_loop)
    try:
        train(model, optimizer, 2)
        started = time.monotonic()
        system.close()
        took = time.monotonic() - started
    finally:
        never.set()
    assert took < 2 + 1.0, f"close() took {took:.1f} s with close_timeout=2"
    abandoned = [e for e in logged(system, "handler_failed") if e["data"]["error"].startswith("abandoned by close()")]
    assert {e["data"]["handler"].rsplit(".", 1)[-1] for e in abandoned} >= {"blocks_the_loop"}
    assert "abandoned by close()" in caplog.text
    assert logged(system, "closing"), "closing is logged even when handlers are abandoned"


def test_close_from_a_sync_handler_at_step_5_writes_the_final_checkpoint(setup):
    system, model, optimizer, config, rec = setup(checkpoint_frequency=100)

    def early_stopping(event):
        if event.step == 5:
            system.close()

    wle.subscribe(wle.signals.step, early_stopping)
    train(model, optimizer, 8)  # the loop goes on after close: nothing raises, nothing is saved
    exp = system.experiment_hash
    assert [(r["step"], r["reason"]) for r in system.store.records(exp)] == [(1, "start"), (5, "final")]
    saved = torch.load(system.store.checkpoint_path(exp, 5), weights_only=True)
    assert saved["step"] == 5
    assert [e["step"] for e in logged(system, "closing")] == [5]
    assert wle.current_system() is None


def test_close_from_a_metric_handler_and_again_from_the_loop(setup):
    system, model, optimizer, config, rec = setup(checkpoint_frequency=100)

    def stop_when_good(event):
        if event.value < 0.5:
            system.close()

    wle.subscribe(wle.signals.metric, stop_when_good)
    for step in range(1, 10):
        train(model, optimizer, 1)
        system.report_metric("loss", 1.0 / step)
        if wle.current_system() is None:
            break
    system.close()  # the loop's own close after the handler's is harmless
    records = system.store.records(system.experiment_hash)
    assert (records[-1]["step"], records[-1]["reason"]) == (3, "final")
    assert len(logged(system, "closing")) == 1


def test_close_from_an_async_handler_or_the_writer_thread_still_saves(setup):
    system, model, optimizer, config, rec = setup(checkpoint_frequency=2)
    closers: list[str] = []

    def close_on_the_writer(event):
        if event.step == 2:
            closers.append(threading.current_thread().name)
            system.close()

    wle.subscribe(wle.signals.checkpoint_saved, close_on_the_writer)
    train(model, optimizer, 3)
    system.close()  # waits for the close the handler started on another thread
    assert closers and closers[0].startswith("wle-writer")
    records = [(r["step"], r["reason"]) for r in system.store.records(system.experiment_hash)]
    assert records[-1][1] == "final" and records[-1][0] >= 2
    assert len(logged(system, "closing")) == 1


def test_close_from_an_async_handler_waits_for_nothing_of_its_own(setup):
    system, model, optimizer, config, rec = setup(checkpoint_frequency=100, close_timeout=10)

    async def close_at_step_2(event):
        if event.step == 2:
            system.close()

    wle.subscribe(wle.signals.step, close_at_step_2)
    train(model, optimizer, 2)
    started = time.monotonic()
    system.close()
    assert time.monotonic() - started < 10
    records = [(r["step"], r["reason"]) for r in system.store.records(system.experiment_hash)]
    assert records[-1] == (2, "final")


def test_close_names_the_writes_it_abandoned_and_returns_in_time(setup, monkeypatch):
    system, model, optimizer, config, rec = setup(checkpoint_frequency=1, close_timeout=1.5, max_pending=2)
    release = blocking_commit(system, monkeypatch)  # a disk that hangs
    try:
        train(model, optimizer, 2)
        started = time.monotonic()
        with pytest.raises(wle.CheckpointError) as raised:
            system.close()
        took = time.monotonic() - started
    finally:
        release.set()
    assert took < 1.5 + 1.0, f"close() took {took:.1f} s with close_timeout=1.5"
    hash = system.experiment_hash
    assert f"{hash}_step_000001 (start): abandoned by close()" in str(raised.value)  # being written
    assert f"{hash}_step_000002 (periodic): abandoned by close()" in str(raised.value)  # queued behind it


def test_a_final_save_that_finds_no_slot_in_time_is_named_by_close(setup, monkeypatch):
    system, model, optimizer, config, rec = setup(checkpoint_frequency=100, close_timeout=1.5)
    release = blocking_commit(system, monkeypatch)
    try:
        train(model, optimizer, 3)
        started = time.monotonic()
        with pytest.raises(wle.CheckpointError) as raised:
            system.close()
        took = time.monotonic() - started
    finally:
        release.set()
    assert took < 1.5 + 1.0
    hash = system.experiment_hash
    assert f"{hash}_step_000003: skipped: no free snapshot slot" in str(raised.value)
    assert [e.data["reason"] for e in rec.of_type("checkpoint_skipped")] == ["final"]
