"""Hugging Face ``Trainer`` with one line: ``WeightslabTrainerCallback`` checkpoints training by itself.

Trains a tiny GPT-2 (built from ``GPT2Config``, tied embeddings, nothing downloaded) on random
tokens for 2 epochs. At step 6 a callback turns weight decay off through the Trainer's optimizer
(an accelerate wrapper, registered for you), the way a user would: that forks a new experiment.
After a crash, the same script with ``WeightslabTrainerCallback(..., resume=True)`` continues
from the newest checkpoint of the experiment it registers, bitwise as if never stopped.

    python examples/huggingface_trainer.py [--root ./hf-demo]
"""

from __future__ import annotations

import argparse
import shutil

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

import weightslab_events as wle
from weightslab_events.integrations.huggingface import WeightslabTrainerCallback
from weightslab_events.tree import render_tree


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, count: int = 24, length: int = 16) -> None:
        self.ids = torch.randint(0, 64, (count, length), generator=torch.Generator().manual_seed(7))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


class NoDecayAfterStep6(TrainerCallback):
    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        if state.global_step == 6:
            optimizer.param_groups[0]["weight_decay"] = 0.0  # a user edit: forks at the next step


def train(root: str, resume: bool) -> Trainer:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    args = TrainingArguments(
        output_dir=f"{root}/hf",
        num_train_epochs=2,
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        warmup_steps=2,
        weight_decay=0.01,
        use_cpu=True,
        report_to=[],
        logging_strategy="no",
        save_strategy="no",
        disable_tqdm=True,
    )
    callbacks = [
        WeightslabTrainerCallback(root_log_dir=root, checkpoint_frequency=4, resume=resume),
        NoDecayAfterStep6(),
    ]
    trainer = Trainer(model=GPT2LMHeadModel(config), args=args, train_dataset=RandomTokens(), callbacks=callbacks)
    trainer.train()
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="./hf-demo")
    args = parser.parse_args()
    shutil.rmtree(args.root, ignore_errors=True)

    trainer = train(args.root, resume=False)
    print(f"trained: global step {trainer.state.global_step}, epoch {trainer.state.epoch:g}")
    print("\nexperiment tree:")
    print(render_tree(wle.open_root(args.root)))


if __name__ == "__main__":
    main()
