"""A Hugging Face ``Trainer`` run for crash tests: a tiny GPT-2 (tied weights) built from a config.

No download: the model comes from ``GPT2Config`` and the data is random token ids (24 sequences,
batch 4, so 6 batches an epoch), trained with AdamW under a linear warmup schedule, with
dropout. The only library line is the callback, with ``resume=True``. ``--kill-at N`` waits
until the checkpoints scheduled so far are durable, then SIGKILLs the process at the end of step
N. It prints where training starts and writes the final weights and counters to ``--out``.

    python tests/helpers/hf_worker.py --root R --out final.pt [--freq 3] [--kill-at 13] [--accumulate 1]
"""

from __future__ import annotations

import argparse
import os
import signal

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

from weightslab_events.integrations.huggingface import WeightslabTrainerCallback


class TokenData(torch.utils.data.Dataset):
    def __init__(self, count: int = 24, length: int = 16) -> None:
        generator = torch.Generator().manual_seed(7)
        self.ids = torch.randint(0, 64, (count, length), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=64,
        n_positions=16,
        n_embd=32,
        n_layer=2,
        n_head=2,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config)


class KillAt(TrainerCallback):
    """Reports where training starts; SIGKILLs the process at the end of a given step."""

    def __init__(self, step: int | None, checkpoints: WeightslabTrainerCallback) -> None:
        self.step = step
        self.checkpoints = checkpoints
        self.reported = False

    def on_step_begin(self, args, state, control, **kwargs):
        if not self.reported:
            self.reported = True
            print(f"first step: global_step={state.global_step}", flush=True)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.checkpoints.system.wait()
            os.kill(os.getpid(), signal.SIGKILL)


def arguments(output_dir: str, accumulate: int, epochs: int) -> TrainingArguments:
    return TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=epochs,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=accumulate,
        learning_rate=3e-3,
        warmup_steps=4,
        lr_scheduler_type="linear",
        weight_decay=0.01,
        seed=0,
        use_cpu=True,
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--freq", type=int, default=3)
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--accumulate", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)

    model = tiny_gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight, "the output layer is tied to the embedding"
    checkpoints = WeightslabTrainerCallback(root_log_dir=args.root, checkpoint_frequency=args.freq, resume=True)
    trainer = Trainer(
        model=model,
        args=arguments(os.path.join(args.root, "hf"), args.accumulate, args.epochs),
        train_dataset=TokenData(),
        callbacks=[checkpoints, KillAt(args.kill_at, checkpoints)],
    )
    trainer.train()
    torch.save(
        {
            "model": {k: v.clone() for k, v in model.state_dict().items()},
            "global_step": trainer.state.global_step,
            "epoch": trainer.state.epoch,
            "rng": torch.get_rng_state(),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
