"""A training process for crash tests: killed with SIGKILL by the test, then restarted.

It trains a small dropout network on shuffled data drawn with a registered generator, under a
StepLR, saving every ``--freq`` steps, with ``resume=True``: a restart with no code change picks
up where the killed run's last good checkpoint left off. At the end it writes the final model and
optimizer state to ``--out``.

    python tests/helpers/crash_worker.py --root R --steps 30 --out final.pt [--freq 1] [--width 256]
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn

import weightslab_events as wle


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--out")
    parser.add_argument("--freq", type=int, default=1)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--announce-saves", action="store_true", help="print 'saved STEP' as each commit lands")
    args = parser.parse_args()

    torch.manual_seed(0)
    data_x = torch.randn(512, 32)
    data_y = torch.randint(0, 4, (512,))
    model = nn.Sequential(nn.Linear(32, args.width), nn.ReLU(), nn.Dropout(0.3), nn.Linear(args.width, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.7)
    sampler = torch.Generator().manual_seed(1234)

    system = wle.get_checkpoint_system(args.root, checkpoint_frequency=args.freq, resume=True)
    if args.announce_saves:
        wle.subscribe("checkpoint_saved", lambda event: print(f"saved {event.step}", flush=True))
    wle.register_model("model", model)
    wle.register_optimizer("optimizer", optimizer)
    wle.register_scheduler("scheduler", scheduler)
    wle.register_hyperparams("config", {"batch_size": 32, "width": args.width})
    wle.register_stateful("sampler", sampler)
    print(f"ready {system.step}", flush=True)

    while system.step < args.steps:
        index = torch.randint(0, len(data_x), (32,), generator=sampler)
        loss = nn.functional.cross_entropy(model(data_x[index]), data_y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    system.close()
    if args.out:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, args.out)
    print(f"done {args.steps}", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
