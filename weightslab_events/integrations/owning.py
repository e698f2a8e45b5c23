"""Which checkpoint system a framework callback trains with, and whether it is the callback's own.

Policy, shared by the Lightning and Hugging Face callbacks: a system the user already opened is
used as it is and left open for the user to close; otherwise the callback opens one with its own
options and owns it (closes it when training ends). A system the callback opened and a raising
``fit``/``train`` left open is still its own, so the next run of the same callback takes it over.
Steps are the framework's global step, so the optimizer hooks stop counting.
"""

from __future__ import annotations

from typing import Any

from .. import api
from ..system import CheckpointSystem

__all__ = ["SystemOwner"]


class SystemOwner:
    """Mixin for callbacks holding ``root_log_dir``, ``checkpoint_frequency``, ``resume`` and
    ``system_options``; :meth:`_take_system` sets ``system`` and ``_owns_system``."""

    root_log_dir: str | None
    checkpoint_frequency: int | None
    resume: bool
    system_options: dict[str, Any]
    system: CheckpointSystem | None
    _owns_system: bool
    _opened: CheckpointSystem | None

    def _take_system(self) -> CheckpointSystem:
        system = api.current_system()
        self._owns_system = system is None or system is self._opened
        if system is None:
            system = api.get_checkpoint_system(
                self.root_log_dir,
                checkpoint_frequency=self.checkpoint_frequency,
                resume=self.resume,
                **self.system_options,
            )
            self._opened = system
        system.use_external_steps()
        self.system = system
        return system
