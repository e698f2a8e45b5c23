"""Train on scikit-learn's bundled digits while editing the experiment, then print its tree.

Nothing here calls a save function. The run changes the learning rate, prunes neurons of one
layer, freezes another and discards samples; each change that defines the experiment gets its
own hash, directory and fork checkpoint, and the data change is logged without forking.

    python examples/quickstart.py [--root ./experiments] [--epochs 6]
"""

from __future__ import annotations

import argparse
import shutil

import torch
from sklearn.datasets import load_digits
from torch import nn

import weightslab_events as wle
from weightslab_events.tree import render_tree


class Net(nn.Module):
    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, 64)
        self.out = nn.Linear(64, 10)
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(torch.relu(self.fc2(torch.relu(self.fc1(x))))))


def prune_neurons(model: Net, keep: int) -> None:
    """Keep the ``keep`` fc1 neurons with the largest weight norms (and fc2's matching inputs)."""
    order = model.fc1.weight.detach().norm(dim=1).argsort(descending=True)[:keep].sort().values
    fc1, fc2 = nn.Linear(64, keep), nn.Linear(keep, 64)
    with torch.no_grad():
        fc1.weight.copy_(model.fc1.weight[order])
        fc1.bias.copy_(model.fc1.bias[order])
        fc2.weight.copy_(model.fc2.weight[:, order])
        fc2.bias.copy_(model.fc2.bias)
    model.fc1, model.fc2 = fc1, fc2  # each assignment is noticed at once


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="./experiments")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--keep-root", action="store_true", help="do not clear --root first")
    args = parser.parse_args()
    if not args.keep_root:
        shutil.rmtree(args.root, ignore_errors=True)

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    torch.manual_seed(0)
    keep = torch.ones(len(x), dtype=torch.bool)

    system = wle.get_checkpoint_system(root_log_dir=args.root, checkpoint_frequency=20)
    model = wle.register_model("model", Net())
    optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    scheduler = wle.register_scheduler("scheduler", torch.optim.lr_scheduler.StepLR(optimizer, 15, gamma=0.8))
    config = wle.register_hyperparams("config", {"batch_size": 64, "dropout": 0.1})
    loader_rng = wle.register_stateful("loader_rng", torch.Generator().manual_seed(0))
    print(f"experiment {system.experiment_hash}")

    for epoch in range(args.epochs):
        order = keep.nonzero().squeeze(1)[torch.randperm(int(keep.sum()), generator=loader_rng)]
        correct = 0
        for start in range(0, len(order), config["batch_size"]):
            index = order[start : start + config["batch_size"]]
            logits = model(x[index])
            loss = nn.functional.cross_entropy(logits, y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            correct += int((logits.argmax(1) == y[index]).sum())
        accuracy = correct / len(order)
        system.report_metric("train_accuracy", accuracy)
        print(f"epoch {epoch}  step {system.step:4d}  accuracy {accuracy:.3f}  hash {system.experiment_hash}")

        if epoch == 1:
            optimizer.param_groups[0]["lr"] = 0.02  # a user edit: forks; the scheduler's moves never do
        if epoch == 2:
            prune_neurons(model, keep=96)
            optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9))
            scheduler = wle.register_scheduler("scheduler", torch.optim.lr_scheduler.StepLR(optimizer, 15, gamma=0.8))
        if epoch == 3:
            wle.freeze(model.fc1)
            with torch.no_grad():
                losses = nn.functional.cross_entropy(model(x), y, reduction="none")
            worst = losses.topk(40).indices
            keep[worst] = False
            wle.data_changed("discard", sample_ids=worst.tolist(), reason="highest loss")

    system.close()
    print("\nexperiment tree:")
    print(render_tree(wle.open_root(args.root)))


if __name__ == "__main__":
    main()
