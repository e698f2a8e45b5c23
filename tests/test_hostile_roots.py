"""Crafted and damaged roots met by training and by the command line: no hang, no escape, no raw bytes.

Each test builds a real root with real training, damages or crafts it as the adversarial pass
did, then runs what a user runs (training with ``resume=True``, the CLI as a process).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import close_all, mlp, train
from test_damage import copy_root, make_root

import weightslab_events as wle
from weightslab_events.testing import Recorder

#: The classic "billion laughs": 700 bytes of nested aliases that expand to 9^9 items when walked.
ALIAS_BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, list[str]]:
    close_all()
    root = tmp_path_factory.mktemp("pristine") / "experiments"
    return root, make_root(root)


def config_path(root: Path, h: str) -> Path:
    return root / "checkpoints" / h / "hp" / f"{h}_config.yaml"


def cli(*args: object, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The command line as a user runs it: a process of its own (a hang fails at ``timeout``)."""
    command = [sys.executable, "-m", "weightslab_events", *(str(a) for a in args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def same_size_alias_bomb(original: bytes) -> str:
    """An alias bomb padded to the original config's size: only its SHA-256 tells it apart."""
    text = "a: &a [lol, lol, lol]\nb: [*a, *a, *a]\n# "
    return text + "x" * (len(original) - len(text) - 1) + "\n"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("same_size", [False, True], ids=["bomb", "same-size-bomb"])
def test_resume_never_parses_a_config_that_fails_its_checksum(pristine, tmp_path, same_size):
    root, hashes = copy_root(pristine, tmp_path)
    bomb = config_path(root, hashes[0])
    size = bomb.stat().st_size
    bomb.write_text(same_size_alias_bomb(bomb.read_bytes()) if same_size else ALIAS_BOMB)
    system = wle.get_checkpoint_system(str(root), checkpoint_frequency=None, resume=True)
    with Recorder(system.bus) as recorder:
        model = wle.register_model("model", mlp())
        optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
        wle.register_hyperparams("config", {"batch_size": 16})  # the hash whose config is a bomb
        assert system.step == 4, "the checkpoints verify, so training resumes from the newest"
        corrupted = [e.data for e in recorder.of_type("checkpoint_corrupted")]
        problem = (
            "SHA-256 checksum does not match the manifest (corrupted)"
            if same_size
            else f"size is more than {size} bytes, manifest says {size} (damaged)"
        )
        assert [(Path(c["file"]), c["problem"]) for c in corrupted] == [(bomb, problem)]
        assert system.experiment_hash == hashes[0], "the live objects alone still give the hash"
    train(model, optimizer, 1)
    close_all()


def test_a_config_alias_bomb_is_one_damaged_hash_for_every_command(pristine, tmp_path):
    root, hashes = copy_root(pristine, tmp_path)
    config_path(root, hashes[0]).write_text(ALIAS_BOMB)
    listing = cli("ls", root)
    assert listing.returncode == 0, listing.stderr
    damaged = [line for line in listing.stdout.splitlines() if "damaged" in line]
    assert len(damaged) == 1 and hashes[0] in damaged[0] and "alias" in damaged[0], listing.stdout
    assert hashes[1] in listing.stdout
    shown = cli("show", root, hashes[0][:8])
    assert shown.returncode == 0 and "damaged:" in shown.stdout and "alias" in shown.stdout, shown
    for command in (("show", root, hashes[1][:8]), ("diff", root, hashes[0][:8], hashes[1][:8])):
        assert cli(*command).returncode == 0, command
    verified = cli("verify", root)
    assert verified.returncode == 1 and f"{hashes[0]}_config.yaml" in verified.stderr, verified
    for command in (("gc", root, "--keep-last", "1"), ("report", root, "-o", tmp_path / "r.html")):
        done = cli(*command)
        assert done.returncode == 0 and "Traceback" not in done.stderr, (command, done)


def tree_state(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "link",
    ["logs/events.jsonl", "logs", "checkpoints/{h}", "checkpoints/{h}/model", "checkpoints/{h}/hp", "data"],
)
def test_a_link_below_the_root_is_refused_at_start_and_nothing_outside_changes(pristine, tmp_path, link):
    root, hashes = copy_root(pristine, tmp_path)
    inside = root / link.format(h=hashes[0])
    outside = tmp_path / "outside" / inside.name
    outside.parent.mkdir()
    shutil.move(inside, outside)  # the link leads to what was there, as a user's link would
    inside.symlink_to(outside, target_is_directory=outside.is_dir())
    before = tree_state(tmp_path / "outside")
    with pytest.raises(wle.SymlinkInRootError, match=f"{inside} is a symbolic link") as refused:
        wle.get_checkpoint_system(str(root), checkpoint_frequency=1, resume=True)
    assert refused.value.path == inside
    assert wle.current_system() is None
    assert tree_state(tmp_path / "outside") == before


def test_a_damaged_manifest_of_the_trained_hash_is_set_aside_and_the_run_is_saved(pristine, tmp_path, caplog):
    root, hashes = copy_root(pristine, tmp_path)
    manifest = root / "checkpoints" / hashes[0] / "manifest.yaml"
    damaged = manifest.read_bytes()[: manifest.stat().st_size // 2]
    manifest.write_bytes(damaged)
    old_checkpoints = {p.name: p.read_bytes() for p in (manifest.parent / "model").glob("*_step_*.pt")}
    system = wle.get_checkpoint_system(str(root), checkpoint_frequency=2, resume=True)
    model = wle.register_model("model", mlp(seed=1))  # other weights: other checkpoint bytes, same hash
    optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    wle.register_hyperparams("config", {"batch_size": 16})
    assert system.experiment_hash == hashes[0] and system.step == 0, "the damaged manifest vouches for nothing"
    train(model, optimizer, 5)
    system.close()  # raised CheckpointError: every save of the run had failed
    [set_aside] = (manifest.parent).glob("manifest.yaml.damaged-*")
    assert set_aside.read_bytes() == damaged, "the damaged manifest is kept whole"
    warnings = [r.getMessage() for r in caplog.records if set_aside.name in r.getMessage()]
    assert len(warnings) == 1 and "set aside" in warnings[0]
    steps = [r["step"] for r in wle.open_root(root).store.records(hashes[0])]
    assert steps[-1] == 5 and {2, 4} <= set(steps), steps
    for name, data in old_checkpoints.items():
        assert (manifest.parent / "model" / name).read_bytes() == data, f"{name} of the earlier run was replaced"
    verified = cli("verify", root)
    assert verified.returncode == 1 and set_aside.name in verified.stderr, verified
    assert f"{hashes[0]}_step_000005.pt" not in verified.stderr, "the new run's checkpoints verify"
    close_all()
    again = wle.get_checkpoint_system(str(root), checkpoint_frequency=2, resume=True)
    model = wle.register_model("model", mlp())
    wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    wle.register_hyperparams("config", {"batch_size": 16})
    assert again.step == 5, "the next run resumes the run that was saved beside the damage"
    close_all()
