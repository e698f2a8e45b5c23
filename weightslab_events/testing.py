"""Tools for testing your own handlers: a recorder, an isolated bus, a fake clock, fixtures.

Installed as a pytest plugin, so the fixtures ``wle_system``, ``wle_recorder``, ``wle_bus`` and
``fake_clock`` are available in any test once the package is installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import api
from .bus import Bus, Subscription
from .events import Event
from .ledger import LEDGER
from .signals import ALL

__all__ = ["FakeClock", "Recorder", "fake_clock", "isolated_bus", "wle_bus", "wle_recorder", "wle_system"]


class FakeClock:
    """A clock that moves only when told to: ``clock()`` reads it, ``advance(s)`` moves it."""

    def __init__(self, start: float = 0.0, tick: float = 0.0) -> None:
        self.now = start
        self.tick = tick

    def __call__(self) -> float:
        now = self.now
        self.now += self.tick
        return now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recorder:
    """Captures every event dispatched on a bus while its ``with`` block runs."""

    def __init__(self, bus: Bus | None = None) -> None:
        self.bus = bus
        self.events: list[Event] = []
        self._subscription: Subscription | None = None

    def __enter__(self) -> Recorder:
        bus = self.bus
        if bus is None:
            system = api.current_system()
            if system is None:
                raise RuntimeError("Recorder() without a bus needs an open checkpoint system")
            bus = system.bus
        self._subscription = bus.connect(ALL, self.events.append, group="sink")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._subscription is not None:
            self._subscription.close()

    def types(self) -> list[str]:
        return [e.type for e in self.events]

    def of_type(self, type: str) -> list[Event]:
        return [e for e in self.events if e.type == type]


def isolated_bus(*, strict: bool = True, clock: Any = None) -> Bus:
    """A bus of its own, sharing nothing with the process; strict by default for tests."""
    return Bus(strict=strict, clock=clock or FakeClock())


def _close_everything() -> None:
    system = api.current_system()
    if system is not None:
        try:
            system.close()
        except Exception:
            pass
    for subscription in list(api._subscriptions):
        subscription.close()
    LEDGER.clear()


@pytest.fixture
def wle_system(tmp_path: Path) -> Iterator[Any]:
    """A fresh checkpoint system rooted in ``tmp_path``, closed and forgotten afterwards."""
    _close_everything()
    system = api.get_checkpoint_system(str(tmp_path / "experiments"), checkpoint_frequency=10)
    yield system
    _close_everything()


@pytest.fixture
def wle_recorder(wle_system: Any) -> Iterator[Recorder]:
    with Recorder(wle_system.bus) as recorder:
        yield recorder


@pytest.fixture
def wle_bus() -> Bus:
    return isolated_bus()


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()
