"""The Hugging Face Trainer callback against the real ``transformers`` on CPU (issue 13)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_helper
from transformers import Trainer, TrainerCallback

import weightslab_events as wle
from weightslab_events.integrations.huggingface import WeightslabTrainerCallback, experiment_arguments

HELPERS = Path(__file__).parent / "helpers"
sys.path.insert(0, str(HELPERS))

import hf_worker  # noqa: E402


def events(root: Path) -> list[wle.Event]:
    return list(wle.read_events(root / "logs" / "events.jsonl"))


def test_training_arguments_that_define_the_experiment_are_hyperparameters(tmp_path):
    values = experiment_arguments(hf_worker.arguments(str(tmp_path / "out"), accumulate=2, epochs=3))
    assert values["learning_rate"] == 3e-3 and values["lr_scheduler_type"] == "linear"
    assert values["gradient_accumulation_steps"] == 2 and values["per_device_train_batch_size"] == 4
    assert values["warmup_steps"] == 4 and values["seed"] == 0 and values["weight_decay"] == 0.01
    assert not {"output_dir", "logging_strategy", "save_strategy", "report_to", "disable_tqdm"} & set(values)
    assert "optim" not in values, "adamw_torch vs adamw_torch_fused is a runtime choice; the optimizer is described"


def test_the_callback_registers_the_lazily_built_optimizer_and_counts_global_steps(tmp_path):
    callback = WeightslabTrainerCallback(root_log_dir=str(tmp_path), checkpoint_frequency=1)
    seen = []

    class Watch(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append((state.global_step, callback.system.step, type(wle.get_optimizer("optimizer")).__name__))

    trainer = Trainer(
        model=hf_worker.tiny_gpt2(),
        args=hf_worker.arguments(str(tmp_path / "hf"), accumulate=4, epochs=1),
        train_dataset=hf_worker.TokenData(),
        callbacks=[callback, Watch()],
    )
    trainer.train()
    # 6 batches, accumulating 4: steps after batches 4 and 6
    assert seen == [(1, 1, "AdamW"), (2, 2, "AdamW")]
    registered = {e.src for e in events(tmp_path) if e.type.endswith("_registered")}
    assert registered >= {"model", "optimizer", "scheduler", "training_args", "trainer_state"}
    (experiment,) = (tmp_path / "checkpoints").iterdir()
    config = yaml.safe_load((experiment / "hp" / f"{experiment.name}_config.yaml").read_text())
    assert "LambdaLR" in str(config["scheduler:scheduler"]) and "AdamW" in str(config["optimizer:optimizer"])
    assert "warmup_steps" in str(config["hyperparams:training_args"])
    assert wle.current_system() is None, "the callback closed the system it opened"


def test_a_killed_training_resumes_at_an_epoch_end_and_mid_epoch_bitwise_equal_to_a_straight_one(tmp_path, capsys):
    """Tiny GPT-2, 6 batches an epoch, 2 epochs, a checkpoint every 3 steps; killed after steps 7 and 10."""
    straight = tmp_path / "straight.pt"
    hf_worker.main(["--root", str(tmp_path / "straight"), "--out", str(straight), "--freq", "3"])
    root, out = tmp_path / "crashed", tmp_path / "crashed.pt"
    common = ["--root", str(root), "--out", str(out), "--freq", "3"]

    assert "first step: global_step=0" in run_helper("hf_worker", *common, "--kill-at", "7")
    # the newest checkpoint is step 6, the end of epoch 0
    assert "first step: global_step=6" in run_helper("hf_worker", *common, "--kill-at", "10")
    capsys.readouterr()
    hf_worker.main(common)  # the newest checkpoint is step 9: epoch 1 after its 3rd batch
    assert "first step: global_step=9" in capsys.readouterr().out

    expected, resumed = torch.load(straight), torch.load(out)
    assert resumed["global_step"] == expected["global_step"] == 12
    assert resumed["epoch"] == expected["epoch"] == 2.0
    for key, tensor in expected["model"].items():
        assert torch.equal(resumed["model"][key], tensor), key
    assert torch.equal(resumed["rng"], expected["rng"])


def test_resume_together_with_the_trainers_resume_from_checkpoint_is_refused(tmp_path):
    args = hf_worker.arguments(str(tmp_path / "hf"), accumulate=1, epochs=1)
    args.save_strategy, args.save_steps, args.max_steps = "steps", 2, 2
    first = WeightslabTrainerCallback(root_log_dir=str(tmp_path / "wle"), checkpoint_frequency=None)
    Trainer(model=hf_worker.tiny_gpt2(), args=args, train_dataset=hf_worker.TokenData(), callbacks=[first]).train()
    again = WeightslabTrainerCallback(root_log_dir=str(tmp_path / "wle"), resume=True)
    trainer = Trainer(model=hf_worker.tiny_gpt2(), args=args, train_dataset=hf_worker.TokenData(), callbacks=[again])
    with pytest.raises(ValueError, match=r"resume=True\) and trainer.train\(resume_from_checkpoint=...\)"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "hf" / "checkpoint-2"))


def test_after_a_train_that_raised_the_next_train_takes_the_system_over_and_closes_it(tmp_path):
    class Boom(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise RuntimeError("disk quota, say")

    callback = WeightslabTrainerCallback(root_log_dir=str(tmp_path / "wle"), checkpoint_frequency=2)
    args = hf_worker.arguments(str(tmp_path / "hf"), accumulate=1, epochs=1)
    model = hf_worker.tiny_gpt2()
    with pytest.raises(RuntimeError, match="disk quota"):
        Trainer(model=model, args=args, train_dataset=hf_worker.TokenData(), callbacks=[callback, Boom()]).train()
    assert wle.current_system() is not None
    Trainer(model=model, args=args, train_dataset=hf_worker.TokenData(), callbacks=[callback]).train()
    assert wle.current_system() is None
