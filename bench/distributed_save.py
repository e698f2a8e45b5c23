"""Training time lost per save with 2 ranks (gloo, CPU): weightslab-events against DCP ``async_save``.

Each rank holds two identical models with Adam, wrapped in DDP (``--mode ddp``) or sharded with
FSDP2 (``--mode fsdp``): one registered with the system, one not. Rounds of ``--period`` steps
of three kinds are interleaved, in the same run and on the same state:

- ``plain``: the unregistered model, no save (the baseline);
- ``dcp``:   the unregistered model, ``dcp.async_save(get_state_dict(...))`` after the round's
             first step, on a gloo group of its own;
- ``ours``:  the registered model, a periodic checkpoint due at the round's first step.

A save's background write overlaps the rest of its round (what it costs training is in the
round's time); it is drained, untimed, before the next round. Training time lost per save = the
median, over repetitions, of the round's time minus the ``plain`` round of the same repetition
(paired, so the shared machine's drift cancels), with its interquartile range. The training
thread's CPU time (``time.thread_time``, paired the same way) is steadier, but leaves out what
background writers take from training. The per-step cost of the agreement check is measured
first, with a system that saves only its start and final checkpoints: median step time of the
registered model against the plain one, alternating. Rank 0's figures are printed (it writes the
most).

    python bench/distributed_save.py --mode fsdp --rounds 20
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import weightslab_events as wle


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def build(mode: str, width: int, layers: int, world: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model: nn.Module = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
    if mode == "ddp":
        model = nn.parallel.DistributedDataParallel(model)
    else:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        fully_shard(model, mesh=init_device_mesh("cpu", (world,)))
    return model, torch.optim.Adam(model.parameters(), lr=1e-4)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> float:
    start = time.perf_counter()
    loss = model(x).square().mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = statistics.quantiles(values, n=4)
    return q1, median, q3


def run(rank: int, world: int, port: int, args: argparse.Namespace, directory: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    plain_model, plain_optimizer = build(args.mode, args.width, args.layers, world)
    ours_model, ours_optimizer = build(args.mode, args.width, args.layers, world)
    dcp_group = dist.new_group(backend="gloo")
    x = torch.randn(args.batch, args.width)
    for _ in range(2):
        train_step(plain_model, plain_optimizer, x)
        train_step(ours_model, ours_optimizer, x)

    # Per-step cost with no save in flight: a system that saves only its start and final checkpoints.
    system = wle.get_checkpoint_system(os.path.join(directory, "wle"), checkpoint_frequency=None)
    wle.register_model("model", ours_model)
    wle.register_optimizer("optimizer", ours_optimizer)
    train_step(ours_model, ours_optimizer, x)
    system.wait()
    quiet: dict[str, list[float]] = {"plain": [], "ours": []}
    for _ in range(6):
        quiet["plain"] += [train_step(plain_model, plain_optimizer, x) for _ in range(args.period)]
        quiet["ours"] += [train_step(ours_model, ours_optimizer, x) for _ in range(args.period)]
    system.close()

    system = wle.get_checkpoint_system(os.path.join(directory, "wle"), checkpoint_frequency=args.period)
    wle.register_model("model", ours_model)
    wle.register_optimizer("optimizer", ours_optimizer)
    rounds: dict[str, list[float]] = {"plain": [], "dcp": [], "ours": []}
    cpu: dict[str, list[float]] = {"plain": [], "dcp": [], "ours": []}
    pending = None
    # Align the system's periodic saves with the rounds: each "ours" round starts with a save.
    while (system.step + 1) % args.period != 0:
        train_step(ours_model, ours_optimizer, x)
    for index in range(args.rounds + 1):
        for kind in ("plain", "dcp", "ours"):
            model, optimizer = (ours_model, ours_optimizer) if kind == "ours" else (plain_model, plain_optimizer)
            cpu_start, start = time.thread_time(), time.perf_counter()
            train_step(model, optimizer, x)
            if kind == "dcp":
                state = dict(zip(("model", "optimizer"), get_state_dict(model, optimizer), strict=True))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    target = os.path.join(directory, f"dcp-{index}")
                    pending = dcp.async_save(state, checkpoint_id=target, process_group=dcp_group)
            for _ in range(args.period - 1):
                train_step(model, optimizer, x)
            elapsed, cpu_time = time.perf_counter() - start, time.thread_time() - cpu_start
            # The save's background write overlapped this round's later steps; drain it (untimed)
            # so that nothing spills into the next round.
            if pending is not None:
                pending.result()
                pending = None
            system.wait()
            if index > 0:  # the first round of each kind warms buffers and files up
                rounds[kind].append(elapsed)
                cpu[kind].append(cpu_time)
    if pending is not None:
        pending.result()
    system.close()

    if rank == 0:
        state_mb = sum(p.numel() * p.element_size() for p in ours_model.parameters()) * 3 / 1e6
        print(f"{args.mode}, {world} ranks: {state_mb:.0f} MB of model + Adam state in all, one save per")
        print(f"{args.period}-step round, {args.rounds} rounds of each kind, interleaved")
        base = statistics.median(rounds["plain"])
        print(f"  plain round            {base * 1e3:8.1f} ms")
        lost, spent = {}, {}
        for kind in ("dcp", "ours"):
            paired = [k - p for k, p in zip(rounds[kind], rounds["plain"], strict=True)]
            q1, lost[kind], q3 = quartiles(paired)
            spent[kind] = statistics.median(k - p for k, p in zip(cpu[kind], cpu["plain"], strict=True))
            print(
                f"  {kind:5s} lost per save {lost[kind] * 1e3:7.1f} ms (IQR {q1 * 1e3:.1f} to {q3 * 1e3:.1f}); "
                f"training thread's CPU time per save {spent[kind] * 1e3:.1f} ms"
            )
        print(
            f"  ours / DCP async_save: lost per save {lost['ours'] / lost['dcp']:.2f}x, "
            f"training thread's CPU time {spent['ours'] / spent['dcp']:.2f}x"
        )
        plain_step, ours_step = statistics.median(quiet["plain"]), statistics.median(quiet["ours"])
        print(
            f"  step with no save in flight: plain {plain_step * 1e3:.2f} ms, ours {ours_step * 1e3:.2f} ms "
            f"({ours_step / plain_step:.3f}x: the agreement check and the step hooks)"
        )
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("ddp", "fsdp"), default="fsdp")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--period", type=int, default=10)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as directory:
        mp.spawn(run, args=(2, free_port(), args, directory), nprocs=2)


if __name__ == "__main__":
    main()
