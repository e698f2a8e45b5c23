"""The command line and the web report, on roots made by real training runs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import close_all, mlp, train
from torch import nn

import weightslab_events as wle
from weightslab_events.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def make_root(root: Path) -> dict[str, str]:
    """A real run: an lr edit, a layer change, a freeze, metrics. Returns the hashes by stage."""
    system = wle.get_checkpoint_system(str(root), checkpoint_frequency=3)
    model = wle.register_model("model", mlp())
    optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    wle.register_hyperparams("config", {"batch_size": 16})
    hashes = {"root": system.experiment_hash}
    for stage in ("lr", "layer", "freeze"):
        for _ in range(4):
            train(model, optimizer, 1)
            system.report_metric("loss", 1.0 / system.step)
        if stage == "lr":
            optimizer.param_groups[0]["lr"] = 0.01
        elif stage == "layer":
            model[2] = nn.Linear(16, 5)
            optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.01))
        else:
            wle.freeze(model[0])
        train(model, optimizer, 1)
        hashes[stage] = system.experiment_hash
    train(model, optimizer, 3)
    close_all()
    return hashes


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("cli") / "experiments"
    close_all()
    hashes = make_root(root)
    return root, hashes


@pytest.fixture
def run(recorded):
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


def test_ls_lists_every_hash_newest_first_with_causes_in_words(run, recorded):
    root, hashes = recorded
    result = run("ls", root)
    assert result.exit_code == 0
    for h in hashes.values():
        assert h in result.output
    assert "lr 0.1 -> 0.01" in result.output
    assert "layer 2 out_features 3 -> 5" in result.output
    assert "froze 0" in result.output
    rows = json.loads(run("ls", root, "--json").output)
    assert [r["hash"] for r in rows][0] == hashes["freeze"] and rows[-1]["hash"] == hashes["root"]
    by_hash = {r["hash"]: r for r in rows}
    assert by_hash[hashes["lr"]]["parent"] == hashes["root"] and by_hash[hashes["lr"]]["fork_step"] == 5
    assert by_hash[hashes["lr"]]["cause"] == "lr 0.1 -> 0.01"
    assert all(r["size"] > 0 and r["checkpoints"] >= 1 for r in rows)


def test_show_accepts_a_unique_prefix(run, recorded):
    root, hashes = recorded
    result = run("show", root, hashes["freeze"][:6])
    assert result.exit_code == 0
    out = result.output
    assert f"experiment {hashes['freeze']}" in out
    assert out.index(hashes["root"]) < out.index(hashes["lr"]) < out.index(hashes["layer"])
    assert "batch_size: 16" in out and "Linear(in_features=16, out_features=5" in out
    assert re.search(r"\b15\b.*fork", out) and re.search(r"\b18\b.*periodic", out)


def test_diff_in_words(run, recorded):
    root, hashes = recorded
    out = run("diff", root, hashes["root"], hashes["freeze"]).output
    assert "lr 0.1 -> 0.01" in out and "layer 2 out_features 3 -> 5" in out and "froze 0" in out


def test_log_filters_by_type_and_hash(run, recorded):
    root, hashes = recorded
    out = run("log", root, "--type", "hash_changed").output
    lines = out.strip().splitlines()
    assert lines and all("hash_changed" in line for line in lines)
    out = run("log", root, "--hash", hashes["lr"][:8], "--type", "checkpoint_saved").output
    assert out.strip() and all(hashes["lr"][:8] in line for line in out.strip().splitlines())


def test_verify_passes_then_names_a_corrupt_file(tmp_path):
    root = tmp_path / "experiments"
    hashes = make_root(root)
    runner = CliRunner()
    result = runner.invoke(main, ["verify", str(root)])
    assert result.exit_code == 0 and "of" in result.output and "verified" in result.output
    victim = next((root / "checkpoints" / hashes["lr"] / "model").glob("*_step_*.pt"))
    victim.write_bytes(victim.read_bytes()[:-10])
    result = runner.invoke(main, ["verify", str(root)])
    assert result.exit_code == 1 and victim.name in result.output


def test_gc_dry_run_then_real(tmp_path):
    root = tmp_path / "experiments"
    hashes = make_root(root)
    runner = CliRunner()
    before = sorted(p.name for p in root.rglob("*_step_*.pt"))
    dry = runner.invoke(main, ["gc", str(root), "--keep-last", "1", "--dry-run"])
    assert dry.exit_code == 0 and "would delete" in dry.output
    assert sorted(p.name for p in root.rglob("*_step_*.pt")) == before
    real = runner.invoke(main, ["gc", str(root), "--keep-last", "1"])
    assert real.exit_code == 0 and "deleted" in real.output
    after = sorted(p.name for p in root.rglob("*_step_*.pt"))
    assert len(after) < len(before)
    assert f"{hashes['freeze']}_step_000018.pt" in after, "the newest is kept"
    assert runner.invoke(main, ["verify", str(root)]).exit_code == 0
    usage = runner.invoke(main, ["gc", str(root)])
    assert usage.exit_code == 2 and "give at least one of" in usage.output


def test_replay_prints_hashes_and_decisions(run, recorded):
    root, hashes = recorded
    out = run("replay", root / "logs" / "events.jsonl").output
    assert f"-> {hashes['freeze']}" in out and "checkpoint decisions" in out and "fork" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["ls", "/no/such/root"], "/no/such/root does not exist"),
        (["ls", "{root}/logs"], "is not an experiments root"),
        (["show", "{root}", "zzzz"], "no experiment hash starts with 'zzzz'"),
        (["diff", "{root}", "", "x"], "is ambiguous"),
        (["replay", "/no/such/log.jsonl"], "/no/such/log.jsonl does not exist"),
        (["log", "/no/such/root"], "/no/such/root does not exist"),
        (["log", "{root}/checkpoints"], "no event log at"),
        (["log", "{root}", "--type", "bogus"], "unknown event type 'bogus'; known types: model_registered"),
    ],
)
def test_user_mistakes_are_one_clear_line_and_a_nonzero_exit(recorded, args, message):
    root, _ = recorded
    command = [sys.executable, "-m", "weightslab_events", *[a.format(root=root) for a in args]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_console_script_is_installed(recorded):
    root, hashes = recorded
    script = Path(sys.executable).with_name("weightslab-events")
    result = subprocess.run([str(script), "ls", str(root), "--json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and hashes["root"] in result.stdout


def test_log_follow_watches_a_running_training(tmp_path):
    root = tmp_path / "experiments"
    system = wle.get_checkpoint_system(str(root), checkpoint_frequency=100)
    model = wle.register_model("model", mlp())
    optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    system.wait()
    command = [sys.executable, "-m", "weightslab_events", "log", str(root), "--follow", "--type", "metric"]
    follower = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for step in range(3):
            train(model, optimizer, 1)
            system.report_metric("live_loss", 10.0 + step)
        system.wait()
        assert follower.stdout is not None
        lines = [follower.stdout.readline() for _ in range(3)]
    finally:
        follower.terminate()
        follower.wait(10)
    assert all("metric" in line for line in lines)
    assert '"value": 12.0' in lines[-1] or "12.0" in lines[-1]


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM, "Debian's chromium is required for the report test (.ci/run installs it)"
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, *args], capture_output=True, text=True, timeout=120)


def test_report_renders_in_a_real_browser(recorded, tmp_path):
    root, hashes = recorded
    report = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["report", str(root), "-o", str(report)])
    assert result.exit_code == 0 and report.is_file()
    assert "http://" not in report.read_text() and "https://" not in report.read_text(), "no network needed"
    profile = tmp_path / "profile"
    dom = chromium(f"--user-data-dir={profile}", "--dump-dom", report.as_uri()).stdout
    for h in hashes.values():
        assert f'data-hash="{h}"' in dom, "every hash is in the rendered tree"
    assert f"experiment <code>{hashes['freeze']}</code>" in dom, "the newest experiment is shown"
    assert "froze 0" in dom and "layer 2 out_features 3 -&gt; 5" in dom, "causes in words"
    assert dom.count('class="ckpt"') >= 10, "checkpoints drawn on the step axis"
    assert 'aria-label="loss"' in dom, "a metric curve is drawn"
    screenshot = tmp_path / "report.png"
    chromium(f"--user-data-dir={profile}", "--window-size=1366,900", f"--screenshot={screenshot}", report.as_uri())
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000


def test_report_stays_readable_with_a_hundred_hashes(tmp_path):
    root = tmp_path / "experiments"
    wle.get_checkpoint_system(str(root), checkpoint_frequency=None)
    model = wle.register_model("model", mlp())
    optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    for i in range(99):
        optimizer.param_groups[0]["lr"] = 0.001 * (i + 1) if i % 10 else 0.5 + i
        train(model, optimizer, 1)
    close_all()
    assert len(list((root / "checkpoints").iterdir())) >= 95
    report = tmp_path / "report.html"
    started = time.perf_counter()
    assert CliRunner().invoke(main, ["report", str(root), "-o", str(report)]).exit_code == 0
    assert time.perf_counter() - started < 60
    dom = chromium(f"--user-data-dir={tmp_path / 'p'}", "--dump-dom", report.as_uri()).stdout
    indents = [int(x) for x in re.findall(r'class="node[^"]*"[^>]*style="padding-left: ?(\d+)px', dom)]
    assert len(indents) >= 95
    assert max(indents) <= 8 + 16 * 2, "a chain of single forks stays at one level"
    screenshot = tmp_path / "hundred.png"
    chromium(
        f"--user-data-dir={tmp_path / 'p'}", "--window-size=1366,900", f"--screenshot={screenshot}", report.as_uri()
    )
    assert screenshot.stat().st_size > 20_000
