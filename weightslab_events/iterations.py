"""Which optimizer steps make up one training iteration, learned from the order they step in.

A GAN steps D then G; a checkpoint of step K must hold both updates, whichever of the two counts
the steps. No hook says "the iteration is over", so the order is learned: an iteration is the
run of optimizer steps until an optimizer that already stepped steps again. That marks the next
iteration's first step, the *step boundary*, where the previous checkpoint is completed and
edits are looked for.

Once the same order has been seen twice, the pending checkpoint is copied only after the last
optimizer of the iteration (one copy per checkpoint). Until then, each optimizer's step copies
again and the last copy wins. If the learned order breaks (an expected optimizer did not step:
a ``GradScaler`` skipped it, or training changed), the checkpoint is copied at the boundary and
a warning says what that copy may include; if the order keeps changing, a warning says so once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Iterations"]

#: Order changes after which the stepping order is reported as unknowable.
CHANGES_BEFORE_WARNING = 3

Warn = Callable[[Any, str], None]


class Iterations:
    """Tracks the optimizer steps of the current iteration and the order learned so far."""

    def __init__(self, warn_once: Warn) -> None:
        self._warn_once = warn_once
        self._current: list[int] = []
        self._open = False
        self._order: tuple[int, ...] | None = None
        self._repeats = 0
        self._changes = 0

    def before_step(self, optimizer: object) -> bool:
        """Called before each registered optimizer's step; ``True`` when it begins an iteration."""
        if id(optimizer) in self._current:
            self._end_iteration()
        if self._open:
            return False
        self._open = True
        return True

    def after_step(self, optimizer: object) -> None:
        self._current.append(id(optimizer))

    def more_expected(self) -> bool:
        """Whether, by the learned order, another optimizer steps later in this iteration."""
        if self._order is None or self._repeats < 1:
            return False
        done = len(self._current)
        return done < len(self._order) and tuple(self._current) == self._order[:done]

    def expected_step_missed(self, step: int) -> None:
        """An optimizer the order expected did not step before the next iteration began."""
        self._repeats = 0
        self._warn_once(
            "missed",
            f"an optimizer that steps in every iteration did not step in iteration {step} (skipped by a "
            "GradScaler, or the training loop changed); the checkpoint of that step was completed when "
            "the next iteration began, so it may hold that iteration's batch-norm statistics and random draws",
        )

    def forget(self) -> None:
        """Start learning again (an optimizer was registered, replaced or removed)."""
        self._order, self._repeats, self._changes = None, 0, 0

    def _end_iteration(self) -> None:
        order = tuple(self._current)
        if order == self._order:
            self._repeats += 1
        else:
            if self._order is not None:
                self._changes += 1
            self._order, self._repeats = order, 0
            if self._changes >= CHANGES_BEFORE_WARNING:
                self._warn_once(
                    "unordered",
                    "the registered optimizers step in no fixed order, so which updates belong to one "
                    "iteration cannot be known; each checkpoint holds the updates made until an optimizer "
                    "steps for the second time",
                )
        self._current = []
        self._open = False
