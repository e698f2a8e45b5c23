"""Cost of the step-boundary change check on a deep model, against that model's own step.

The check runs before every optimizer step and grows with the number of modules and
parameters. This times it alone (``ModelWatch.check`` with nothing changed) and a plain training
step of the same model in the same run, and prints the ratio.

    python bench/boundary_check.py --blocks 200
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import timeit

import torch
from torch import nn

import weightslab_events as wle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=200)
    parser.add_argument("--width", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(
        *[nn.Sequential(nn.Linear(args.width, args.width), nn.LayerNorm(args.width)) for _ in range(args.blocks)]
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(32, args.width)

    def step() -> None:
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(5):
        step()
    steps = []
    for _ in range(20):
        start = time.perf_counter()
        step()
        steps.append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as root:
        system = wle.get_checkpoint_system(root)
        wle.register_model("model", model)
        watch = system._models["model"]
        n = 2000
        check = min(timeit.repeat(watch.check, number=n, repeat=5)) / n
        system.close()
    plain = statistics.median(steps)
    modules = sum(1 for _ in model.modules())
    parameters = sum(1 for _ in model.parameters())
    print(f"{modules} modules, {parameters} parameters")
    print(f"plain step {plain * 1e3:.2f} ms; boundary check {check * 1e6:.1f} us = {check / plain * 100:.2f}% of it")


if __name__ == "__main__":
    main()
