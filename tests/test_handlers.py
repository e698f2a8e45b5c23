"""Custom handlers: subscribe, async handlers, isolation of failures, order."""

from __future__ import annotations

import gc
import threading

import anyio
import pytest
import torch
from conftest import mlp, train

import weightslab_events as wle
from weightslab_events.testing import FakeClock, Recorder, isolated_bus


def test_subscribe_as_call_and_decorator_and_close(setup):
    system, model, optimizer, config, rec = setup()
    train(model, optimizer, 1)
    seen: list[str] = []

    @wle.subscribe(wle.signals.hash_changed)
    def announce(event):
        seen.append(f"new {event.new_hash} after {event.cause}")

    subscription = wle.subscribe("hyperparams_changed", lambda e: seen.append(e.key))
    config["lr"] = 0.2
    train(model, optimizer, 1)  # the new experiment is announced where it takes effect
    assert seen[0] == "lr" and seen[1] == f"new {system.experiment_hash} after hyperparams_changed"
    subscription.close()
    announce.close()
    config["lr"] = 0.3
    train(model, optimizer, 1)
    assert len(seen) == 2
    with wle.subscribe(wle.signals.hash_changed, lambda e: seen.append("ctx")):
        config["lr"] = 0.4
        train(model, optimizer, 1)
    config["lr"] = 0.5
    train(model, optimizer, 1)
    assert seen[-1] == "ctx" and seen.count("ctx") == 1


def test_subscriptions_made_before_the_system_carry_over(make_system):
    seen = []
    wle.subscribe(wle.signals.model_registered, lambda e: seen.append(e.name))
    make_system()
    wle.register_model("net", mlp())
    assert seen == ["net"]


def test_inline_lambda_keeps_firing_after_garbage_collection(setup):
    system, model, optimizer, config, rec = setup()
    count = [0]
    wle.subscribe(wle.signals.step, lambda e: count.__setitem__(0, count[0] + 1))
    gc.collect()
    train(model, optimizer, 3)
    assert count[0] == 3


def test_weak_subscription_stops_when_the_handler_is_collected(setup):
    system, model, optimizer, config, rec = setup()
    count = [0]

    def handler(event):
        count[0] += 1

    wle.subscribe(wle.signals.step, handler, weak=True)
    train(model, optimizer, 2)
    del handler
    gc.collect()
    train(model, optimizer, 2)
    assert count[0] == 2


def test_sender_filter(setup):
    system, model, optimizer, config, rec = setup()
    other = wle.register_hyperparams("other", {"x": 1})
    seen = []
    wle.subscribe(wle.signals.hyperparams_changed, lambda e: seen.append(e.name), sender="other")
    config["lr"] = 0.01
    other["x"] = 2
    assert seen == ["other"]


def test_raising_sync_handler_never_stops_training_or_other_handlers(setup, caplog):
    system, model, optimizer, config, rec = setup(checkpoint_frequency=2)
    after = []

    def broken(event):
        raise ValueError("handler bug")

    wle.subscribe(wle.signals.step, broken)
    wle.subscribe(wle.signals.step, lambda e: after.append(e.step))
    wle.subscribe(wle.signals.handler_failed, broken)  # a failing handler_failed handler: no loop
    train(model, optimizer, 4)
    system.wait()
    assert system.step == 4 and after == [1, 2, 3, 4]
    failures = rec.of_type("handler_failed")
    assert len(failures) == 4 and failures[0].data["error"] == "ValueError: handler bug"
    assert failures[0].data["handler"].endswith("broken") and failures[0].data["event_type"] == "step"
    assert "handler bug" in caplog.text
    assert [s for s, _ in [(r["step"], r) for r in system.store.records(system.experiment_hash)]] == [1, 2, 4]


def test_raising_async_handler_never_stops_training(setup):
    system, model, optimizer, config, rec = setup()

    async def broken(event):
        await anyio.sleep(0)
        raise RuntimeError("async handler bug")

    wle.subscribe(wle.signals.step, broken)
    train(model, optimizer, 3)
    system.wait()
    assert system.step == 3
    failures = rec.of_type("handler_failed")
    assert len(failures) == 3 and all(f.data["error"] == "RuntimeError: async handler bug" for f in failures)


def test_async_handlers_run_off_the_training_thread_concurrently(setup):
    system, model, optimizer, config, rec = setup()
    training_thread = threading.get_ident()
    threads, running, most = [], [0], [0]
    both_started = threading.Barrier(2, timeout=10)

    async def upload(event):
        threads.append(threading.get_ident())
        running[0] += 1
        most[0] = max(most[0], running[0])
        await anyio.to_thread.run_sync(both_started.wait)  # only passes if two run at once
        running[0] -= 1

    class Notifier:
        async def __call__(self, event):
            threads.append(threading.get_ident())
            running[0] += 1
            most[0] = max(most[0], running[0])
            await anyio.to_thread.run_sync(both_started.wait)
            running[0] -= 1

    wle.subscribe(wle.signals.hyperparams_changed, upload)
    wle.subscribe(wle.signals.hyperparams_changed, Notifier())
    config["lr"] = 0.5  # returns at once: the handlers wait on each other in the background
    system.wait()
    assert most[0] == 2 and len(threads) == 2 and training_thread not in threads


def test_drain_from_async_code_waits_for_handler_work(setup):
    system, model, optimizer, config, rec = setup()
    done = []

    async def slow(event):
        await anyio.sleep(0.05)
        done.append(event.type)

    wle.subscribe(wle.signals.hyperparams_changed, slow)
    config["lr"] = 0.7

    async def main():
        await wle.drain()

    anyio.run(main)
    assert done == ["hyperparams_changed"]


def test_strict_mode_reraises_for_tests(make_system):
    system = make_system(strict_handlers=True)
    wle.subscribe(wle.signals.model_registered, lambda e: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        wle.register_model("model", mlp())

    async def broken(event):
        raise KeyError("async")

    wle.subscribe(wle.signals.unregistered, broken)
    wle.unregister("model")
    with pytest.raises(KeyError, match="async"):
        system.bus.wait_handlers()


def test_builtin_hashing_runs_before_user_handlers_and_sinks_after(setup):
    system, model, optimizer, config, rec = setup()
    seen = []
    wle.subscribe(wle.signals.hyperparams_changed, lambda e: seen.append(("user", system.experiment_hash)))
    before = system.experiment_hash
    config["lr"] = 0.9
    assert seen == [("user", system.experiment_hash)] and system.experiment_hash != before


def test_events_emitted_by_handlers_run_to_completion(wle_bus):
    bus = wle_bus
    order = []

    def on_a(event):
        order.append("a1")
        bus.emit("data_changed", kind="nested")
        order.append("a1-end")

    bus.connect("metric", on_a)
    bus.connect("metric", lambda e: order.append("a2"))
    bus.connect("data_changed", lambda e: order.append("nested"))
    with Recorder(bus) as recorder:
        bus.emit("metric", name="x", value=1.0)
    assert order == ["a1", "a1-end", "a2", "nested"]
    assert [e.seq for e in recorder.events] == [1, 2]


def test_isolated_bus_and_fake_clock_touch_no_global_state(make_system):
    system = make_system()
    clock = FakeClock(start=100.0)
    bus = isolated_bus(clock=clock)
    seen = []
    bus.connect("step", seen.append)
    wle.subscribe(wle.signals.step, lambda e: pytest.fail("the process bus must not see it"))
    bus.emit("step", step=1)
    clock.advance(5)
    bus.emit("step", step=2)
    assert [e.ts for e in seen] == [100.0, 105.0]
    assert system.bus is not bus


def test_unknown_signal_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown signal 'hash_chnged'"):
        wle.subscribe("hash_chnged", print)


def test_handler_failure_on_worker_thread_is_reported(setup):
    system, model, optimizer, config, rec = setup(checkpoint_frequency=1)

    def broken(event):
        raise OSError("upload failed")

    wle.subscribe(wle.signals.checkpoint_saved, broken)
    train(model, optimizer, 2)
    system.wait()
    assert any(e.data["event_type"] == "checkpoint_saved" for e in rec.of_type("handler_failed"))
    assert torch.load(system.store.checkpoint_path(system.experiment_hash, 2), weights_only=True)["step"] == 2


def test_a_handler_on_the_writer_thread_may_call_wait_without_deadlock(setup):
    system, model, optimizer, config, rec = setup(checkpoint_frequency=1)
    waited = []

    def wait_then_note(event):
        system.wait()  # on the writer thread: must not wait for itself
        waited.append(event.step)

    wle.subscribe(wle.signals.checkpoint_saved, wait_then_note)
    train(model, optimizer, 3)
    system.wait(timeout=20)
    assert waited == [1, 2, 3]
