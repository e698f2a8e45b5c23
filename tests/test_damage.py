"""Damaged and hostile roots: one damaged hash never takes the others down, no traceback, no escape."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import close_all, mlp, train
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import weightslab_events as wle
from weightslab_events.cli import main
from weightslab_events.eventlog import EventLogError, read_events
from weightslab_events.testing import Recorder


def make_root(root: Path) -> list[str]:
    """Two experiments with one architecture (an lr fork), three checkpoints each, a data change."""
    system = wle.get_checkpoint_system(str(root), checkpoint_frequency=2)
    model = wle.register_model("model", mlp())
    optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    wle.register_hyperparams("config", {"batch_size": 16})
    hashes = [system.experiment_hash]
    train(model, optimizer, 4)
    optimizer.param_groups[0]["lr"] = 0.01
    train(model, optimizer, 1)
    wle.data_changed("discard", sample_ids=[1, 2], reason="noisy")
    hashes.append(system.experiment_hash)
    train(model, optimizer, 3)
    close_all()
    return hashes


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, list[str]]:
    close_all()
    root = tmp_path_factory.mktemp("pristine") / "experiments"
    return root, make_root(root)


def copy_root(pristine: tuple[Path, list[str]], into: Path) -> tuple[Path, list[str]]:
    source, hashes = pristine
    root = into / "experiments"
    shutil.copytree(source, root, symlinks=True)
    return root, hashes


def run(*args: object) -> tuple[int, str]:
    """A CLI command in process; asserts it raised nothing and printed no traceback.

    Returns the exit code and the output (stderr then stdout, so ``--json`` output is the last line(s)).
    """
    result = CliRunner().invoke(main, [str(a) for a in args])
    output = result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), (args, result.exception)
    assert "Traceback" not in output and "a bug in weightslab-events" not in output, (args, output)
    return result.exit_code, output if "--json" not in args else result.stdout


def every_command(root: Path, hashes: list[str], report: Path) -> dict[str, tuple[int, str]]:
    return {
        "ls": run("ls", root),
        "ls --json": run("ls", root, "--json"),
        "show": run("show", root, hashes[-1][:8]),
        "show first": run("show", root, hashes[0][:8]),
        "diff": run("diff", root, hashes[0][:8], hashes[-1][:8]),
        "log": run("log", root),
        "verify": run("verify", root),
        "gc": run("gc", root, "--keep-last", "1", "--dry-run"),
        "replay": run("replay", root),
        "report": run("report", root, "-o", report),
    }


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def legacy_manifest(path: Path, change) -> None:
    """Rewrite a manifest as an older version wrote it (no digest line), after ``change``."""
    data = yaml.safe_load(path.read_text())
    data["format_version"] = 1
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def damage_truncated_manifest(root: Path, h: str) -> Path:
    path = root / "checkpoints" / h / "manifest.yaml"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return path


def damage_step_as_text(root: Path, h: str) -> Path:
    path = root / "checkpoints" / h / "manifest.yaml"
    legacy_manifest(path, lambda m: m["checkpoints"][0].update(step="8"))
    return path


def damage_checkpoints_null(root: Path, h: str) -> Path:
    path = root / "checkpoints" / h / "manifest.yaml"
    legacy_manifest(path, lambda m: m.update(checkpoints=None))
    return path


def damage_missing_created(root: Path, h: str) -> Path:
    path = root / "checkpoints" / h / "manifest.yaml"
    legacy_manifest(path, lambda m: m["checkpoints"][-1].pop("created"))
    return path


def damage_garbage_config(root: Path, h: str) -> Path:
    path = root / "checkpoints" / h / "hp" / f"{h}_config.yaml"
    path.write_bytes(b"{{{: [\x00\xff garbage")
    return path


def damage_truncated_pickle(root: Path, h: str) -> Path:
    path = root / "checkpoints" / h / "model" / f"{h}_architecture.pkl"
    path.write_bytes(path.read_bytes()[:-200])
    return path


def damage_flipped_checkpoint(root: Path, h: str) -> Path:
    path = sorted((root / "checkpoints" / h / "model").glob("*_step_*.pt"))[-1]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    "damage",
    [
        damage_truncated_manifest,
        damage_step_as_text,
        damage_checkpoints_null,
        damage_missing_created,
        damage_garbage_config,
        damage_truncated_pickle,
        damage_flipped_checkpoint,
    ],
)
def test_one_damaged_hash_is_listed_as_damaged_and_hides_nothing(pristine, tmp_path, damage):
    root, hashes = copy_root(pristine, tmp_path)
    damaged_hash, sound_hash = hashes[0], hashes[1]
    damaged_file = damage(root, damaged_hash)
    results = every_command(root, [damaged_hash, sound_hash], tmp_path / "report.html")
    assert {name for name, (code, _) in results.items() if code != 0} == {"verify"}
    relative = damaged_file.relative_to(root).as_posix()
    assert f"BAD {relative}: " in results["verify"][1], results["verify"][1]
    rows = {row["hash"]: row for row in json.loads(results["ls --json"][1])}
    assert rows[sound_hash]["damaged"] is None and rows[sound_hash]["checkpoints"] == 3
    if damage is not damage_flipped_checkpoint:  # a flipped byte is found by verify, not by listing
        reason = rows[damaged_hash]["damaged"]
        assert reason and "\n" not in reason
        assert "damaged: " in results["ls"][1] and "damaged: " in results["show first"][1]


def test_a_foreign_folder_is_listed_not_fatal(pristine, tmp_path):
    root, hashes = copy_root(pristine, tmp_path)
    foreign = root / "checkpoints" / "not a hash"
    foreign.mkdir()
    (foreign / "manifest.yaml").write_text("hash: nope\ncheckpoints: []\n")
    results = every_command(root, hashes, tmp_path / "report.html")
    assert {name for name, (code, _) in results.items() if code != 0} == {"verify"}
    assert "not a hash is not named like an experiment hash" in results["ls"][1]
    assert "BAD checkpoints/not a hash: is not named like an experiment hash" in results["verify"][1]


def test_no_command_follows_a_symlink_out_of_the_root(pristine, tmp_path):
    root, hashes = copy_root(pristine, tmp_path)
    outside = tmp_path / "outside"
    shutil.copytree(root / "checkpoints" / hashes[1], outside)
    precious = outside / "model" / "precious_step_000002.pt"
    precious.write_bytes(b"precious")
    (root / "checkpoints" / "deadbeefdeadbeef").symlink_to(outside, target_is_directory=True)
    model_dir = root / "checkpoints" / hashes[0] / "model"
    victim = sorted(model_dir.glob("*_step_*.pt"))[1]
    outside_file = tmp_path / "outside_checkpoint.pt"
    shutil.move(victim, outside_file)
    victim.symlink_to(outside_file)  # a listed checkpoint that is a link to a file outside the root
    before = tree_digest(outside) | {"file": hashlib.sha256(outside_file.read_bytes()).hexdigest()}
    results = every_command(root, hashes, tmp_path / "report.html")
    assert results["gc"][0] == 0 and results["ls"][0] == 0
    assert "deadbeefdeadbeef is a symbolic link (not followed)" in results["ls"][1]
    assert "is a symbolic link (not followed)" in results["verify"][1] and results["verify"][0] == 1
    assert run("gc", root, "--keep-last", "1")[0] == 0
    assert tree_digest(outside) | {"file": hashlib.sha256(outside_file.read_bytes()).hexdigest()} == before
    assert precious.read_bytes() == b"precious" and outside_file.is_file()
    with pytest.raises(PermissionError, match="symbolic link"):
        wle.open_root(root).store.delete(hashes[0], victim.name)


def test_resume_skips_a_damaged_experiment_and_says_so(pristine, tmp_path):
    root, hashes = copy_root(pristine, tmp_path)
    damage_truncated_manifest(root, hashes[0])
    system = wle.get_checkpoint_system(str(root), checkpoint_frequency=None, resume=True)
    with Recorder(system.bus) as recorder:
        model = wle.register_model("model", mlp())
        optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
        wle.register_hyperparams("config", {"batch_size": 16})  # matches the damaged first hash
        assert system.experiment_hash == hashes[0] and system.step == 0, "nothing was resumed"
        corrupted = recorder.of_type("checkpoint_corrupted")
        assert corrupted and corrupted[0].data["file"].endswith(f"{hashes[0]}/manifest.yaml")
        assert "digest" in corrupted[0].data["problem"]
        assert system.resume(hash=hashes[1][:8]) == 8, "the sound experiment still resumes"
        faults = system.verify()
        assert len(faults) > 1 and f"{hashes[0]}/manifest.yaml: its SHA-256 digest" in faults[0]
        assert all(hashes[0] in fault for fault in faults), "the sound experiment verifies"
        with pytest.raises(wle.CheckpointNotFoundError, match="cannot be resumed: manifest .* is damaged"):
            system.resume(hash=hashes[0][:8])
    train(model, optimizer, 1)
    close_all()


# -- the fuzz test of issue 10's "Proof" ----------------------------------------------------------

DAMAGE = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=10_000),  # which file (modulo the file count)
        st.sampled_from(["truncate", "flip"]),
        st.floats(min_value=0.0, max_value=0.999),  # where in the file
        st.integers(min_value=1, max_value=255),  # the xor mask of a flip
    ),
    min_size=1,
    max_size=3,
)


def damaged_files(root: Path, plan: list[tuple[int, str, float, int]]) -> set[Path]:
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix in (".yaml", ".jsonl", ".pt", ".pkl", ".json", ".txt")
    )
    original = {path: path.read_bytes() for path in files}
    for index, action, where, mask in plan:
        path = files[index % len(files)]
        data = bytearray(path.read_bytes())
        if not data:
            continue
        cut = int(len(data) * where)
        if action == "truncate":
            data = data[:cut]
        else:
            data[cut] ^= mask
        path.write_bytes(bytes(data))
    return {path for path in files if path.read_bytes() != original[path]}  # two flips may undo each other


def log_is_readable(path: Path) -> bool:
    try:
        read_events(path)
    except (EventLogError, UnicodeDecodeError):
        return False
    return True


# Deterministic (derandomize) and bounded: 20 examples, ~15 s; no shrinking, which could run for
# minutes on a failure (the failing plan is printed as generated).
@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(plan=DAMAGE)
def test_fuzz_damaged_bytes_never_break_the_cli_or_resume(pristine, plan):
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        root, hashes = copy_root(pristine, base)
        outside = base / "outside"
        outside.mkdir()
        (outside / "keep.pt").write_bytes(b"outside the root")
        changed = damaged_files(root, plan)
        results = every_command(root, hashes, base / "report.html")
        assert (outside / "keep.pt").read_bytes() == b"outside the root"
        assert sorted(p.name for p in base.iterdir()) == ["experiments", "outside", "report.html"]
        verify_output = results["verify"][1]
        for path in changed:
            relative = path.relative_to(root).as_posix()
            if path.name == "events.jsonl":
                if not log_is_readable(path):
                    assert f"BAD {relative}: " in verify_output, verify_output
            else:
                assert f"BAD {relative}: " in verify_output, (relative, verify_output)
        listed = {row["hash"]: row for row in json.loads(results["ls --json"][1])}
        sound = [h for h in hashes if not any(f"checkpoints/{h}/" in p.as_posix() for p in changed)]
        for h in sound:
            assert listed[h]["damaged"] is None
        system = wle.get_checkpoint_system(str(root), checkpoint_frequency=None, resume=True)
        try:
            model = wle.register_model("model", mlp())
            wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
            wle.register_hyperparams("config", {"batch_size": 16})
            for h in sound:
                assert system.resume(hash=h) > 0
        finally:
            close_all()
