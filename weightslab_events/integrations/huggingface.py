"""Hugging Face ``Trainer``: ``Trainer(..., callbacks=[WeightslabTrainerCallback(root_log_dir=...)])``.

What the callback does, and why each choice:

- **Registration at ``on_train_begin``**, because the Trainer builds its optimizer and scheduler
  lazily inside ``train()``: the model (``"model"``), the optimizer (``"optimizer"``; the Trainer
  holds an accelerate ``AcceleratedOptimizer``, the torch optimizer inside is registered), the
  scheduler (``"scheduler"``), and the ``TrainingArguments`` fields that define the experiment
  (``"training_args"``: learning rate, schedule, warmup, optimizer settings, batch size,
  accumulation, epochs and steps, clipping, precision, seeds; not output paths, logging, saving
  or evaluation settings, which do not change what is trained).
- **Steps are ``state.global_step``**, announced at ``on_step_end``: after the optimizer and
  scheduler stepped, before the Trainer logs, saves or evaluates. Optimizer steps themselves are
  not counted (``use_external_steps``), so gradient accumulation counts as the Trainer counts.
- **Exact resume.** Each checkpoint also holds the Trainer's counters (``"trainer_state"``). With
  ``resume=True`` a restarted ``train()`` restores model, optimizer, scheduler and random states
  from the newest checkpoint of the experiment, sets ``global_step``, and positions the epoch
  loop the way the Trainer's own ``resume_from_checkpoint`` does: epochs already trained are not
  run again, and the current epoch skips the batches already trained (the Trainer's
  ``skip_first_batches``). The random state of the checkpoint is put back just before the first
  resumed step, so the run ends bitwise equal to a straight one. Positioning the loop needs the
  Trainer's epoch method (``Trainer._run_epoch``, transformers 5); with an older Trainer a resume
  raises a clear error instead of continuing from the wrong batch.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable
from typing import Any

from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .. import api
from ..snapshot import capture_rng, restore_rng
from ..system import CheckpointSystem
from .owning import SystemOwner

__all__ = ["EXPERIMENT_FIELDS", "WeightslabTrainerCallback", "experiment_arguments"]

#: The ``TrainingArguments`` fields that define what is trained (those a version lacks are skipped).
#: ``optim`` is left out: the registered optimizer describes its class and settings, and the name
#: also picks implementation variants (``adamw_torch`` / ``adamw_torch_fused``), runtime flags that
#: are kept out of the hash.
EXPERIMENT_FIELDS: tuple[str, ...] = (
    "learning_rate",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_steps",
    "warmup_ratio",
    "optim_args",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "label_smoothing_factor",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "average_tokens_across_devices",
    "num_train_epochs",
    "max_steps",
    "bf16",
    "fp16",
    "neftune_noise_alpha",
    "seed",
    "data_seed",
    "dataloader_drop_last",
    "train_sampling_strategy",
    "group_by_length",
)

#: The ``TrainerState`` counters saved with each checkpoint and put back on resume.
_STATE_FIELDS = ("global_step", "epoch", "total_flos", "num_input_tokens_seen")


class ResumeNotSupportedError(RuntimeError):
    """This ``Trainer`` has no epoch method to position a resumed run; it would continue from the wrong batch."""


def experiment_arguments(args: TrainingArguments) -> dict[str, Any]:
    """The experiment-defining fields of ``args`` as plain values (enums by their value)."""
    values: dict[str, Any] = {}
    for name in EXPERIMENT_FIELDS:
        if not hasattr(args, name):
            continue
        value = getattr(args, name)
        values[name] = value.value if isinstance(value, enum.Enum) else value
    return values


class _TrainerPosition:
    """The stateful registered as ``"trainer_state"``: the Trainer's counters at the checkpoint."""

    def __init__(self, state: TrainerState) -> None:
        self.state = state
        self.loaded: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self.state, name) for name in _STATE_FIELDS}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        for name, value in saved.items():
            setattr(self.state, name, value)
        self.loaded = dict(saved)


def _calling_trainer() -> Trainer:
    """The ``Trainer`` whose ``train()`` is calling this callback (callbacks are not handed it)."""
    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer):
            return candidate
        frame = frame.f_back
    raise ResumeNotSupportedError("WeightslabTrainerCallback(resume=True) found no Trainer calling it")


class WeightslabTrainerCallback(SystemOwner, TrainerCallback):
    """Automatic, exactly resumable checkpoints of a Hugging Face ``Trainer.train()``.

    ``root_log_dir``, ``checkpoint_frequency`` (in ``global_step``\\ s) and ``resume`` are those of
    :func:`weightslab_events.get_checkpoint_system`; other keyword options are passed to it too.
    The callback opens the process's checkpoint system when training begins and closes it when
    training ends, unless a system was already open: then it uses that one and leaves it open.
    """

    def __init__(
        self,
        root_log_dir: str = "./experiments",
        checkpoint_frequency: int | None = 100,
        *,
        resume: bool = False,
        **system_options: Any,
    ) -> None:
        self.root_log_dir = root_log_dir
        self.checkpoint_frequency = checkpoint_frequency
        self.resume = resume
        self.system_options = system_options
        self.system: CheckpointSystem | None = None
        self._owns_system = False
        self._opened: CheckpointSystem | None = None
        self._rng_before_first_step: dict[str, Any] | None = None
        self._patched: Trainer | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.resume and state.global_step > 0:
            raise ValueError(
                f"WeightslabTrainerCallback(resume=True) and trainer.train(resume_from_checkpoint=...) (at global step "
                f"{state.global_step}) would both restore the model, optimizer and position: resume from one of them"
            )
        self._unpatch()  # left by a train() that raised (the Trainer has no exception hook)
        self._take_system()
        position = _TrainerPosition(state)
        api.register_stateful("trainer_state", position)
        api.register_model("model", kwargs["model"])
        api.register_optimizer("optimizer", kwargs["optimizer"])
        if kwargs.get("lr_scheduler") is not None:
            api.register_scheduler("scheduler", kwargs["lr_scheduler"])
        api.register_hyperparams("training_args", experiment_arguments(args))
        if position.loaded is not None and state.global_step > 0:
            self._position_loop(_calling_trainer(), state.global_step)

    def _position_loop(self, trainer: Trainer, global_step: int) -> None:
        """Make the Trainer's epoch loop continue after ``global_step``, as its own resume does."""
        run_epoch: Callable[..., Any] | None = getattr(trainer, "_run_epoch", None)
        if run_epoch is None:
            raise ResumeNotSupportedError(
                "resuming needs Trainer._run_epoch (transformers 5); this Trainer has none, so the resumed run "
                "would start again at the first batch: upgrade transformers or resume with resume_from_checkpoint"
            )
        accumulation = trainer.args.gradient_accumulation_steps
        rng = capture_rng()

        def positioned_run_epoch(**kwargs: Any) -> Any:
            steps_per_epoch = kwargs["num_update_steps_per_epoch"]
            epoch, steps_done = divmod(global_step, steps_per_epoch)
            if kwargs["epoch"] < epoch:
                return None  # trained before the restart
            if kwargs["epoch"] == epoch and steps_done > 0:
                self._rng_before_first_step = rng
                kwargs.update(
                    resume_from_checkpoint=str(self.system.root if self.system else "."),
                    epochs_trained=epoch,
                    steps_trained_in_current_epoch=steps_done * accumulation,
                )
            return run_epoch(**kwargs)

        trainer._run_epoch = positioned_run_epoch  # type: ignore[method-assign]
        self._patched = trainer

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # After skipping the trained batches, the random state is the checkpoint's again (as the
        # Trainer's own resume reloads its RNG file at this point).
        if self._rng_before_first_step is not None:
            restore_rng(self._rng_before_first_step)
            self._rng_before_first_step = None

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.system is not None:
            self.system.checkpoint_on_step(state.global_step)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._unpatch()
        system, self.system = self.system, None
        if system is not None and self._owns_system:
            self._opened = None
            system.close()

    def _unpatch(self) -> None:
        if self._patched is not None:
            del self._patched._run_epoch
            self._patched = None
