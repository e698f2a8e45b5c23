"""One rank of a distributed training job for the distributed tests (gloo, CPU, loopback).

The test starts ``WORLD_SIZE`` of these with ``RANK``, ``MASTER_ADDR=127.0.0.1`` and a free
``MASTER_PORT``. Each rank runs the same code, as under torchrun: a dropout network wrapped in DDP
(``--mode ddp``) or sharded with FSDP2's ``fully_shard`` (``--mode fsdp``), data drawn with a
registered per-rank generator, a user lr edit at ``--edit-at``, ``resume=True``. With
``--pause-at K`` every rank waits for all saves after step K, trains a few more steps, prints
``paused`` and blocks on stdin until the test SIGKILLs it. At the end each rank writes its final
state (full tensors) to ``--out`` ``.rank{r}.pt``.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist
from torch import nn

import weightslab_events as wle


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer, sharded: bool) -> dict:
    if not sharded:
        inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        return {"model": inner.state_dict(), "optimizer": optimizer.state_dict()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
    return {"model": model_state, "optimizer": optimizer_state}


def train(model, optimizer, sampler, data_x, data_y, steps: int) -> None:
    for _ in range(steps):
        index = torch.randint(0, len(data_x), (16,), generator=sampler)
        loss = nn.functional.cross_entropy(model(data_x[index]), data_y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--mode", choices=("ddp", "fsdp"), default="ddp")
    parser.add_argument("--freq", type=int, default=5)
    parser.add_argument("--edit-at", type=int, default=7)
    parser.add_argument("--pause-at", type=int)
    parser.add_argument("--disagree", choices=("register", "edit"), help="rank 1 registers or edits differently")
    parser.add_argument("--keep", type=int, help="retention: keep the latest N checkpoints of each hash")
    parser.add_argument("--resume-hash", help="resume this experiment explicitly instead of resume=True")
    parser.add_argument("--only-rank-0", action="store_true", help="only rank 0 creates a system (a mistake)")
    parser.add_argument("--system-first", action="store_true", help="create the system before init (a mistake)")
    parser.add_argument("--setup-timeout", type=float, help="seconds a rank waits for the others' systems")
    parser.add_argument("--fresh", action="store_true", help="no resume, other data: a rerun of the same config")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.setup_timeout is not None:
        from weightslab_events import distributed

        distributed.SETUP_TIMEOUT = args.setup_timeout

    if args.system_first:
        system = wle.get_checkpoint_system(args.root)
        dist.init_process_group("gloo")
        try:
            wle.register_model("model", nn.Linear(2, 2))
        except wle.DistributedSetupError as error:
            print(f"setup: {error}", file=sys.stderr, flush=True)
            os._exit(3)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    data_x, data_y = torch.randn(256, 16), torch.randint(0, 4, (256,))
    model: nn.Module = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 4))
    if args.mode == "ddp":
        model = nn.parallel.DistributedDataParallel(model)
    else:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        fully_shard(model, mesh=init_device_mesh("cpu", (world,)))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    sampler = torch.Generator().manual_seed(1000 + rank + (7 if args.fresh else 0))
    torch.manual_seed(2000 + rank)  # dropout masks differ per rank: every rank's RNG must be restored

    if args.only_rank_0 and rank != 0:
        train(model, optimizer, sampler, data_x, data_y, args.steps)  # fails once rank 0 is gone
        return
    retention = wle.LatestN(args.keep) if args.keep else None
    try:
        system = wle.get_checkpoint_system(
            args.root,
            checkpoint_frequency=args.freq,
            resume=args.resume_hash is None and not args.fresh,
            retention=retention,
        )
    except wle.DistributedSetupError as error:
        print(f"setup: {error}", file=sys.stderr, flush=True)
        os._exit(3)
    wle.register_model("model", model)
    wle.register_optimizer("optimizer", optimizer)
    wle.register_hyperparams("config", {"batch_size": 16 + (rank if args.disagree == "register" else 0)})
    wle.register_stateful("sampler", sampler)
    if args.resume_hash:
        system.resume(args.resume_hash)
    print(f"ready {system.step}", flush=True)

    try:
        while system.step < args.steps:
            index = torch.randint(0, len(data_x), (16,), generator=sampler)
            loss = nn.functional.cross_entropy(model(data_x[index]), data_y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if system.step == args.edit_at:
                optimizer.param_groups[0]["lr"] = 5e-3
            if args.disagree == "edit" and rank == 1 and system.step == 3:
                optimizer.param_groups[0]["lr"] = 1e-3
            if args.pause_at is not None and system.step == args.pause_at:
                system.wait()
            if args.pause_at is not None and system.step == args.pause_at + 3:
                print("paused", flush=True)
                sys.stdin.readline()
    except wle.RankDisagreementError as error:
        print(f"disagreement: {error}", file=sys.stderr, flush=True)
        os._exit(3)
    system.close()
    if args.out:
        state = full_state(model, optimizer, args.mode == "fsdp")
        state.update(rng=torch.get_rng_state(), sampler=sampler.get_state(), step=system.step)
        torch.save(state, f"{args.out}.rank{rank}.pt")
    dist.destroy_process_group()
    print(f"done {system.step}", flush=True)


if __name__ == "__main__":
    main()
