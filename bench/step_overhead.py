"""Per-step overhead of the instrumentation, with no save due.

An MLP 784-256-10, batch 64, Adam: the same loop timed plain and with the model, optimizer and
hyperparameters registered (checkpoint_frequency larger than the run). Rounds alternate between
the two so that machine noise hits both alike,
and the order within a round alternates; the ratio of medians is printed.

    python bench/step_overhead.py --steps 200 --rounds 15
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch import nn

import weightslab_events as wle


def make():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return model, optimizer


def run(model, optimizer, x, y, steps: int) -> float:
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def time_hooks(system) -> list[float]:
    """Wrap the system's step hooks with timers: [seconds in hooks, steps]."""
    totals = [0.0, 0]
    before, after = system._before_step, system._after_step

    def timed_before(*args):
        start = time.perf_counter()
        before(*args)
        totals[0] += time.perf_counter() - start

    def timed_after(*args):
        start = time.perf_counter()
        after(*args)
        totals[0] += time.perf_counter() - start
        totals[1] += 1

    system._before_step, system._after_step = timed_before, timed_after
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 = least noise)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x, y = torch.randn(64, 784), torch.randint(0, 10, (64,))

    plain_model, plain_opt = make()
    inst_model, inst_opt = make()
    with tempfile.TemporaryDirectory() as root:
        system = wle.get_checkpoint_system(root, checkpoint_frequency=10**9)
        hook_time = time_hooks(system)
        wle.register_model("model", inst_model)
        wle.register_optimizer("optimizer", inst_opt)
        wle.register_hyperparams("config", {"lr": 1e-3, "batch_size": 64, "sched": {"warmup": 10}})
        run(plain_model, plain_opt, x, y, 20)
        run(inst_model, inst_opt, x, y, 20)
        plain, inst = [], []
        for round_ in range(args.rounds):
            # Alternate which variant goes first: the second run of a pair is often slower here.
            if round_ % 2:
                inst.append(run(inst_model, inst_opt, x, y, args.steps))
                plain.append(run(plain_model, plain_opt, x, y, args.steps))
            else:
                plain.append(run(plain_model, plain_opt, x, y, args.steps))
                inst.append(run(inst_model, inst_opt, x, y, args.steps))
        system.close()
    p, i = statistics.median(plain), statistics.median(inst)
    in_hooks = hook_time[0] / hook_time[1]
    print(f"plain step        {p * 1e3:8.3f} ms (median of {args.rounds} rounds of {args.steps})")
    print(f"instrumented step {i * 1e3:8.3f} ms")
    print(f"overhead (A/B)    {(i - p) * 1e6:8.1f} us/step  ratio {i / p:.4f}  ({(i / p - 1) * 100:+.2f}%)")
    print(f"time in our hooks {in_hooks * 1e6:8.1f} us/step  = {in_hooks / p * 100:.2f}% of the plain step")


if __name__ == "__main__":
    main()
