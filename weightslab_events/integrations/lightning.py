"""Lightning: ``Trainer(callbacks=[WeightslabCallback(root_log_dir=..., checkpoint_frequency=...)])``.

What the callback does, and why each choice:

- **Registration at ``on_fit_start``**, the first hook after Lightning built the optimizers: the
  LightningModule (``"model"``), each optimizer (``"optimizer"``, or ``"optimizer_0"``...; the
  raw torch optimizers, not ``LightningOptimizer`` wrappers), each lr scheduler
  (``"scheduler"``...), ``self.hparams`` from ``save_hyperparameters()`` (``"hparams"``, edits
  fork) and the datamodule's hparams (``"datamodule_hparams"``).
- **Steps are Lightning's ``global_step``.** The step boundary is ``on_train_batch_end`` of a batch
  in which an optimizer stepped: the scheduler has stepped, Lightning's counters are final, and a
  user edit made later in the iteration (the module's own ``on_train_batch_end``) belongs to the
  next step. Optimizer steps themselves are not counted (``use_external_steps``), so gradient
  accumulation and manual optimization count exactly as Lightning does.
- **Exact resume.** Each checkpoint also holds Lightning's loop state (what its own checkpoints
  hold under ``"loops"``) and the random state the training dataloader's iterator of that epoch
  was created with. With ``resume=True`` a restarted ``fit`` restores them: Lightning continues
  at the saved ``global_step``, epoch and batch, and the callback re-creates the epoch's iterator
  from the same random state and skips the batches already trained (they are loaded, not
  trained), so a killed and restarted fit ends bitwise equal to a straight one. This holds for a
  map-style dataset whose order comes from torch's global generator (``shuffle=True``) or from a
  seeded sampler; hooks that draw random numbers between an epoch's start and its first batch
  (a module's ``on_train_epoch_start``) are not replayed.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from .. import api
from ..errors import CheckpointError
from ..system import CheckpointSystem
from .owning import SystemOwner

__all__ = ["WeightslabCallback"]

log = logging.getLogger("weightslab_events")


class _LoopPosition:
    """The stateful registered as ``"lightning_loop"``: where Lightning's fit loop stands."""

    def __init__(self) -> None:
        self.trainer: Trainer | None = None
        self.epoch_start_rng: torch.Tensor = torch.get_rng_state()
        self.batches_done = 0
        self.epoch_done = False
        self.loaded: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        assert self.trainer is not None
        return {
            "fit_loop": self.trainer.fit_loop.state_dict(),
            "epoch_start_rng": self.epoch_start_rng,
            "batches_done": self.batches_done,
            "epoch_done": self.epoch_done,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.trainer is not None
        self.trainer.fit_loop.load_state_dict(state["fit_loop"])
        self.loaded = state


def _names(base: str, count: int) -> list[str]:
    return [base] if count == 1 else [f"{base}_{i}" for i in range(count)]


def _skip_batches(fetcher: Any, count: int) -> None:
    """Advance Lightning's training data fetcher by ``count`` batches without training on them."""
    prefetched = getattr(fetcher, "batches", None)
    for _ in range(count):
        if prefetched:
            prefetched.pop(0)
            try:
                prefetched.append(next(fetcher.iterator))
            except StopIteration:
                return
        else:
            next(fetcher.iterator)


class WeightslabCallback(SystemOwner, Callback):
    """Automatic, exactly resumable checkpoints of a Lightning ``fit``.

    ``root_log_dir``, ``checkpoint_frequency`` (in Lightning ``global_step``\\ s) and ``resume``
    are those of :func:`weightslab_events.get_checkpoint_system`; other keyword options are
    passed to it too. The callback opens the process's checkpoint system when the fit starts and
    closes it when the fit ends (or fails), unless a system was already open: then it uses that
    one and leaves it open. ``callback.system`` is the system while the fit runs.
    """

    def __init__(
        self,
        root_log_dir: str = "./experiments",
        checkpoint_frequency: int | None = 100,
        *,
        resume: bool = False,
        **system_options: Any,
    ) -> None:
        super().__init__()
        self.root_log_dir = root_log_dir
        self.checkpoint_frequency = checkpoint_frequency
        self.resume = resume
        self.system_options = system_options
        self.system: CheckpointSystem | None = None
        self._owns_system = False
        self._opened: CheckpointSystem | None = None
        self._position = _LoopPosition()
        self._announced_step: int | None = None
        self._first_epoch = True
        self._rng_after_skip: torch.Tensor | None = None
        self._batches_to_skip = 0

    # -- starting ---------------------------------------------------------------------------

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.resume and trainer.ckpt_path is not None:
            raise ValueError(
                f"WeightslabCallback(resume=True) and trainer.fit(ckpt_path={trainer.ckpt_path!r}) would both restore "
                "the model, optimizers and loops: resume from one of them (drop resume=True or ckpt_path)"
            )
        self._take_system()
        self._position = _LoopPosition()
        self._position.trainer = trainer
        api.register_stateful("lightning_loop", self._position)
        self._register(trainer, pl_module)
        self._announced_step = trainer.global_step
        self._first_epoch = True
        self._prepare_data_position()

    def _register(self, trainer: Trainer, pl_module: LightningModule) -> None:
        api.register_model("model", pl_module)
        for name, optimizer in zip(_names("optimizer", len(trainer.optimizers)), trainer.optimizers, strict=True):
            api.register_optimizer(name, optimizer)
        configs = trainer.lr_scheduler_configs
        for name, config in zip(_names("scheduler", len(configs)), configs, strict=True):
            api.register_scheduler(name, config.scheduler)
        if pl_module.hparams:
            api.register_hyperparams("hparams", pl_module.hparams)
        datamodule = trainer.datamodule
        if datamodule is not None and datamodule.hparams:
            api.register_hyperparams("datamodule_hparams", datamodule.hparams)

    def _prepare_data_position(self) -> None:
        """Set the random state the first epoch's dataloader iterator is about to be created with.

        After a resume in the middle of an epoch that is the state the epoch's iterator had in the
        original run (the batches already trained are skipped in ``on_train_start``); otherwise it
        is the state now, which is what the straight run's iterator is created with too.
        """
        loaded = self._position.loaded
        if loaded is None or loaded["epoch_done"]:
            self._position.epoch_start_rng = torch.get_rng_state()
            return
        self._rng_after_skip = torch.get_rng_state()
        self._batches_to_skip = int(loaded["batches_done"])
        self._position.epoch_start_rng = loaded["epoch_start_rng"]
        self._position.batches_done = self._batches_to_skip
        torch.set_rng_state(loaded["epoch_start_rng"])

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._rng_after_skip is None:
            return
        _skip_batches(trainer.fit_loop._data_fetcher, self._batches_to_skip)
        torch.set_rng_state(self._rng_after_skip)
        self._rng_after_skip = None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The first epoch of this fit had its iterator created before this hook (on_fit_start
        # recorded its state); later epochs create theirs right after it.
        if not self._first_epoch:
            self._position.epoch_start_rng = torch.get_rng_state()
        self._first_epoch = False
        self._position.batches_done = 0
        self._position.epoch_done = False

    # -- steps ------------------------------------------------------------------------------

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._first_epoch = False
        step = trainer.global_step
        if self.system is None or step == self._announced_step:
            return
        self._announced_step = step
        self._position.batches_done = batch_idx + 1
        self._position.epoch_done = bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)
        self.system.checkpoint_on_step(step)

    # -- ending -----------------------------------------------------------------------------

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Make the scheduled saves durable, but save nothing of the interrupted iteration.

        Closing would save a final checkpoint of the state as it is now: between two steps (an
        optimizer may have stepped, random numbers were drawn), labelled with the last step, so a
        resume from it would not be exact. The system stays open instead: a restarted process
        resumes from the newest checkpoint, and the next ``fit`` with this callback takes the
        system over and closes it at its end.
        """
        system, self.system = self.system, None
        if system is None:
            return
        try:
            system.wait(system.close_timeout)
        except CheckpointError as error:
            log.warning("after the exception in fit, some checkpoints could not be written: %s", error)

    def _close(self) -> None:
        system, self.system = self.system, None
        if system is not None and self._owns_system:
            self._opened = None
            system.close()

    def state_dict(self) -> dict[str, Any]:
        """Nothing of ours goes into Lightning's own checkpoints: the library keeps its own."""
        return {}
