"""Per-step overhead in executed instructions, which machine noise does not move.

Runs the loop of ``bench/step_overhead.py`` (MLP 784-256-10, batch 64, Adam) under valgrind's
callgrind, plain and instrumented, each with two step counts; the difference between the two
counts cancels start-up (importing torch, building the model) and leaves instructions per step.
Only the training (main) thread is counted (``--separate-threads=yes``): other threads run beside
it on other cores, and their counts depend on wall time under valgrind (timed waits, OpenMP spin
loops), which made whole-process totals move by several percent between runs. OpenMP is kept to
one passive thread for the same reason. Instruction counts ignore cache misses, so this
complements the timed A/B, it does not replace it.

    python bench/step_instructions.py --short 50 --long 150
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile


def child(mode: str, steps: int) -> None:
    import torch
    from torch import nn

    import weightslab_events as wle

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 784), torch.randint(0, 10, (64,))
    with tempfile.TemporaryDirectory() as root:
        if mode == "instrumented":
            system = wle.get_checkpoint_system(root, checkpoint_frequency=10**9)
            wle.register_model("model", model)
            wle.register_optimizer("optimizer", optimizer)
            wle.register_hyperparams("config", {"lr": 1e-3, "batch_size": 64})
        for _ in range(steps):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if mode == "instrumented":
            system.close()


def instructions(mode: str, steps: int) -> int:
    with tempfile.TemporaryDirectory() as out:
        target = os.path.join(out, "cg.out")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--separate-threads=yes",
                f"--callgrind-out-file={target}",
                sys.executable,
                __file__,
                "--child",
                mode,
                str(steps),
            ],
            check=True,
            capture_output=True,
            env=env,
        )
        with open(f"{target}-01") as file:  # thread 1: the training thread
            match = re.search(r"^(?:summary|totals): (\d+)", file.read(), re.M)
        assert match, "callgrind wrote no total"
        return int(match.group(1))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", type=int, default=50)
    parser.add_argument("--long", type=int, default=150)
    args = parser.parse_args()
    per_step = {}
    for mode in ("plain", "instrumented"):
        short, long = instructions(mode, args.short), instructions(mode, args.long)
        per_step[mode] = (long - short) / (args.long - args.short)
        print(f"{mode:13s} {per_step[mode] / 1e6:8.3f} M instructions/step")
    extra = per_step["instrumented"] - per_step["plain"]
    print(f"overhead      {extra / 1e3:8.1f} k instructions/step = {extra / per_step['plain'] * 100:+.2f}%")


if __name__ == "__main__":
    main()
