"""Text output of the command line never sends a control character from a root to the terminal."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import torch
from conftest import close_all, mlp, train

import weightslab_events as wle
from weightslab_events.terminal import printable

HOSTILE = "a\nb\r\x1b[31mred\x00nul\x07\u202e[/x]"
ESCAPED = "a\\nb\\r\\x1b[31mred\\x00nul\\x07\\u202e[/x]"
UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e]")


def cli(*args: object) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "weightslab_events", *(str(a) for a in args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_printable_escapes_controls_and_keeps_the_rest():
    assert printable(HOSTILE) == ESCAPED
    assert printable("naïve 日本 \\x1b", keep_newlines=False) == "naïve 日本 \\x1b"
    assert printable("line 1\nline\x1b 2\r", keep_newlines=True) == "line 1\nline\\x1b 2\\r"


def test_control_characters_from_a_root_are_escaped_in_every_text_output(tmp_path: Path):
    root = tmp_path / "experiments"
    system = wle.get_checkpoint_system(str(root), checkpoint_frequency=2)
    model = wle.register_model("model", mlp())
    optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    config = wle.register_hyperparams("config", {"batch_size": 16})
    train(model, optimizer, 2)
    first = system.experiment_hash
    config[HOSTILE] = 1  # a hyperparameter key, a metric name, a data change and a state-change kind
    train(model, optimizer, 3)
    system.report_metric(HOSTILE, 0.5)
    wle.data_changed(HOSTILE, sample_ids=[1], reason=HOSTILE)
    system.checkpoint_on_state_change(HOSTILE)
    train(model, optimizer, 3)
    second = system.experiment_hash
    close_all()
    outputs = {
        "ls": cli("ls", root),
        "show": cli("show", root, second),
        "diff": cli("diff", root, first, second),
        "log": cli("log", root),
        "gc": cli("gc", root, "--keep-last", "1", "--dry-run"),
        "replay": cli("replay", root),
        "verify": cli("verify", root),
    }
    for name, done in outputs.items():
        assert done.returncode == 0, (name, done.stderr)
        assert not UNSAFE.search(done.stdout + done.stderr), (name, done.stdout + done.stderr)
    for name in ("show", "diff", "log", "gc", "replay"):
        assert ESCAPED in outputs[name].stdout, name
    events = cli("log", root, "--json").stdout.splitlines()
    assert len(outputs["log"].stdout.splitlines()) == len(events), "one line per event"
