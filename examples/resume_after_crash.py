"""A run killed with SIGKILL mid-training, restarted with no code change, resumes exactly.

The parent starts this same script as a training child, kills it once it has trained a while,
starts it again, and compares the final weights with a run that was never interrupted.

    python examples/resume_after_crash.py [--root ./crash-demo]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

import weightslab_events as wle

STEPS = 300


def train(root: str, out: str) -> None:
    """The user's training script: nothing in it knows about crashes."""
    torch.manual_seed(0)
    data_x, data_y = torch.randn(1024, 20), torch.randint(0, 5, (1024,))
    model = nn.Sequential(nn.Linear(20, 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, 5))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=STEPS)
    sampler = torch.Generator().manual_seed(42)

    system = wle.get_checkpoint_system(root, checkpoint_frequency=10, resume=True)
    wle.register_model("model", model)
    wle.register_optimizer("optimizer", optimizer)
    wle.register_scheduler("scheduler", scheduler)
    wle.register_stateful("sampler", sampler)
    print(f"child: starting at step {system.step}", flush=True)
    while system.step < STEPS:
        index = torch.randint(0, len(data_x), (64,), generator=sampler)
        loss = nn.functional.cross_entropy(model(data_x[index]), data_y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        time.sleep(0.005)  # stand-in for a data loader, so the kill lands mid-run
    system.close()
    torch.save(model.state_dict(), out)
    print(f"child: finished at step {STEPS}", flush=True)


def child(root: Path, out: Path) -> subprocess.Popen[str]:
    command = [sys.executable, __file__, "--child", "--root", str(root), "--out", str(out)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="./crash-demo")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        train(args.root, args.out)
        return

    base = Path(args.root)
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    straight = child(base / "straight", base / "straight.pt")
    straight.communicate()

    crashed = child(base / "crashed", base / "crashed.pt")
    assert crashed.stdout is not None
    print(crashed.stdout.readline().strip())
    time.sleep(0.5)
    crashed.send_signal(signal.SIGKILL)
    crashed.wait()
    print(f"parent: killed the child with SIGKILL (exit code {crashed.returncode})")

    restarted = child(base / "crashed", base / "crashed.pt")
    out, _ = restarted.communicate()
    print(out.strip())
    same = all(
        torch.equal(a, b)
        for a, b in zip(
            torch.load(base / "straight.pt", weights_only=True).values(),
            torch.load(base / "crashed.pt", weights_only=True).values(),
            strict=True,
        )
    )
    print(f"parent: final weights bitwise equal to the uninterrupted run: {same}")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
