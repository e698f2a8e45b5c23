"""Subscribe your own handlers: a sync one that announces forks, an async one that "uploads".

A sync handler runs on the thread that emitted the event; an ``async def`` handler runs on the
library's event-loop thread and never blocks training. A handler that raises is reported as
``handler_failed`` and training goes on.

    python examples/custom_handlers.py [--root ./handlers-demo]
"""

from __future__ import annotations

import argparse
import shutil

import anyio
import torch
from torch import nn

import weightslab_events as wle


@wle.subscribe(wle.signals.hash_changed)
def announce(event: wle.Event) -> None:
    print(f"new experiment {event.new_hash} after {event.words}")


uploaded: list[str] = []


async def upload(event: wle.Event) -> None:
    await anyio.sleep(0.01)  # stand-in for a network call
    uploaded.append(event.path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="./handlers-demo")
    args = parser.parse_args()
    shutil.rmtree(args.root, ignore_errors=True)

    wle.subscribe(wle.signals.checkpoint_saved, upload)
    wle.subscribe(wle.signals.handler_failed, lambda e: print(f"handler {e.handler} failed: {e.error}"))
    wle.subscribe(wle.signals.data_changed, lambda e: 1 / 0)  # a buggy handler: reported, harmless

    with wle.get_checkpoint_system(args.root, checkpoint_frequency=25) as system:
        torch.manual_seed(0)
        model = wle.register_model("model", nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1)))
        optimizer = wle.register_optimizer("optimizer", torch.optim.Adam(model.parameters(), lr=1e-2))
        x, y = torch.randn(256, 10), torch.randn(256, 1)
        for step in range(100):
            loss = nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step == 40:
                optimizer.param_groups[0]["lr"] = 1e-3
            if step == 60:
                wle.data_changed("discard", sample_ids=[7])
        system.wait()  # saves durable and async handlers done
    print(f"uploaded {len(uploaded)} checkpoints, the last {uploaded[-1]}")


if __name__ == "__main__":
    main()
