"""Kill-and-resume matrix: each training variant run straight, SIGKILLed at a step, and resumed.

One Python process serves the whole matrix: it imports torch once and then forks a fresh child
per run, so every run starts from a process that has registered nothing (like a new process)
and a killed run really dies of SIGKILL. For each variant and kill step:

- ``bare``: the training loop without the library (run in the parent itself);
- ``straight``: the same loop with the library attached, saving every step;
- ``killed``: with ``resume=True``, SIGKILLed at the top of iteration ``kill`` (after ``wait()``,
  so every earlier checkpoint is durable and the resume must pick one of them);
- ``resumed``: the same command again in a fresh child: ``resume=True`` continues to the end.

Each loop edits the lr at the top of iteration ``EDIT + 1`` (one variant multiplies it), and
the library saves every ``FREQUENCY`` steps, so a kill at ``EDIT + 2`` resumes from the parent's
checkpoint of step ``EDIT``: the one a user edit must not leak into. Every run but the killed one
saves its final state to ``OUT/<variant>-<run>.pt``; the test compares them bitwise.

    python tests/helpers/matrix_worker.py --root R --out O --kills sgd_steplr:7,gan:3
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import weightslab_events as wle

STEPS = 8
EDIT = 4
FREQUENCY = 2


class Variant:
    """One training setup: builds its objects, registers them, runs one iteration, edits the lr."""

    def __init__(self) -> None:
        data = torch.Generator().manual_seed(99)
        self.x = torch.randn(64, 6, generator=data)
        self.y = torch.randint(0, 3, (64,), generator=data)
        self.sampler = torch.Generator().manual_seed(1234)
        self.model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Dropout(0.2), nn.Linear(12, 3))
        self.optimizer: torch.optim.Optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.scheduler: Any = None

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.randint(0, len(self.x), (8,), generator=self.sampler)
        return self.x[index], self.y[index]

    def register(self) -> None:
        wle.register_model("model", self.model)
        wle.register_optimizer("optimizer", self.optimizer)
        if self.scheduler is not None:
            wle.register_scheduler("scheduler", self.scheduler)
        wle.register_stateful("sampler", self.sampler)

    def iteration(self) -> None:
        x, y = self.batch()
        loss = nn.functional.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()

    def edit(self) -> None:
        self.optimizer.param_groups[0]["lr"] = 0.03

    def state(self) -> dict[str, Any]:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        state["sampler"] = self.sampler.get_state()
        state["rng"] = torch.get_rng_state()
        return state


class SgdStepLR(Variant):
    """SGD with momentum under StepLR; the lr edit is relative (``*=``)."""

    def __init__(self) -> None:
        super().__init__()
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=3, gamma=0.5)

    def edit(self) -> None:
        self.optimizer.param_groups[0]["lr"] *= 0.3


class AdamWWarmup(Variant):
    """AdamW with a LambdaLR warmup (a closure, as the usual helpers build it)."""

    def __init__(self) -> None:
        super().__init__()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=0.01, weight_decay=0.01)
        warmup = 4
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / warmup))


class Bf16Scaler(Variant):
    """bf16 autocast on CPU with a GradScaler that grows its scale every step."""

    def __init__(self) -> None:
        super().__init__()
        self.scaler = torch.amp.GradScaler("cpu", init_scale=256.0, growth_interval=1)

    def register(self) -> None:
        super().register()
        wle.register_stateful("scaler", self.scaler)

    def iteration(self) -> None:
        x, y = self.batch()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad()
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def state(self) -> dict[str, Any]:
        return {**super().state(), "scaler": self.scaler.state_dict()}


class DFirstGan(Variant):
    """A GAN with two Adams: the discriminator is registered first and steps first."""

    def __init__(self) -> None:
        super().__init__()
        self.generator = nn.Sequential(nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 6))
        self.discriminator = nn.Sequential(nn.Linear(6, 12), nn.LeakyReLU(0.2), nn.Linear(12, 1))
        self.d_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=2e-3, betas=(0.5, 0.9))
        self.g_optimizer = torch.optim.Adam(self.generator.parameters(), lr=2e-3, betas=(0.5, 0.9))

    def register(self) -> None:
        wle.register_model("discriminator", self.discriminator)
        wle.register_model("generator", self.generator)
        wle.register_optimizer("d_optimizer", self.d_optimizer)
        wle.register_optimizer("g_optimizer", self.g_optimizer)
        wle.register_stateful("sampler", self.sampler)

    def iteration(self) -> None:
        real, _ = self.batch()
        bce = nn.functional.binary_cross_entropy_with_logits
        fake = self.generator(torch.randn(8, 4))
        d_loss = bce(self.discriminator(real), torch.ones(8, 1)) + bce(
            self.discriminator(fake.detach()), torch.zeros(8, 1)
        )
        self.d_optimizer.zero_grad()
        d_loss.backward()
        self.d_optimizer.step()
        g_loss = bce(self.discriminator(self.generator(torch.randn(8, 4))), torch.ones(8, 1))
        self.g_optimizer.zero_grad()
        g_loss.backward()
        self.g_optimizer.step()

    def edit(self) -> None:
        self.g_optimizer.param_groups[0]["lr"] = 5e-4

    def state(self) -> dict[str, Any]:
        return {
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "d_optimizer": self.d_optimizer.state_dict(),
            "g_optimizer": self.g_optimizer.state_dict(),
            "sampler": self.sampler.get_state(),
            "rng": torch.get_rng_state(),
        }


class Accumulation(Variant):
    """Gradient accumulation: three micro-batches per optimizer step."""

    def iteration(self) -> None:
        self.optimizer.zero_grad()
        for _ in range(3):
            x, y = self.batch()
            (nn.functional.cross_entropy(self.model(x), y) / 3).backward()
        self.optimizer.step()


class BatchNorm(Variant):
    """A model with BatchNorm, whose running statistics change in every forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 3))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=0.9)


VARIANTS: dict[str, Callable[[], Variant]] = {
    "sgd_steplr": SgdStepLR,
    "adamw_lambda": AdamWWarmup,
    "bf16_scaler": Bf16Scaler,
    "gan": DFirstGan,
    "accumulation": Accumulation,
    "batchnorm": BatchNorm,
}


def train(name: str, root: str | None, out: str | None, kill_at: int | None = None) -> None:
    """One run of one variant; with ``root`` the library is attached and resumes by itself."""
    torch.manual_seed(0)
    variant = VARIANTS[name]()
    system = wle.get_checkpoint_system(root, checkpoint_frequency=FREQUENCY, resume=True) if root else None
    if system is not None:
        variant.register()
    step = system.step if system is not None else 0
    while step < STEPS:
        if kill_at is not None and step == kill_at:
            assert system is not None
            system.wait()
            os.kill(os.getpid(), signal.SIGKILL)
        if step == EDIT:
            variant.edit()
        variant.iteration()
        step = system.step if system is not None else step + 1
    if system is not None:
        system.close()
    if out is not None:
        torch.save(variant.state(), out)


def in_child(run: Callable[[], None]) -> int:
    """Run ``run`` in a forked child (a process that has registered nothing); returns its wait status."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            run()
        except BaseException:  # noqa: BLE001 - the child reports any failure through its exit code
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--kills", required=True, help="variant:step,... (a variant may appear twice)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # no intra-op thread pool in the parent: forking stays safe
    failures = []
    kills = [(name, int(step)) for name, step in (item.split(":") for item in args.kills.split(","))]
    for name in dict.fromkeys(name for name, _ in kills):
        train(name, None, os.path.join(args.out, f"{name}-bare.pt"))  # no library: the parent may run it
        root, out = os.path.join(args.root, name, "straight"), os.path.join(args.out, f"{name}-straight.pt")
        if os.waitstatus_to_exitcode(in_child(lambda n=name, r=root, o=out: train(n, r, o))) != 0:
            failures.append(f"{name} straight failed")
    for name, kill in kills:
        root = os.path.join(args.root, name, f"kill{kill}")
        status = in_child(lambda n=name, r=root, k=kill: train(n, r, None, kill_at=k))
        if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
            failures.append(f"{name} was to be killed at step {kill}, exit status {status}")
            continue
        out = os.path.join(args.out, f"{name}-kill{kill}.pt")
        if os.waitstatus_to_exitcode(in_child(lambda n=name, r=root, o=out: train(n, r, o))) != 0:
            failures.append(f"{name} resumed after a kill at {kill} failed")
    print("\n".join(failures) or "ok", flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
