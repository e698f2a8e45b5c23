"""Training time lost per save with 2 ranks (gloo, CPU): weightslab-events against DCP ``async_save``.

Each rank holds two identical models with Adam, wrapped in DDP (``--mode ddp``) or sharded with
FSDP2 (``--mode fsdp``): one registered with the system, one not. Rounds of ``--period`` steps
alternate, in the same run and on the same state size:

- ``plain``: the unregistered model, no save (the baseline);
- ``dcp``:   the unregistered model, ``dcp.async_save(get_state_dict(...))`` at the round's last
             step on a gloo group of its own (the previous save awaited first, as DCP asks);
- ``ours``:  the registered model, a periodic checkpoint due at the round's last step.

Each kind runs in blocks of ``--rounds`` rounds (its background writes overlap its own next
rounds, which is the cost being measured), drained before the next kind; ``--blocks`` times.
Training time lost per save = median round time minus the median ``plain`` round (one save per
round). Spread is the interquartile range over rounds. The training thread's CPU time per save
(``time.thread_time``, same differencing) is printed too: it is steadier on a shared machine, but
leaves out what background writers take from training. The per-step cost of the agreement check
is measured first, with a system that saves only its start and final checkpoints: median step
time of the registered model against the plain one, in alternating blocks. Rank 0's figures are
printed (it writes the most).

    python bench/distributed_save.py --mode fsdp --blocks 3 --rounds 5
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
    for _ in range(args.blocks * 2):
        quiet["plain"] += [train_step(plain_model, plain_optimizer, x) for _ in range(args.period)]
        quiet["ours"] += [train_step(ours_model, ours_optimizer, x) for _ in range(args.period)]
    system.close()

    system = wle.get_checkpoint_system(os.path.join(directory, "wle"), checkpoint_frequency=args.period)
    wle.register_model("model", ours_model)
    wle.register_optimizer("optimizer", ours_optimizer)
    rounds: dict[str, list[float]] = {"plain": [], "dcp": [], "ours": []}
    cpu: dict[str, list[float]] = {"plain": [], "dcp": [], "ours": []}
    pending = None
    # Align the system's periodic saves with the rounds (a round's last step is a multiple of period).
    while (system.step + 1) % args.period != 1:
        train_step(ours_model, ours_optimizer, x)
    for block in range(args.blocks):
        for kind in ("plain", "dcp", "ours"):
            model, optimizer = (ours_model, ours_optimizer) if kind == "ours" else (plain_model, plain_optimizer)
            for index in range(args.rounds + 1):
                cpu_start = time.thread_time()
                times = [train_step(model, optimizer, x) for _ in range(args.period - 1)]
                start = time.perf_counter()
                times.append(train_step(model, optimizer, x))
                if kind == "dcp":
                    if pending is not None:
                        pending.result()
                    state = dict(zip(("model", "optimizer"), get_state_dict(model, optimizer), strict=True))
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        target = os.path.join(directory, f"dcp-{block}-{index}")
                        pending = dcp.async_save(state, checkpoint_id=target, process_group=dcp_group)
                    times[-1] = time.perf_counter() - start
                if index == 0:
                    continue  # a block's first round starts with no save in flight
                rounds[kind].append(sum(times))
                cpu[kind].append(time.thread_time() - cpu_start)
            # Drain before the next kind, so no background write spills into another kind's rounds.
            if pending is not None:
                pending.result()
                pending = None
            system.wait()
    if pending is not None:
        pending.result()
    system.close()

    if rank == 0:
        state_mb = sum(p.numel() * p.element_size() for p in ours_model.parameters()) * 3 / 1e6
        print(f"{args.mode}, {world} ranks: {state_mb:.0f} MB of model + Adam state in all, one save per")
        print(f"{args.period}-step round, {args.blocks} blocks of {args.rounds} rounds of each kind")
        base = statistics.median(rounds["plain"])
        print(f"  plain round            {base * 1e3:8.1f} ms")
        lost = {}
        for kind in ("dcp", "ours"):
            q1, median, q3 = quartiles(rounds[kind])
            lost[kind] = median - base
            print(
                f"  {kind:5s} round            {median * 1e3:8.1f} ms (IQR {q1 * 1e3:.1f}-{q3 * 1e3:.1f}); "
                f"lost per save {lost[kind] * 1e3:7.1f} ms"
            )
        print(f"  ours / DCP async_save lost per save: {lost['ours'] / lost['dcp']:.2f}x")
        base_cpu = statistics.median(cpu["plain"])
        spent = {kind: statistics.median(cpu[kind]) - base_cpu for kind in ("dcp", "ours")}
        print(
            f"  training thread's CPU time per save: DCP {spent['dcp'] * 1e3:.1f} ms, "
            f"ours {spent['ours'] * 1e3:.1f} ms ({spent['ours'] / spent['dcp']:.2f}x)"
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
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5, help="rounds per block and kind")
    parser.add_argument("--period", type=int, default=10)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as directory:
        mp.spawn(run, args=(2, free_port(), args, directory), nprocs=2)


if __name__ == "__main__":
    main()
