"""How long a periodic save blocks the training loop, against a synchronous save and DCP.

State: a 6-layer 2048-wide MLP with Adam (about 300 MB of weights and optimizer state). In one
run, this measures:

- sync:  ``torch.save(state) + fsync`` of the same state (what a training loop without a
         background saver stalls for);
- dcp:   PyTorch Distributed Checkpoint ``async_save`` until it returns (its stall);
- ours:  the time the training thread spends taking a save: copying the state in the post-step
         hook and handing it to the writer at the next step (timed inside the system);
- the ordinary step time while the writer is still writing, against an idle writer.

Ratios are printed against ``sync`` measured in the same run (this machine is shared and noisy).

    python bench/save_stall.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import warnings

import torch
from torch import nn

import weightslab_events as wle


def make(width: int, layers: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    return model, optimizer


def step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> float:
    start = time.perf_counter()
    loss = model(x).square().mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    tensors = list(model.state_dict().values())
    for state in optimizer.state.values():
        tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


def sync_save(model, optimizer, directory: str) -> float:
    path = os.path.join(directory, "sync.pt")
    start = time.perf_counter()
    with open(path, "wb") as file:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, file)
        file.flush()
        os.fsync(file.fileno())
    elapsed = time.perf_counter() - start
    os.remove(path)
    return elapsed


def dcp_stall(model, optimizer, directory: str) -> float | None:
    try:
        import torch.distributed.checkpoint as dcp
    except ImportError:
        return None
    target = os.path.join(directory, f"dcp-{time.perf_counter_ns()}")
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        future = dcp.async_save(state, checkpoint_id=target)
        elapsed = time.perf_counter() - start
        future.result()
    shutil.rmtree(target, ignore_errors=True)
    return elapsed


def time_saving(system) -> list[float]:
    """Accumulate the training thread's time in the system's capture and hand-off."""
    spent = [0.0]
    for name in ("_capture", "_finish_capture"):
        original = getattr(system, name)

        def timed(*args, _original=original):
            start = time.perf_counter()
            _original(*args)
            spent[0] += time.perf_counter() - start

        setattr(system, name, timed)
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, optimizer = make(args.width, args.layers)
    x = torch.randn(8, args.width)
    step(model, optimizer, x)
    size = state_bytes(model, optimizer)
    print(f"state: {size / 1e6:.0f} MB (model + Adam)")

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as directory:
        sync = [sync_save(model, optimizer, directory) for _ in range(args.repeats)]
        dcp = [dcp_stall(model, optimizer, directory) for _ in range(args.repeats)]

        period = 10
        system = wle.get_checkpoint_system(os.path.join(directory, "wle"), checkpoint_frequency=period)
        spent = time_saving(system)
        wle.register_model("model", model)
        wle.register_optimizer("optimizer", optimizer)
        system.wait()
        spent[0] = 0.0
        stall, idle_steps, busy_steps = [], [], []
        for _ in range(args.repeats + 1):
            # Steps 1-10 of a period: step 1 hands the previous save to the writer, steps 2-3 run
            # while it writes, the writer is idle again for steps 8-9, step 10 takes the next copy.
            times = [step(model, optimizer, x) for _ in range(6)]
            system.wait()
            times += [step(model, optimizer, x) for _ in range(4)]
            busy_steps += times[1:3]
            idle_steps += times[7:9]
            stall.append(spent[0])
            spent[0] = 0.0
        system.close()
        stall = stall[1:]  # the first save has no hand-off and also allocates the reusable buffers

    s, ours = statistics.median(sync), statistics.median(stall)
    print(f"sync torch.save+fsync   {s * 1e3:8.1f} ms   1.00x")
    if dcp[0] is not None:
        d = statistics.median(dcp)
        print(f"DCP async_save stall    {d * 1e3:8.1f} ms   {d / s:.2f}x of sync")
    print(f"weightslab-events stall {ours * 1e3:8.1f} ms   {ours / s:.2f}x of sync", end="")
    print(f"   {ours / d:.2f}x of DCP" if dcp[0] is not None else "")
    idle, busy = statistics.median(idle_steps), statistics.median(busy_steps)
    print(f"step while writer idle  {idle * 1e3:8.1f} ms; while writing {busy * 1e3:.1f} ms ({busy / idle:.2f}x)")


if __name__ == "__main__":
    main()
