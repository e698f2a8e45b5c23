"""A Lightning fit for crash tests: killed with SIGKILL by itself at a chosen step, then restarted.

A dropout network on shuffled data (``DataLoader(shuffle=True)``, 8 batches an epoch), a StepLR
stepped every batch and ``save_hyperparameters``; the only library line is the callback, with
``resume=True``. ``--kill-at N`` waits until the checkpoints scheduled so far are durable, then
SIGKILLs the process at the end of step N. It prints where the fit starts, and writes the final
weights, optimizer state and Lightning counters to ``--out``.

    python tests/helpers/lightning_worker.py --root R --out final.pt [--freq 3] [--kill-at 13] [--accumulate 1]
"""

from __future__ import annotations

import argparse
import os
import signal

import lightning.pytorch as pl
import torch
from torch import nn

from weightslab_events.integrations.lightning import WeightslabCallback


class Classifier(pl.LightningModule):
    def __init__(self, lr: float = 0.05, width: int = 32) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Dropout(0.3), nn.Linear(width, 4))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.8)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class KillAt(pl.Callback):
    """Reports where the fit starts; SIGKILLs the process at the end of a given step."""

    def __init__(self, step: int | None, checkpoints: WeightslabCallback) -> None:
        self.step = step
        self.checkpoints = checkpoints
        self.reported = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self.reported:
            self.reported = True
            print(f"first batch: global_step={trainer.global_step} epoch={trainer.current_epoch} batch={batch_idx}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            self.checkpoints.system.wait()
            os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--freq", type=int, default=3)
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--accumulate", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 16), torch.randint(0, 4, (64,)))
    loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True)
    model = Classifier()
    checkpoints = WeightslabCallback(root_log_dir=args.root, checkpoint_frequency=args.freq, resume=True)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        accumulate_grad_batches=args.accumulate,
        callbacks=[checkpoints, KillAt(args.kill_at, checkpoints)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=args.root,
    )
    trainer.fit(model, loader)
    optimizer = trainer.optimizers[0]
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "rng": torch.get_rng_state(),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
