"""The hash sees everything that defines the experiment, and nothing that does not."""

from __future__ import annotations

import functools
import json
import logging
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import load, mlp, train
from torch import nn

import weightslab_events as wle

HASHES_OF_SCHEDULES = textwrap.dedent(
    """
    import functools, json, sys, tempfile
    import torch
    import weightslab_events as wle

    def warmup(num_warmup, num_total):
        def factor(step):
            return step / num_warmup if step < num_warmup else max(0.0, (num_total - step) / (num_total - num_warmup))
        return factor

    def linear(step, *, num_warmup, num_total):
        return step / num_warmup if step < num_warmup else max(0.0, (num_total - step) / (num_total - num_warmup))

    schedules = {
        "0.97**e": lambda e: 0.97**e,
        "0.5**e": lambda e: 0.5**e,
        "1.0": lambda e: 1.0,
        "warmup(5, 40)": warmup(5, 40),
        "warmup(100, 1000)": warmup(100, 1000),
        "partial(5, 40)": functools.partial(linear, num_warmup=5, num_total=40),
        "partial(100, 1000)": functools.partial(linear, num_warmup=100, num_total=1000),
    }
    hashes = {}
    for label, schedule in schedules.items():
        system = wle.get_checkpoint_system(tempfile.mkdtemp(), checkpoint_frequency=None)
        torch.manual_seed(0)
        model = wle.register_model("model", torch.nn.Linear(4, 2))
        optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
        wle.register_scheduler("scheduler", torch.optim.lr_scheduler.LambdaLR(optimizer, schedule))
        hashes[label] = system.experiment_hash
        system.close()
    print(json.dumps(hashes))
    """
)


def test_scheduler_functions_are_described_by_what_they_compute_the_same_in_every_process():
    runs = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", HASHES_OF_SCHEDULES], capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(2)
    ]
    assert runs[0] == runs[1], "the same functions must give the same hashes in another process"
    assert len(set(runs[0].values())) == len(runs[0]), f"every schedule is its own experiment: {runs[0]}"


def test_a_function_swapped_inside_the_hyperparameters_forks(setup):
    system, model, optimizer, config, _rec = setup(checkpoint_frequency=None)
    config["schedule"] = functools.partial(pow, 0.97)
    train(model, optimizer, 1)
    before = system.experiment_hash
    config.raw["schedule"] = functools.partial(pow, 0.5)
    train(model, optimizer, 1)
    assert system.experiment_hash != before
    system.close()


def test_a_value_that_cannot_be_described_names_its_key(make_system):
    make_system()
    with pytest.raises(wle.NotDescribableError, match=r"'config\.loader'"):
        wle.register_hyperparams("config", {"loader": object()})


@pytest.mark.parametrize(
    ("a", "b"), [({1: "x"}, {"1": "x"}), ({"v": float("inf")}, {"v": "inf"}), ({"v": 1}, {"v": 1.0})]
)
def test_values_of_different_types_give_different_hashes(root, a, b):
    hashes = []
    for values in (a, b):
        system = wle.get_checkpoint_system(root, checkpoint_frequency=None)
        wle.register_hyperparams("config", values)
        hashes.append(system.experiment_hash)
        system.close()
    assert hashes[0] != hashes[1]


def test_the_configured_lr_is_the_same_whether_the_warmup_scheduler_is_built_before_or_after(root, caplog):
    hashes = []
    for scheduler_first in (True, False):
        system = wle.get_checkpoint_system(root, checkpoint_frequency=None)
        model = wle.register_model("model", mlp())
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.005)
        if scheduler_first:
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: min(1.0, e / 10))
            wle.register_optimizer("optimizer", optimizer)
        else:
            wle.register_optimizer("optimizer", optimizer)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: min(1.0, e / 10))
        wle.register_scheduler("scheduler", scheduler)
        described = system.hashing.components["optimizer:optimizer"]["groups"][0]["lr"]
        assert described == 0.005
        hashes.append(system.experiment_hash)
        train(model, optimizer, 3, scheduler)
        assert system.experiment_hash == hashes[-1], "scheduler moves never fork"
        system.close()
    assert hashes[0] == hashes[1]


def test_a_model_cast_to_another_dtype_forks_at_the_next_step(make_system, root):
    system = make_system(checkpoint_frequency=2)
    model = wle.register_model("model", mlp())
    optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    train(model, optimizer, 2)
    float32_hash = system.experiment_hash
    system.close()

    system = make_system(checkpoint_frequency=2)
    model = wle.register_model("model", mlp().double())
    optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    system.resume(hash=float32_hash)
    x = torch.randn(16, 8, dtype=torch.float64)
    for _ in range(2):
        optimizer.zero_grad()
        model(x).sum().backward()
        optimizer.step()
    float64_hash = system.experiment_hash
    assert float64_hash != float32_hash
    model.half()  # a cast in the middle of training is noticed by the next step as well
    optimizer.zero_grad()
    optimizer.step()
    assert system.experiment_hash not in (float32_hash, float64_hash)
    system.close()
    for record in system.store.records(float32_hash):
        weights = load(system.store.file_of(float32_hash, record))["models"]["model"]
        assert all(t.dtype == torch.float32 for t in weights.values()), "no float64 weights under the float32 hash"


def test_one_model_under_two_names_is_refused_with_a_clear_error(make_system):
    make_system()
    model = mlp()
    wle.register_model("a", model)
    with pytest.raises(ValueError, match=r"register_model\('b', \.\.\.\): it is already registered in model 'a'"):
        wle.register_model("b", model)
    with pytest.raises(ValueError, match=r"its module '0' is already registered in model 'a' as its module '0'"):
        wle.register_model("c", nn.Sequential(model[0]))
    wle.register_model("a", model)  # registering it again under its own name is a replacement


def test_a_scheduler_that_undoes_a_user_edit_is_named_in_one_warning(setup, caplog):
    system, model, optimizer, *_ = setup(checkpoint_frequency=None)
    scheduler = wle.register_scheduler("warmup", torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 0.9**e))
    with caplog.at_level(logging.WARNING, logger="weightslab_events"):
        train(model, optimizer, 2, scheduler)
        for _ in range(2):
            optimizer.param_groups[0]["lr"] = 0.01
            train(model, optimizer, 2, scheduler)
    undone = [r.getMessage() for r in caplog.records if "undone" in r.getMessage()]
    assert len(undone) == 1 and "scheduler 'warmup' (LambdaLR)" in undone[0] and "0.01" in undone[0]
    system.close()


def test_a_scheduler_that_keeps_user_edits_gives_no_warning(setup, caplog):
    system, model, optimizer, *_ = setup(checkpoint_frequency=None)
    scheduler = wle.register_scheduler("decay", torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5))
    with caplog.at_level(logging.WARNING, logger="weightslab_events"):
        train(model, optimizer, 2, scheduler)
        optimizer.param_groups[0]["lr"] *= 3
        train(model, optimizer, 2, scheduler)
    assert not [r for r in caplog.records if "undone" in r.getMessage()]
    system.close()


def test_a_layer_swapped_in_without_a_new_optimizer_is_named_in_one_warning(setup, caplog):
    system, model, optimizer, *_ = setup(checkpoint_frequency=None)
    with caplog.at_level(logging.WARNING, logger="weightslab_events"):
        train(model, optimizer, 2)
        assert not [r for r in caplog.records if "no registered optimizer" in r.getMessage()]
        model[2] = nn.Linear(16, 3)
        train(model, optimizer, 3)
    stale = [r.getMessage() for r in caplog.records if "no registered optimizer" in r.getMessage()]
    assert len(stale) == 1 and "model:2.weight, model:2.bias" in stale[0]
    wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    caplog.clear()
    train(model, wle.get_optimizer("optimizer"), 2)
    assert not [r for r in caplog.records if "no registered optimizer" in r.getMessage()]
    system.close()


def test_auto_resume_fires_once_even_when_the_optimizer_is_registered_again(make_system):
    def run(system: wle.CheckpointSystem) -> None:
        model = wle.register_model("model", mlp())
        optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
        while system.step < 20:
            if system.step == 10:  # the user's own rebuild of the optimizer with another lr
                optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.05))
                steps_at_rebuild.append(system.step)
            train(model, optimizer, 1)
        system.close()

    steps_at_rebuild: list[int] = []
    run(make_system(checkpoint_frequency=5))
    run(make_system(checkpoint_frequency=5, resume=True))  # resumes the first hash at step 10
    assert steps_at_rebuild == [10, 10]
    system = make_system(checkpoint_frequency=5, resume=True)
    model = wle.register_model("model", mlp())
    wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    assert system.step == 10
    wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.05))
    assert system.step == 10, "the second hash's step-20 checkpoint must not be resumed as well"
    system.close()


@pytest.fixture
def one_rank_group():
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("wrap", ["compile", "ddp"])
def test_a_wrapped_model_has_the_plain_models_hash_and_keys_and_resumes_across(make_system, wrap, request):
    def wrapped(model: nn.Module) -> nn.Module:
        if wrap == "compile":
            return torch.compile(model, backend="eager")
        request.getfixturevalue("one_rank_group")
        return nn.parallel.DistributedDataParallel(model)

    system = make_system(checkpoint_frequency=3)
    plain = wle.register_model("model", mlp())
    optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(plain.parameters(), lr=0.1))
    plain_hash = system.experiment_hash
    train(plain, optimizer, 3)
    system.close()

    system = make_system(checkpoint_frequency=3, resume=True)
    model = wle.register_model("model", wrapped(mlp(seed=5)))
    assert wle.get_model("model") is not model
    optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    assert system.experiment_hash == plain_hash and system.step == 3, "resume=True continues the plain run"
    train(model, optimizer, 3)
    system.close()
    saved = load(system.store.checkpoint_path(plain_hash, 6))["models"]["model"]
    assert set(saved) == set(mlp().state_dict()), "the keys are the plain module's"

    system = make_system(checkpoint_frequency=3)
    again = wle.register_model("model", mlp(seed=9))
    wle.register_optimizer("optimizer", torch.optim.SGD(again.parameters(), lr=0.1))
    assert system.resume(hash=plain_hash) == 6
    assert torch.equal(again[0].weight, model.module[0].weight if wrap == "ddp" else model._orig_mod[0].weight)
    system.close()


def test_a_sequential_schedule_is_described_by_its_parts_and_milestones(root):
    def sequential(milestone: int, gamma: float) -> str:
        system = wle.get_checkpoint_system(root, checkpoint_frequency=None)
        model = wle.register_model("model", mlp())
        optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
        warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=milestone)
        decay = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)
        wle.register_scheduler(
            "scheduler", torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, decay], [milestone])
        )
        hash = system.experiment_hash
        system.close()
        return hash

    assert sequential(5, 0.9) == sequential(5, 0.9)
    assert len({sequential(5, 0.9), sequential(10, 0.9), sequential(5, 0.5)}) == 3


def test_hugging_face_warmup_schedules_hash_by_their_settings(root):
    transformers = pytest.importorskip("transformers")  # in the test extras with the HF integration
    hashes = []
    for warmup, total in ((5, 40), (100, 1000), (5, 40)):
        system = wle.get_checkpoint_system(root, checkpoint_frequency=None)
        model = wle.register_model("model", mlp())
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        scheduler = transformers.get_linear_schedule_with_warmup(optimizer, warmup, total)
        wle.register_optimizer("optimizer", optimizer)
        wle.register_scheduler("scheduler", scheduler)
        hashes.append(system.experiment_hash)
        system.close()
    assert hashes[0] == hashes[2] != hashes[1]
