"""Lightning with one line: ``WeightslabCallback`` checkpoints a fit by itself.

Trains a small classifier for 2 epochs. Then a second ``fit`` of a fresh model with
``resume=True`` and two more epochs continues from the last checkpoint (global step 16, epoch 2),
as after a crash; after its epoch 2 the module lowers its learning rate through
``self.optimizers()`` (the ``LightningOptimizer`` wrapper), the way a user would, which forks a
new experiment hash.

    python examples/lightning_fit.py [--root ./lightning-demo]
"""

from __future__ import annotations

import argparse
import shutil

import lightning.pytorch as pl
import torch
from torch import nn

import weightslab_events as wle
from weightslab_events.integrations.lightning import WeightslabCallback
from weightslab_events.tree import render_tree


class Classifier(pl.LightningModule):
    def __init__(self, lr: float = 0.05, hidden: int = 32) -> None:
        super().__init__()
        self.save_hyperparameters()  # registered as "hparams": editing them forks too
        self.net = nn.Sequential(nn.Linear(16, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, 4))
        self.lower_lr_after_epoch: int | None = None

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def on_train_epoch_end(self) -> None:
        if self.current_epoch == self.lower_lr_after_epoch:
            self.optimizers().param_groups[0]["lr"] = 0.01  # a user edit: forks at the next step

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.9)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def fit(root: str, epochs: int, resume: bool, lower_lr_after_epoch: int | None = None) -> pl.Trainer:
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 16), torch.randint(0, 4, (64,)))
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        callbacks=[WeightslabCallback(root_log_dir=root, checkpoint_frequency=8, resume=resume)],  # the one line
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = Classifier()
    model.lower_lr_after_epoch = lower_lr_after_epoch
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=8, shuffle=True))
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="./lightning-demo")
    args = parser.parse_args()
    shutil.rmtree(args.root, ignore_errors=True)

    trainer = fit(args.root, epochs=2, resume=False)
    print(f"first fit: ended at global step {trainer.global_step}, epoch {trainer.current_epoch}")
    trainer = fit(args.root, epochs=4, resume=True, lower_lr_after_epoch=2)
    print(f"resumed fit: ended at global step {trainer.global_step}, epoch {trainer.current_epoch}")
    print("\nexperiment tree:")
    print(render_tree(wle.open_root(args.root)))


if __name__ == "__main__":
    main()
