"""How big ``events.jsonl`` gets over a long run with a per-step scheduler.

A tiny model (the log's size does not depend on it) trains ``--steps`` steps under a
``CosineAnnealingLR`` that moves the learning rate every step, with periodic checkpoints every
``--freq`` steps. Printed: the log's size, bytes per step, and the baseline measured in the same
run: the same events written one JSON line each (the v1 format, what the log cost before compact
blocks). The log is then read back and replayed, to show that it stays exact.

    python bench/log_size.py --steps 100000 --freq 100
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import weightslab_events as wle


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--freq", type=int, default=100)
    parser.add_argument("--keep", help="copy the log here before cleaning up")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="wle-log-size-"))
    try:
        torch.manual_seed(0)
        model = nn.Linear(4, 2)
        x, y = torch.randn(8, 4), torch.randn(8, 2)
        system = wle.get_checkpoint_system(str(root), checkpoint_frequency=args.freq)
        wle.register_model("model", model)
        optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
        scheduler = wle.register_scheduler(
            "scheduler", torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps)
        )
        started = time.perf_counter()
        for _ in range(args.steps):
            loss = nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        system.close()
        trained = time.perf_counter() - started
        log_path = root / "logs" / "events.jsonl"
        size = log_path.stat().st_size
        events = wle.read_events(log_path)
        one_line_each = sum(len(e.to_json()) + 1 for e in events)
        live = [(e.data["hash"], e.step, e.data["reason"]) for e in events if e.type == "checkpoint_scheduled"]
        replayed = wle.replay(log_path).checkpoints
        steps = sum(e.type == "step" for e in events)
        moves = sum(e.type == "optimizer_param_changed" and e.data["source"] == "scheduler" for e in events)
        print(f"steps {args.steps}, checkpoint every {args.freq}, trained in {trained:.1f} s")
        lines = len(log_path.read_text().splitlines())
        print(f"events {len(events)} ({steps} step, {moves} scheduler moves), lines {lines}")
        print(f"events.jsonl: {size / 1e6:.3f} MB, {size / args.steps:.1f} bytes/step")
        print(
            f"baseline, one JSON line per event: {one_line_each / 1e6:.3f} MB, "
            f"{one_line_each / args.steps:.1f} bytes/step (ratio {size / one_line_each:.3f})"
        )
        print(f"replay reproduces the {len(live)} checkpoint decisions: {replayed == live}")
        if args.keep:
            shutil.copy(log_path, args.keep)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
