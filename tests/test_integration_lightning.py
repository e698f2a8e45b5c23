"""The Lightning callback against the real ``lightning.pytorch`` on CPU (issue 13)."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from conftest import run_helper
from torch import nn

import weightslab_events as wle
from weightslab_events.integrations.lightning import WeightslabCallback

HELPERS = Path(__file__).parent / "helpers"
sys.path.insert(0, str(HELPERS))

import lightning_worker  # noqa: E402
from lightning_worker import Classifier  # noqa: E402


def trainer_for(callback: pl.Callback, **options) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **options,
    )


def loader(samples: int = 48) -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(samples, 16, generator=generator), torch.arange(samples) % 4)
    return torch.utils.data.DataLoader(data, batch_size=8, shuffle=True)


def events(root: Path) -> list[wle.Event]:
    return list(wle.read_events(root / "logs" / "events.jsonl"))


def test_the_callback_registers_module_unwrapped_optimizer_scheduler_and_hparams(tmp_path):
    callback = WeightslabCallback(root_log_dir=str(tmp_path), checkpoint_frequency=4)
    trainer = trainer_for(callback, max_steps=8)
    trainer.fit(Classifier(lr=0.03), loader())
    registered = {(e.type, e.src) for e in events(tmp_path) if e.type.endswith("_registered")}
    assert registered >= {
        ("model_registered", "model"),
        ("optimizer_registered", "optimizer"),
        ("scheduler_registered", "scheduler"),
        ("hyperparams_registered", "hparams"),
        ("stateful_registered", "lightning_loop"),
    }
    (experiment,) = (tmp_path / "checkpoints").iterdir()
    config = yaml.safe_load((experiment / "hp" / f"{experiment.name}_config.yaml").read_text())
    assert "0.03" in str(config["hyperparams:hparams"]) and "AdamW" in str(config["optimizer:optimizer"])
    assert "StepLR" in str(config["scheduler:scheduler"])
    steps = sorted(int(p.stem.rsplit("_", 1)[1]) for p in (experiment / "model").glob("*.pt"))
    assert steps == [1, 4, 8], "start, then every 4 global steps; the last one is not saved twice"
    assert callback.system is None and wle.current_system() is None, "the callback closed the system it opened"


class Editing(Classifier):
    """Edits its hparams at global step 3 and its lr (through ``self.optimizers()``) at step 6."""

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.global_step == 3:
            self.hparams.width_note = "wider next time"
        if self.global_step == 6:
            self.optimizers().param_groups[0]["lr"] = 0.001


def test_steps_are_lightning_global_steps_and_edits_fork(tmp_path):
    callback = WeightslabCallback(root_log_dir=str(tmp_path), checkpoint_frequency=None)
    seen = []

    class Watch(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append((trainer.global_step, callback.system.step))

    trainer = trainer_for(callback, max_epochs=2, accumulate_grad_batches=4)
    trainer.callbacks.append(Watch())
    trainer.fit(Editing(), loader(samples=48))  # 6 batches an epoch: steps after batches 4 and 6
    assert trainer.global_step == 4
    assert [lightning for lightning, ours in seen] == [ours for lightning, ours in seen]
    forks = [e for e in events(tmp_path) if e.type == "checkpoint_scheduled" and e.reason == "fork"]
    assert [e.step for e in forks] == [4], "the hparams edit made after step 3 forks at step 4"
    assert "width_note" in " ".join(forks[0].causes)


def test_an_lr_edit_through_lightnings_optimizer_wrapper_forks_at_the_next_step(tmp_path):
    callback = WeightslabCallback(root_log_dir=str(tmp_path), checkpoint_frequency=None)
    trainer_for(callback, max_steps=9).fit(Editing(), loader())
    forks = {e.step: e.causes for e in events(tmp_path) if e.type == "checkpoint_scheduled" and e.reason == "fork"}
    assert sorted(forks) == [4, 7], "each edit forks at the next global step"
    assert "optimizer.lr 0.05 -> 0.001" in forks[7], "qualified: Lightning's hparams may hold an lr too"


def first_batch(output: str) -> tuple[int, int, int]:
    line = next(line for line in output.splitlines() if line.startswith("first batch: "))
    values = dict(part.split("=") for part in line.split()[2:])
    return int(values["global_step"]), int(values["epoch"]), int(values["batch"])


def test_a_killed_fit_resumes_mid_epoch_and_at_an_epoch_end_bitwise_equal_to_a_straight_fit(tmp_path, capsys):
    """8 batches an epoch, 3 epochs; killed after step 13 and after step 18, restarted each time."""
    straight = tmp_path / "straight.pt"
    lightning_worker.main(["--root", str(tmp_path / "straight"), "--out", str(straight), "--freq", "4"])
    root, out = tmp_path / "crashed", tmp_path / "crashed.pt"
    common = ["--root", str(root), "--out", str(out), "--freq", "4"]

    assert first_batch(run_helper("lightning_worker", *common, "--kill-at", "13")) == (0, 0, 0)
    # the newest checkpoint is step 12: epoch 1 after its 4th batch
    assert first_batch(run_helper("lightning_worker", *common, "--kill-at", "18")) == (12, 1, 4)
    # step 16 ended epoch 1, so the last restart (in this process) begins epoch 2 at its first batch
    capsys.readouterr()
    lightning_worker.main(common)
    assert first_batch(capsys.readouterr().out) == (16, 2, 0)

    expected, resumed = torch.load(straight), torch.load(out)
    assert resumed["global_step"] == expected["global_step"] == 24
    assert resumed["epoch"] == expected["epoch"] == 3
    for key, tensor in expected["model"].items():
        assert torch.equal(resumed["model"][key], tensor), key
    for key, value in expected["optimizer"]["state"].items():
        assert all(torch.equal(resumed["optimizer"]["state"][key][k], v) for k, v in value.items())
    assert torch.equal(resumed["rng"], expected["rng"])


def test_resume_together_with_lightnings_ckpt_path_is_refused(tmp_path):
    trainer = trainer_for(WeightslabCallback(root_log_dir=str(tmp_path / "a"), checkpoint_frequency=None), max_steps=2)
    model = Classifier()
    trainer.fit(model, loader())
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    again = trainer_for(WeightslabCallback(root_log_dir=str(tmp_path / "a"), resume=True), max_steps=4)
    with pytest.raises(ValueError, match=r"resume=True\) and trainer.fit\(ckpt_path="):
        again.fit(Classifier(), loader(), ckpt_path=tmp_path / "last.ckpt")


def test_a_module_class_defined_inside_a_function_is_checkpointed(tmp_path, caplog):
    class LocalModule(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(16, 4)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    callback = WeightslabCallback(root_log_dir=str(tmp_path), checkpoint_frequency=2)
    trainer_for(callback, max_steps=4).fit(LocalModule(), loader())
    types = [e.type for e in events(tmp_path)]
    assert "checkpoint_failed" not in types
    assert types.count("checkpoint_saved") == 3  # start (1), 2, 4
    warnings = [r.getMessage() for r in caplog.records if "cannot be pickled" in r.getMessage()]
    assert len(warnings) == 1 and "LocalModule" in warnings[0], "warned once, naming the class"


class FailsAfterStep5(Classifier):
    """Raises right after the optimizer's 5th step, before Lightning's batch end: a torn iteration."""

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        if self.trainer.global_step == 5:
            raise RuntimeError("out of memory, say")


def test_an_exception_mid_iteration_saves_nothing_of_it_and_the_next_fit_takes_the_system_over(tmp_path):
    callback = WeightslabCallback(root_log_dir=str(tmp_path), checkpoint_frequency=3)
    with pytest.raises(RuntimeError, match="out of memory"):
        trainer_for(callback, max_steps=8).fit(FailsAfterStep5(), loader())
    saved = sorted(e.step for e in events(tmp_path) if e.type == "checkpoint_saved")
    assert saved == [1, 3], "nothing of the torn iteration is saved as a final checkpoint"
    system = wle.current_system()
    assert system is not None, "left open: closing would have saved the torn state as final"
    trainer_for(callback, max_steps=3).fit(Classifier(), loader())
    assert wle.current_system() is None, "the next fit took the system over and closed it"
