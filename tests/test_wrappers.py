"""Wrapped optimizers (issue 9): accelerate's and Lightning's wrappers are registered as they are handed out."""

from __future__ import annotations

import lightning.pytorch as lightning
import pytest
import torch
from accelerate import Accelerator
from conftest import batch, mlp
from torch import nn

import weightslab_events as wle


def forks(system: wle.CheckpointSystem) -> list[str]:
    return [d.name for d in (system.root / "checkpoints").iterdir() if d.is_dir()]


def test_an_accelerated_optimizer_is_counted_and_its_edits_fork(tmp_path):
    system = wle.get_checkpoint_system(tmp_path, checkpoint_frequency=None)
    accelerator = Accelerator(cpu=True)
    model = mlp()
    model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert type(optimizer).__name__ == "AcceleratedOptimizer"
    wle.register_model("model", model)
    assert wle.register_optimizer("optimizer", optimizer) is optimizer, "the user keeps the wrapper they passed"
    assert wle.get_optimizer("optimizer") is optimizer.optimizer
    x, y = batch()
    for step in range(6):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        accelerator.backward(loss)
        optimizer.step()
        if step == 2:
            optimizer.param_groups[0]["lr"] = 0.01  # through the wrapper, as a user of accelerate writes it
    assert system.step == 6
    first = system.experiment_hash
    system.close()
    assert len(forks(system)) == 2, "the lr edit made through the wrapper forked"
    assert first is not None


def test_accelerate_gradient_accumulation_counts_real_steps_only(tmp_path):
    system = wle.get_checkpoint_system(tmp_path, checkpoint_frequency=None)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model = mlp()
    model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    wle.register_model("model", model)
    wle.register_optimizer("optimizer", optimizer)
    x, y = batch()
    for _ in range(8):
        with accelerator.accumulate(model):
            loss = nn.functional.cross_entropy(model(x), y)
            accelerator.backward(loss)
            optimizer.step()  # a no-op on accumulating micro-batches
            optimizer.zero_grad()
    assert system.step == 4


class CountingModule(lightning.LightningModule):
    """Registers ``self.optimizers()`` (a ``LightningOptimizer``) the way a user would, and edits its lr."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def on_train_start(self) -> None:
        optimizer = self.optimizers()
        assert type(optimizer).__name__.startswith("Lightning")
        wle.register_model("model", self.net)
        wle.register_optimizer("optimizer", optimizer)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.global_step == 3:
            self.optimizers().param_groups[0]["lr"] = 0.01

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_lightning_optimizer_is_counted_and_its_edits_fork(tmp_path):
    x, y = batch()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    system = wle.get_checkpoint_system(tmp_path, checkpoint_frequency=None)
    trainer = lightning.Trainer(
        max_steps=6,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(CountingModule(), loader)
    assert system.step == trainer.global_step == 6
    system.close()
    assert len(forks(system)) == 2


class HiddenWrapper(torch.optim.Optimizer):
    """A wrapper that never called ``Optimizer.__init__`` and hides what it wraps: unsupported."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self._hidden = [optimizer]

    @property
    def param_groups(self):
        return self._hidden[0].param_groups

    def step(self, closure=None):
        return self._hidden[0].step(closure)


class SharingWrapper(HiddenWrapper):
    """A wrapper no one told us about, holding its optimizer in a plain attribute: unwrapped."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.inner = optimizer
        self._hidden = [optimizer]


def test_an_unknown_wrapper_is_refused_at_registration_naming_it(tmp_path):
    wle.get_checkpoint_system(tmp_path)
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(wle.UnsupportedOptimizerError, match=r"register_optimizer\('opt', ...\): HiddenWrapper"):
        wle.register_optimizer("opt", HiddenWrapper(optimizer))


def test_a_wrapper_holding_its_optimizer_in_an_attribute_is_unwrapped(tmp_path):
    system = wle.get_checkpoint_system(tmp_path, checkpoint_frequency=None)
    model = mlp()
    optimizer = SharingWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    wle.register_model("model", model)
    wle.register_optimizer("optimizer", optimizer)
    x, y = batch()
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(x), y)
        model.zero_grad()
        loss.backward()
        optimizer.step()
    assert system.step == 3
