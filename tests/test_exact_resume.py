"""The checkpoint of step K is the state at the end of iteration K, so a resume is exact."""

from __future__ import annotations

import logging
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load, mlp, train
from test_crash import assert_bitwise_equal
from torch import nn

import weightslab_events as wle

WORKER = Path(__file__).parent / "helpers" / "matrix_worker.py"
VARIANTS = ["sgd_steplr", "adamw_lambda", "bf16_scaler", "gan", "accumulation", "batchnorm"]
STEPS, EDIT = 8, 4


def test_kill_and_resume_matrix_is_bitwise_equal_to_a_straight_run(tmp_path):
    """Each variant is killed (SIGKILL) at the step that resumes the edit's parent, and at a random step."""
    rng = random.Random(9)
    kills = [(name, EDIT + 2) for name in VARIANTS] + [(name, rng.randrange(1, STEPS)) for name in VARIANTS]
    out = tmp_path / "out"
    out.mkdir()
    command = [sys.executable, str(WORKER), "--root", str(tmp_path / "roots"), "--out", str(out)]
    command += ["--kills", ",".join(f"{name}:{step}" for name, step in kills)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    for name in VARIANTS:
        bare = torch.load(out / f"{name}-bare.pt", weights_only=True)
        runs = ["straight", *(f"kill{step}" for n, step in kills if n == name)]
        for run in runs:
            try:
                assert_bitwise_equal(bare, torch.load(out / f"{name}-{run}.pt", weights_only=True))
            except AssertionError:
                pytest.fail(f"{name}: the {run} run ends differently from training without the library")


def test_the_parents_checkpoint_holds_the_parents_lr_for_absolute_and_relative_edits(setup):
    system, model, optimizer, *_ = setup(checkpoint_frequency=2)
    scheduler = wle.register_scheduler("decay", torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5))
    train(model, optimizer, 2, scheduler)
    parent = system.experiment_hash
    optimizer.param_groups[0]["lr"] *= 0.3  # between step 2 and step 3: the child's edit
    train(model, optimizer, 1, scheduler)
    child = system.experiment_hash
    optimizer.param_groups[0]["lr"] = 0.5
    train(model, optimizer, 1, scheduler)
    system.close()
    saved = load(system.store.checkpoint_path(parent, 2))
    assert saved["optimizers"]["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.1 * 0.5**2)
    assert saved["schedulers"]["decay"]["last_epoch"] == 2, "the scheduler's move of step 2 is in"
    fork = load(system.store.checkpoint_path(child, 3))
    assert fork["optimizers"]["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.1 * 0.5**3 * 0.3)


def test_a_grad_scaler_is_captured_after_its_update(setup):
    system, model, optimizer, *_ = setup(checkpoint_frequency=5)
    scaler = wle.register_stateful("scaler", torch.amp.GradScaler("cpu", init_scale=128.0, growth_interval=1))
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    for _ in range(5):
        optimizer.zero_grad()
        scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
        scaler.step(optimizer)
        scaler.update()
    live = scaler.get_scale()
    system.close()
    saved = load(system.store.checkpoint_path(system.experiment_hash, 5))["statefuls"]["scaler"]
    assert saved["scale"] == live == 128.0 * 2**5


def test_a_stateful_that_settles_after_the_step_can_say_so(setup):
    class Counter:
        """Counts iterations in a callback that runs after optimizer.step()."""

        def __init__(self) -> None:
            self.done = 0

        def state_dict(self) -> dict:
            return {"done": self.done}

        def load_state_dict(self, state: dict) -> None:
            self.done = state["done"]

    system, model, optimizer, *_ = setup(checkpoint_frequency=3)
    early = wle.register_stateful("early", Counter())
    late = wle.register_stateful("late", Counter(), settles_after_step=True)
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        early.done += 1
        late.done += 1
    system.close()
    saved = load(system.store.checkpoint_path(system.experiment_hash, 3))["statefuls"]
    assert saved["early"] == {"done": 2} and saved["late"] == {"done": 3}


def gan_iteration(d, g, d_opt, g_opt, d_first: bool = True) -> None:
    def step_d() -> None:
        d_opt.zero_grad()
        d(torch.randn(4, 8)).sum().backward()
        d_opt.step()

    def step_g() -> None:
        g_opt.zero_grad()
        d(g(torch.randn(4, 8))).sum().backward()
        g_opt.step()

    for step in (step_d, step_g) if d_first else (step_g, step_d):
        step()


@pytest.mark.parametrize("d_first", [True, False])
def test_with_two_optimizers_a_checkpoint_holds_both_updates_of_its_iteration(make_system, d_first):
    system = make_system(checkpoint_frequency=1)
    d = wle.register_model("d", nn.Linear(8, 1))
    g = wle.register_model("g", nn.Linear(8, 8))
    d_opt = wle.register_optimizer("d_opt", torch.optim.Adam(d.parameters(), lr=0.01))
    g_opt = wle.register_optimizer("g_opt", torch.optim.Adam(g.parameters(), lr=0.01))
    for step in range(1, 6):
        gan_iteration(d, g, d_opt, g_opt, d_first)
        expected = {k: v.clone() for k, v in g.state_dict().items()}
        system.wait()
        saved = load(system.store.checkpoint_path(system.experiment_hash, step))
        assert all(torch.equal(saved["models"]["g"][k], v) for k, v in expected.items()), f"G's update of step {step}"
        assert saved["optimizers"]["g_opt"]["state"][0]["step"] == step
    system.close()


def test_an_optimizer_that_stops_stepping_is_warned_about_once(make_system, caplog):
    system = make_system(checkpoint_frequency=1)
    d = wle.register_model("d", nn.Linear(8, 1))
    g = wle.register_model("g", nn.Linear(8, 8))
    d_opt = wle.register_optimizer("d_opt", torch.optim.Adam(d.parameters(), lr=0.01))
    g_opt = wle.register_optimizer("g_opt", torch.optim.Adam(g.parameters(), lr=0.01))
    with caplog.at_level(logging.WARNING, logger="weightslab_events"):
        for _ in range(4):
            gan_iteration(d, g, d_opt, g_opt)
        for _ in range(3):
            d_opt.zero_grad()
            d(torch.randn(4, 8)).sum().backward()
            d_opt.step()
        system.close()
    missed = [r for r in caplog.records if "did not step in iteration" in r.getMessage()]
    assert len(missed) == 1 and "iteration 5" in missed[0].getMessage()
    assert [r["step"] for r in system.store.records(system.experiment_hash)] == list(range(1, 8))


def test_a_user_edit_of_hyperparameters_between_steps_is_not_in_the_parents_checkpoint(setup):
    system, model, optimizer, config, _rec = setup(checkpoint_frequency=2)
    train(model, optimizer, 2)
    parent = system.experiment_hash
    config["batch_size"] = 64
    train(model, optimizer, 1)
    system.close()
    assert load(system.store.checkpoint_path(parent, 2))["hyperparams"]["config"]["batch_size"] == 16


def test_wait_in_the_middle_of_training_still_gives_the_end_of_the_step(setup):
    system, model, optimizer, *_ = setup(checkpoint_frequency=3)
    model_copy = mlp()
    train(model, optimizer, 3)
    model_copy.load_state_dict(model.state_dict())
    system.wait()
    saved = load(system.store.checkpoint_path(system.experiment_hash, 3))["models"]["model"]
    assert all(torch.equal(saved[k], v) for k, v in model_copy.state_dict().items())
    system.close()


def test_optimizers_stepping_in_no_fixed_order_are_warned_about_once(make_system, caplog):
    system = make_system(checkpoint_frequency=1)
    d = wle.register_model("d", nn.Linear(8, 1))
    g = wle.register_model("g", nn.Linear(8, 8))
    d_opt = wle.register_optimizer("d_opt", torch.optim.Adam(d.parameters(), lr=0.01))
    g_opt = wle.register_optimizer("g_opt", torch.optim.Adam(g.parameters(), lr=0.01))
    with caplog.at_level(logging.WARNING, logger="weightslab_events"):
        for iteration in range(10):
            gan_iteration(d, g, d_opt, g_opt, d_first=iteration % 3 != 0)
        system.close()
    unordered = [r for r in caplog.records if "no fixed order" in r.getMessage()]
    assert len(unordered) == 1
    assert [r["step"] for r in system.store.records(system.experiment_hash)] == list(range(1, 11))
