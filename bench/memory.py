"""Peak extra host memory while saving every step, against the size of the state.

A sampler thread reads the process's resident memory (``/proc/self/statm``) while a model of
about 100 MB (plus Adam, about 300 MB of state) trains and saves every step; the peak above the
resident memory before the first save is divided by the state size. The bound the library
promises is ``max_pending + 1`` times the state.

    python bench/memory.py --steps 12
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time

import torch
from torch import nn

import weightslab_events as wle

PAGE = os.sysconf("SC_PAGE_SIZE")


def resident() -> int:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * PAGE


def measure(max_pending: int, steps: int) -> tuple[float, int]:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(2048, 2048) for _ in range(6)])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(8, 2048)

    def step() -> None:
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    state += sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values())
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], resident())
            time.sleep(0.002)

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as root:
        system = wle.get_checkpoint_system(root, checkpoint_frequency=1, max_pending=max_pending)
        wle.register_model("model", model)
        wle.register_optimizer("optimizer", optimizer)
        base = resident()
        sampler = threading.Thread(target=sample)
        sampler.start()
        for _ in range(steps):
            step()
        system.close()
        stop.set()
        sampler.join()
    return (peak[0] - base) / state, state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for max_pending in (1, 2):
        ratio, state = measure(max_pending, args.steps)
        print(
            f"max_pending={max_pending}: peak extra resident memory {ratio:.2f}x the state "
            f"({state / 1e6:.0f} MB); bound {max_pending + 1}x"
        )


if __name__ == "__main__":
    main()
