"""The public reader (``wle.open_root``), resume by prefix, and what the CLI shows from it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import close_all, mlp, train
from rich.console import Console
from torch import nn

import weightslab_events as wle
from weightslab_events.cli import main
from weightslab_events.clirender import ls_table


def make_root(root: Path) -> dict[str, str]:
    """lr edit at step 4, a data discard and a tag, a freeze at step 8; a scheduler; metrics."""
    system = wle.get_checkpoint_system(str(root), checkpoint_frequency=2)
    model = wle.register_model("model", mlp())
    optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    scheduler = wle.register_scheduler("scheduler", torch.optim.lr_scheduler.StepLR(optimizer, 100))
    wle.register_hyperparams("config", {"lr": 0.5, "batch_size": 16})
    hashes = {"root": system.experiment_hash}
    for step in range(1, 13):
        train(model, optimizer, 1, scheduler)
        system.report_metric("loss", abs(step - 6) + 1.0)
        if step == 4:
            optimizer.param_groups[0]["lr"] = 0.01
        if step == 6:
            wle.data_changed("discard", sample_ids=[1, 2, 3], reason="mislabelled")
            wle.data_changed("tag", sample_ids=[4, 5], tag="hard")
        if step == 8:
            wle.freeze(model[0])
        if step in (5, 9):
            hashes["lr" if step == 5 else "freeze"] = system.experiment_hash
    close_all()
    return hashes


def second_summary() -> dict[str, dict[str, int]]:
    return {"discard": {"changes": 1, "samples": 3}, "tag": {"changes": 1, "samples": 2}}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    close_all()
    root = tmp_path_factory.mktemp("reader") / "experiments"
    return root, make_root(root)


def test_open_root_lists_lineage_causes_steps_checkpoints_and_data_changes(recorded):
    root, hashes = recorded
    opened = wle.open_root(root)
    assert [e.hash for e in opened] == [hashes["root"], hashes["lr"], hashes["freeze"]]
    first, second, third = opened.experiments()
    assert first.parent is None and first.cause == "" and first.children == (hashes["lr"],)
    assert second.parent == hashes["root"] and second.fork_step == 5
    assert second.cause == "optimizer.lr 0.1 -> 0.01", "config has an lr too, so the optimizer's is qualified"
    assert third.cause == "froze 0" and third.fork_step == 9
    assert first.trained == ((1, 4),) and second.trained == ((5, 8),) and third.trained == ((9, 12),)
    assert second.steps_trained == 4
    assert second.data_summary() == second_summary()
    assert [c.words for c in second.data_changes] == [
        "discard: 3 samples (reason: mislabelled)",
        "tag: 2 samples (tag: hard)",
    ]
    assert [c.step for c in third.checkpoints] == [9, 10, 12] and third.checkpoints[0].reason == "fork"
    assert all(c.path.is_file() and c.size == c.path.stat().st_size for c in third.checkpoints)
    assert opened.lineage(hashes["freeze"][:5]) == [first, second, third]
    assert not opened.damaged and opened.verify() == []


def test_lookup_by_prefix_and_clear_errors(recorded):
    root, hashes = recorded
    opened = wle.open_root(root)
    assert opened.experiment(hashes["lr"][:6]).hash == hashes["lr"]
    with pytest.raises(wle.ExperimentNotFoundError, match="no experiment hash starts with 'zz'"):
        opened.experiment("zz")
    with pytest.raises(wle.AmbiguousHashError, match="is ambiguous"):
        opened.experiment("")
    with pytest.raises(wle.RootNotFoundError, match="does not exist"):
        wle.open_root(root / "nope")
    with pytest.raises(wle.RootNotFoundError, match="is not an experiments root"):
        wle.open_root(root / "logs")


def test_checkpoint_by_step_latest_and_best(recorded):
    root, hashes = recorded
    opened = wle.open_root(root)
    h = hashes["freeze"][:8]
    assert opened.checkpoint(h, 10).step == 10 and opened.checkpoint(h, "10").step == 10
    assert opened.checkpoint(h).step == 12 and opened.checkpoint(h, "latest").step == 12
    losses = {c.step: c.metrics["loss"] for c in opened.experiment(h).checkpoints}
    assert opened.checkpoint(h, "best:loss").step == min(losses, key=lambda s: (losses[s], -s))
    assert opened.checkpoint(h, "best:loss:max").step == max(losses, key=lambda s: (losses[s], s))
    with pytest.raises(wle.CheckpointNotFoundError, match=r"no checkpoint at step 11 \(it has 9, 10, 12\)"):
        opened.checkpoint(h, 11)
    with pytest.raises(wle.CheckpointNotFoundError, match=r"recorded metric 'acc' \(recorded: loss\)"):
        opened.checkpoint(h, "best:acc")
    with pytest.raises(ValueError, match="give a step, 'latest'"):
        opened.checkpoint(h, "newest")


def test_restore_into_given_objects_with_the_architecture_check(recorded):
    root, hashes = recorded
    opened = wle.open_root(root)
    payload = opened.load(hashes["lr"], 6)
    model = mlp(seed=5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 100)
    restored = opened.restore(hashes["lr"][:7], 6, model=model, optimizer=optimizer, scheduler=scheduler)
    assert restored.step == 6
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, payload["models"]["model"][key])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    assert scheduler.last_epoch == payload["schedulers"]["scheduler"]["last_epoch"]
    wrong = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    before = {k: v.clone() for k, v in wrong.state_dict().items()}
    with pytest.raises(wle.ArchitectureMismatchError, match=r"2\.weight has shape \[4, 16\] here, \[3, 16\]"):
        opened.restore(hashes["lr"], "latest", model=wrong)
    assert all(torch.equal(before[k], v) for k, v in wrong.state_dict().items()), "nothing was loaded"


def test_system_resume_accepts_a_unique_prefix(recorded, tmp_path):
    root, hashes = recorded
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(root), str(copy)], check=True)
    system = wle.get_checkpoint_system(str(copy), checkpoint_frequency=None)
    model = wle.register_model("model", mlp())
    wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    assert system.resume(hash=hashes["lr"][:8], step=6) == 6
    with pytest.raises(wle.CheckpointNotFoundError, match="no experiment hash starts with 'zzzz'"):
        system.resume(hash="zzzz")
    close_all()


def test_architecture_text_marks_frozen_modules(recorded):
    root, hashes = recorded
    opened = wle.open_root(root)
    assert "# frozen" not in (opened.architecture_text(hashes["lr"]) or "x# frozen")
    text = opened.architecture_text(hashes["freeze"])
    assert "(0): Linear(in_features=8, out_features=16, bias=True)  # frozen" in text
    assert text.count("# frozen") == 1


def _cli(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_every_command_has_json(recorded, tmp_path):
    root, hashes = recorded
    code, out, _ = _cli("show", root, hashes["lr"][:6], "--json")
    shown = json.loads(out)
    assert code == 0 and shown["hash"] == hashes["lr"] and shown["steps"] == "5-8"
    assert [c["kind"] for c in shown["data_changes"]] == ["discard", "tag"]
    assert [c["step"] for c in shown["checkpoints"]] == [5, 6, 8]
    diff = json.loads(_cli("diff", root, hashes["root"], hashes["freeze"], "--json")[1])
    assert diff["hyperparameters"] == ["optimizer.lr 0.1 -> 0.01"] and diff["architecture"] == ["froze 0"]
    lines = _cli("log", root, "--type", "data_changed", "--json")[1].strip().splitlines()
    assert [json.loads(line)["data"]["kind"] for line in lines] == ["discard", "tag"]
    verified = json.loads(_cli("verify", root, "--json")[1])
    assert verified["faults"] == [] and verified["verified"] == verified["checkpoints"] == 9
    collected = json.loads(_cli("gc", root, "--keep-last", "1", "--dry-run", "--json")[1])
    assert collected["dry_run"] and collected["deleted"]
    assert all((root / item["path"]).is_file() for item in collected["deleted"]), "real paths, relative to the root"
    replayed = json.loads(_cli("replay", root, "--json")[1])
    assert replayed["hash_changes"][-1]["new"] == hashes["freeze"]
    assert {"hash": hashes["freeze"], "step": 9, "reason": "fork"} in replayed["checkpoints"]


def test_show_lists_data_changes_and_ls_counts_trained_steps(recorded):
    root, hashes = recorded
    out = _cli("show", root, hashes["lr"][:6])[1]
    assert "discard: 1 announcement(s), 3 sample(s)" in out and "tag: 1 announcement(s), 2 sample(s)" in out
    rows = {r["hash"]: r for r in json.loads(_cli("ls", root, "--json")[1])}
    assert rows[hashes["root"]]["steps"] == "1-4" and rows[hashes["freeze"]]["steps"] == "9-12"
    assert rows[hashes["lr"]]["data_changes"] == {
        "discard": {"changes": 1, "samples": 3},
        "tag": {"changes": 1, "samples": 2},
    }


def test_piped_output_is_never_wrapped(recorded):
    root, hashes = recorded
    command = [sys.executable, "-m", "weightslab_events", "gc", str(root), "--keep-last", "1", "--dry-run"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60, env={"COLUMNS": "40"}).stdout
    lines = [line for line in out.splitlines() if line.startswith("would delete")]
    assert lines and all(line.endswith(")") and "_step_" in line for line in lines), "each path on one line"
    assert max(map(len, lines)) > 40


def test_ls_is_readable_at_80_columns(recorded):
    root, hashes = recorded
    terminal = Console(force_terminal=True, width=80, record=True, color_system=None)
    opened = wle.open_root(root)
    terminal.print(ls_table(opened.experiments()[::-1], "3 experiments", terminal))
    lines = terminal.export_text().splitlines()
    assert max(map(len, lines)) <= 80
    row = next(line for line in lines if line.startswith(hashes["lr"][:8]))
    assert hashes["root"][:8] in row and "optimizer.lr" in row and "…" in row, "the cause is cut, not dropped"
    assert "5-8" in row and "3" in row


def test_commands_that_read_do_not_import_torch(recorded):
    root, hashes = recorded
    script = (
        "import sys\n"
        "from weightslab_events.cli import main\n"
        "for args in {args!r}:\n"
        "    try:\n"
        "        main(args, standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('no torch')\n"
    )
    commands = [
        ["ls", str(root)],
        ["show", str(root), hashes["lr"][:6]],
        ["diff", str(root), hashes["root"][:6], hashes["freeze"][:6]],
        ["log", str(root)],
        ["replay", str(root)],
        ["verify", str(root)],
        ["--version"],
    ]
    result = subprocess.run(
        [sys.executable, "-c", script.format(args=commands)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "no torch" in result.stdout, result.stderr
