"""gc and report on a root: nothing they should keep is deleted or overwritten."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import close_all
from test_damage import copy_root, make_root
from test_hostile_roots import cli


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, list[str]]:
    close_all()
    root = tmp_path_factory.mktemp("pristine") / "experiments"
    return root, make_root(root)


def test_gc_deletes_nothing_in_a_hash_whose_newest_checkpoint_is_corrupt(pristine, tmp_path):
    root, hashes = copy_root(pristine, tmp_path)
    model = root / "checkpoints" / hashes[1] / "model"
    newest = sorted(model.glob("*_step_*.pt"))[-1]
    data = bytearray(newest.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = bytes(b ^ 0xFF for b in data[len(data) // 2 : len(data) // 2 + 8])
    newest.write_bytes(bytes(data))  # same size: only the checksum tells
    before = sorted(p.name for p in model.glob("*.pt"))
    done = cli("gc", root, "--keep-last", "1")
    assert done.returncode == 0, done.stderr
    assert f"skipped {hashes[1]}: a checkpoint it would keep is damaged" in done.stderr, done.stderr
    assert newest.name in done.stderr
    assert sorted(p.name for p in model.glob("*.pt")) == before, "the good checkpoints are still there to resume"
    assert f"{hashes[0]}_step_000002.pt" in done.stdout, "the sound hash is still collected"


def test_gc_best_with_a_metric_never_recorded_deletes_nothing(pristine, tmp_path):
    root, hashes = copy_root(pristine, tmp_path)
    before = sorted(p.name for p in (root / "checkpoints").rglob("*.pt"))
    done = cli("gc", root, "--best", "val_los")
    assert done.returncode == 1 and "no checkpoint recorded metric 'val_los' (recorded: none)" in done.stderr, done
    assert sorted(p.name for p in (root / "checkpoints").rglob("*.pt")) == before


@pytest.mark.parametrize("where", ["checkpoints/{h}/manifest.yaml", "logs/events.jsonl", "../notes.txt"])
def test_report_never_overwrites_a_file_of_the_root_or_a_file_that_is_not_a_page(pristine, tmp_path, where):
    root, hashes = copy_root(pristine, tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    target = root / where.format(h=hashes[0])
    before = target.read_bytes()
    done = cli("report", root, "-o", target)
    assert done.returncode == 1 and "refusing to write the report" in done.stderr, done
    assert target.read_bytes() == before
    assert cli("report", root, "-o", tmp_path / "report.html").returncode == 0
