"""The web report treats everything read from a root as text: hostile strings never run.

Every string a root can carry (setting keys and values, metric names, a state-change kind that
becomes a checkpoint's reason, data-change fields, a foreign folder's name) is filled with
script-injection payloads, the report is opened in real Chromium, and the test checks that no
payload ran, that each payload is shown as text, and that the page still rendered. The
Content-Security-Policy is checked on its own: a handler smuggled into the page does not run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from conftest import close_all, mlp, train
from test_cli import chromium

import weightslab_events as wle
from weightslab_events import report
from weightslab_events.cli import main

#: Each payload, if it ever ran, would set ``data-pwned="2"`` on <body> (the text shows "1+1").
RUN = "document.body.dataset.pwned=1+1"
PAYLOADS = [
    f'<img src=x onerror="{RUN}">',
    f'"><svg onload="{RUN}">',
    f"'><script>{RUN}</script>",
    f"</script><script>{RUN}</script>",
    "<!--<script>",
    f"javascript:{RUN}",
    "__proto__",
    "constructor",
]
PWNED = 'data-pwned="2"'


def hostile(i: int) -> str:
    return PAYLOADS[i % len(PAYLOADS)]


def make_hostile_root(root: Path) -> None:
    system = wle.get_checkpoint_system(str(root), checkpoint_frequency=2)
    model = wle.register_model("model", mlp())
    optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    config = wle.register_hyperparams("config", {hostile(i): hostile(i + 1) for i in range(len(PAYLOADS))})
    for step in range(1, 7):
        train(model, optimizer, 1)
        for i, payload in enumerate(PAYLOADS[:3]):
            system.report_metric(payload, float(step + i))
        if step == 2:
            config[hostile(3)] = hostile(5)  # a fork whose cause and diff are hostile
        if step == 4:
            system.checkpoint_on_state_change(hostile(0))  # the kind becomes the checkpoint's reason
            wle.data_changed(hostile(1), sample_ids=[1, 2], reason=hostile(2), tag=hostile(4))
    close_all()
    foreign = root / "checkpoints" / hostile(0).replace("/", "")
    foreign.mkdir()
    (foreign / "manifest.yaml").write_text(f"parent: '{hostile(1)}'\nreason: {json.dumps(hostile(2))}\n")


def poisoned(value: Any, numbers: bool, depth: int = 0) -> Any:
    """``value`` with every string (and number, if ``numbers``) replaced by a payload; keys kept."""
    if isinstance(value, dict):
        return {k: poisoned(v, numbers, depth + i + 1) for i, (k, v) in enumerate(value.items())}
    if isinstance(value, list):
        return [poisoned(v, numbers, depth + i + 1) for i, v in enumerate(value)]
    if isinstance(value, str) or (numbers and isinstance(value, (int, float)) and not isinstance(value, bool)):
        return hostile(depth)
    return value


def open_in_chromium(page: Path, profile: Path) -> str:
    return chromium(f"--user-data-dir={profile}", "--virtual-time-budget=3000", "--dump-dom", page.as_uri()).stdout


@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile") / "experiments"
    make_hostile_root(root)
    return root


def test_hostile_strings_in_a_root_reach_the_page_as_text_only(hostile_root, tmp_path):
    page = tmp_path / "report.html"
    assert CliRunner().invoke(main, ["report", str(hostile_root), "-o", str(page)]).exit_code == 0
    dom = open_in_chromium(page, tmp_path / "profile")
    assert 'id="summary"' in dom and 'class="ckpt"' in dom, "the page rendered"
    assert PWNED not in dom, "a payload ran"
    assert "&lt;img src=x onerror=" in dom, "payloads are shown as text"
    assert "state_change:&lt;img src=x" in dom, "a hostile checkpoint reason is shown as text"
    assert 'aria-label="&lt;img src=x onerror=' in dom or 'aria-label="<img src=x onerror=' in dom
    assert "damaged" in dom, "the foreign folder is listed as damaged"
    assert 'class="data-summary"' in dom, "the data changes of the shown hash are listed"


def test_every_field_poisoned_renders_without_running_anything(hostile_root, tmp_path, monkeypatch):
    real = report.report_data(hostile_root)
    for name, data in [("strings", poisoned(real, numbers=False)), ("numbers too", poisoned(real, numbers=True))]:
        monkeypatch.setattr(report, "report_data", lambda root, data=data: data)
        page = tmp_path / f"{name}.html"
        report.build_report(hostile_root, page)
        dom = open_in_chromium(page, tmp_path / f"profile-{name}")
        assert PWNED not in dom, f"a payload ran ({name})"
        assert 'id="summary"' in dom and 'class="node' in dom, f"the page's script ran to the end ({name})"


def test_the_content_security_policy_stops_a_smuggled_inline_handler(hostile_root, tmp_path):
    page = tmp_path / "report.html"
    report.build_report(hostile_root, page)
    text = page.read_text()
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', text)
    assert policy and "default-src 'none'" in policy.group(1) and "unsafe-inline" not in policy.group(1)
    smuggled = f'<img src="x" onerror="{RUN}">'
    attacked = tmp_path / "attacked.html"
    attacked.write_text(text.replace('<div id="problems"></div>', f'<div id="problems">{smuggled}</div>'))
    dom = open_in_chromium(attacked, tmp_path / "profile-attacked")
    assert 'id="summary"' in dom, "the page's own script still runs under the policy"
    assert PWNED not in dom
    # the same page without the policy: the smuggled handler does run (the check above can fail)
    unguarded = tmp_path / "unguarded.html"
    unguarded.write_text(attacked.read_text().replace(policy.group(0), 'http-equiv="x-none" content=""'))
    assert PWNED in open_in_chromium(unguarded, tmp_path / "profile-unguarded")
