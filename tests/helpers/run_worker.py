"""A training process for the run tests: several of these share one root, get killed, resume.

It prints ``ready <step>`` once registered, ``step <n>`` after every step (so a test can SIGKILL
it at a known point without sleeping) and writes every ``checkpoint_saved`` / ``checkpoint_failed``
it was told about to ``--report`` (JSON) when it finishes.

    python tests/helpers/run_worker.py --root R --steps 40 [--freq 1] [--seed 1] [--resume]
        [--cosine] [--report out.json]

A second mode opens the root again and again until ``--stop-file`` exists (a process that
starts up beside a training one), printing ``opened <count>`` after the first and at the end:

    python tests/helpers/run_worker.py --root R --open-loop --stop-file F
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

import weightslab_events as wle


def open_loop(root: str, stop_file: Path) -> None:
    count = 0
    while not stop_file.exists():
        system = wle.CheckpointSystem(root, checkpoint_frequency=None)
        system.close()
        count += 1
        if count == 1:
            print("opened 1", flush=True)
    print(f"opened {count}", flush=True)


def train(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    data_x = torch.randn(256, 16)
    data_y = torch.randint(0, 4, (256,))
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if args.cosine:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps)
    else:
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)
    sampler = torch.Generator().manual_seed(args.seed)
    outcomes: list[dict] = []

    def record(event: wle.Event) -> None:
        outcomes.append({"type": event.type, "hash": event.data["hash"], "step": event.step, **dict(event.data)})

    wle.subscribe("checkpoint_saved", record)
    wle.subscribe("checkpoint_failed", record)
    system = wle.get_checkpoint_system(args.root, checkpoint_frequency=args.freq, resume=args.resume)
    wle.register_model("model", model)
    wle.register_optimizer("optimizer", optimizer)
    wle.register_scheduler("scheduler", scheduler)
    wle.register_hyperparams("config", {"batch_size": 32})
    wle.register_stateful("sampler", sampler)
    print(f"ready {system.step}", flush=True)
    while system.step < args.steps:
        index = torch.randint(0, len(data_x), (32,), generator=sampler)
        loss = nn.functional.cross_entropy(model(data_x[index]), data_y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        print(f"step {system.step}", flush=True)
        if args.lockstep:
            sys.stdin.readline()  # the test says when to take the next step
    try:
        system.close()
    finally:
        if args.report:
            Path(args.report).write_text(json.dumps({"run": system.run.id, "outcomes": outcomes}))
    print("done", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--freq", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--lockstep", action="store_true", help="wait for a line on stdin after each step")
    parser.add_argument("--cosine", action="store_true")
    parser.add_argument("--report")
    parser.add_argument("--open-loop", action="store_true")
    parser.add_argument("--stop-file")
    args = parser.parse_args()
    if args.open_loop:
        open_loop(args.root, Path(args.stop_file))
    else:
        train(args)
    sys.exit(0)


if __name__ == "__main__":
    main()
