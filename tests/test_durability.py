"""Commit, integrity, resume, injected faults and back-pressure."""

from __future__ import annotations

import errno
import logging
import threading
from pathlib import Path

import pytest
import torch
from conftest import blocking_commit, close_all, manifest_steps, mlp, train
from torch import nn

import weightslab_events as wle
from weightslab_events.store import TEMP_MARK, FileSystem, Store

# -- commit and integrity ---------------------------------------------------------------------


def test_manifest_lists_size_and_checksum_and_verify_passes(setup):
    system, model, optimizer, *_ = setup(checkpoint_frequency=2)
    train(model, optimizer, 4)
    system.wait()
    records = system.store.records(system.experiment_hash)
    assert all(len(r["sha256"]) == 64 and r["size"] > 0 for r in records)
    assert system.verify() == []


def test_stale_temporaries_from_a_crash_are_removed_at_start(root, caplog):
    # Written by pid 99999999, beyond any pid_max: its writer is certainly dead.
    stale = root / "checkpoints" / "0123456789abcdef" / "model" / f".x_step_000001.pt{TEMP_MARK}99999999-abcd"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a checkpoint")
    with caplog.at_level(logging.WARNING, "weightslab_events"):
        system = wle.get_checkpoint_system(str(root))
    assert not stale.exists() and str(stale) in caplog.text
    system.close()


def corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "flip":
        path.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    elif how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.unlink()


@pytest.mark.parametrize("how", ["flip", "truncate", "delete"])
def test_corrupt_checkpoint_is_reported_and_resume_falls_back(setup, caplog, how):
    system, model, optimizer, config, rec = setup(checkpoint_frequency=3)
    train(model, optimizer, 6)
    system.wait()
    h = system.experiment_hash
    at_three = {k: v.clone() for k, v in load_step(system, h, 3)["models"]["model"].items()}
    corrupt(system.store.checkpoint_path(h, 6), how)
    with caplog.at_level(logging.ERROR, "weightslab_events"):
        faults = system.verify()
        assert len(faults) == 1 and f"{h}_step_000006.pt" in faults[0]
        step = system.resume()
    assert step == 3 and system.step == 3
    assert f"{h}_step_000006.pt" in caplog.text
    corrupted = rec.of_type("checkpoint_corrupted")
    assert corrupted and corrupted[-1].data["file"].endswith(f"{h}_step_000006.pt")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in at_three.items())


def load_step(system, h: str, step: int) -> dict:
    return torch.load(system.store.checkpoint_path(h, step), weights_only=True)


# -- resume -----------------------------------------------------------------------------------


def test_resume_restores_every_registered_object(setup):
    system, model, optimizer, config, rec = setup(checkpoint_frequency=5)
    scheduler = wle.register_scheduler("scheduler", torch.optim.lr_scheduler.StepLR(optimizer, 2, gamma=0.5))
    sampler = wle.register_stateful("sampler", torch.Generator().manual_seed(7))
    train(model, optimizer, 10, scheduler)
    sampler_state = sampler.get_state()
    expected_rand = torch.rand(3)  # the torch RNG as it was when step 10 was saved
    torch.randint(0, 10, (3,), generator=sampler)
    system.wait()
    expected_model = {k: v.clone() for k, v in model.state_dict().items()}
    expected_lr = optimizer.param_groups[0]["lr"]
    train(model, optimizer, 3, scheduler)  # move everything on
    torch.rand(7)
    assert system.resume(step=10) == 10
    assert system.step == 10
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected_model.items())
    assert optimizer.param_groups[0]["lr"] == expected_lr and scheduler.last_epoch == 10
    assert torch.equal(sampler.get_state(), sampler_state)
    assert torch.equal(torch.rand(3), expected_rand)
    assert rec.of_type("resumed")[-1].step == 10


def test_resume_restores_the_rng_state_of_the_checkpoint(setup):
    system, model, optimizer, *_ = setup(checkpoint_frequency=4)
    train(model, optimizer, 4)
    after_save = torch.rand(4)
    system.wait()
    torch.rand(100)
    system.resume(step=4)
    assert torch.equal(torch.rand(4), after_save)


def test_restart_with_resume_true_continues_where_it_stopped(root):
    def build() -> tuple:
        model = wle.register_model("model", mlp())
        optimizer = wle.register_optimizer("optimizer", torch.optim.Adam(model.parameters(), lr=1e-2))
        wle.register_hyperparams("config", {"lr": 1e-2})
        return model, optimizer

    wle.get_checkpoint_system(str(root), checkpoint_frequency=5)
    model, optimizer = build()
    train(model, optimizer, 7)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    close_all()  # saves a final checkpoint at step 7

    system = wle.get_checkpoint_system(str(root), checkpoint_frequency=5, resume=True)
    model, optimizer = build()
    assert system.step == 7
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
    assert optimizer.state_dict()["state"][0]["step"] == 7


def test_architecture_mismatch_lists_every_difference_and_loads_nothing(setup):
    system, model, optimizer, *_ = setup(checkpoint_frequency=2)
    train(model, optimizer, 2)
    system.wait()
    h = system.experiment_hash
    model[0] = nn.Linear(8, 12)
    model[2] = nn.Linear(12, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(wle.ArchitectureMismatchError) as error:
        system.resume(hash=h)
    differences = error.value.differences
    assert len(differences) == 3
    assert "0.weight has shape [12, 8] here, [16, 8] in the checkpoint" in str(error.value)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_architecture_pickle_loads_only_when_trusted(setup):
    system, model, optimizer, *_ = setup(checkpoint_frequency=2)
    train(model, optimizer, 2)
    system.wait()
    path = system.store.architecture_path(system.experiment_hash, "pkl")
    with pytest.raises(PermissionError, match="trusted=True"):
        wle.load_architecture(path)
    models = wle.load_architecture(path, trusted=True)
    rebuilt = models["model"].to_empty(device="cpu")
    rebuilt.load_state_dict(load_step(system, system.experiment_hash, 2)["models"]["model"])
    x = torch.randn(2, 8)
    assert torch.equal(rebuilt(x), model(x))


def test_resume_of_an_unknown_hash_is_a_clear_error(setup):
    system, *_ = setup()
    with pytest.raises(wle.CheckpointNotFoundError, match="no experiment hash starts with 'feedfacefeedface'"):
        system.resume(hash="feedfacefeedface")
    with pytest.raises(wle.InvalidNameError):
        system.resume(hash="../../etc")


# -- injected faults --------------------------------------------------------------------------


class FaultyFileSystem(FileSystem):
    """Raises the kernel's error for one operation while ``fault`` is set."""

    def __init__(self) -> None:
        self.fault: tuple[str, int] | None = None

    def _maybe_fail(self, operation: str) -> None:
        if self.fault is not None and self.fault[0] == operation:
            raise OSError(self.fault[1], os_strerror(self.fault[1]))

    def open_write(self, path):
        file = super().open_write(path)
        if self.fault is not None and self.fault[0] == "write":
            file.close()
            return _FailingWriter(path, self.fault[1])
        return file

    def fsync(self, file) -> None:
        self._maybe_fail("fsync")
        super().fsync(file)

    def replace(self, source, target) -> None:
        self._maybe_fail("rename")
        super().replace(source, target)


def os_strerror(code: int) -> str:
    import os

    return os.strerror(code)


class _FailingWriter:
    """A file that accepts a few bytes, then fails as a full or broken disk does."""

    def __init__(self, path: Path, code: int) -> None:
        self._file = open(path, "ab")
        self._code = code

    def write(self, data) -> int:
        self._file.write(bytes(memoryview(data)[:10]))
        raise OSError(self._code, os_strerror(self._code))

    def flush(self) -> None:
        self._file.flush()

    def fileno(self) -> int:
        return self._file.fileno()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()


@pytest.mark.parametrize(
    "fault",
    [
        ("write", errno.ENOSPC),
        ("write", errno.EACCES),
        ("write", errno.EIO),
        ("fsync", errno.EIO),
        ("rename", errno.EROFS),
    ],
    ids=["no-space", "permission-denied", "io-error", "fsync-fails", "rename-fails"],
)
def test_write_faults_never_stop_training_nor_leave_partial_files(make_system, fault, caplog):
    fs = FaultyFileSystem()
    system = make_system(checkpoint_frequency=2, file_system=fs)
    model = wle.register_model("model", mlp())
    optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    train(model, optimizer, 1)
    system.wait()
    h = system.experiment_hash
    failed = []
    wle.subscribe(wle.signals.checkpoint_failed, failed.append)
    fs.fault = fault
    with caplog.at_level(logging.WARNING, "weightslab_events"):
        train(model, optimizer, 3)  # the save of step 2 fails; training goes on
        assert system.step == 4
        with pytest.raises(wle.CheckpointError, match=f"{h}_step_000002") as error:
            system.wait()
    reason = failed[0].data["error"]
    assert os_strerror(fault[1]) in reason and os_strerror(fault[1]) in str(error.value)
    assert f"{h}_step_000002" in caplog.text or "failed" in caplog.text
    model_dir = system.store.exp_dir(h) / "model"
    assert not (model_dir / f"{h}_step_000002.pt").exists()
    assert not list(model_dir.glob(f"*{TEMP_MARK}*")), "nothing partial is left visible"
    assert 2 not in [s for s, _ in manifest_steps(system, h)]
    fs.fault = None
    train(model, optimizer, 2)  # step 6 saves again once the fault clears
    system.wait()
    assert (6, "periodic") in manifest_steps(system, h) and system.verify() == []


def test_a_real_os_error_leaves_training_running_and_close_reports_it(make_system, root):
    system = make_system(checkpoint_frequency=2)
    model = wle.register_model("model", mlp())
    optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    (root / "checkpoints" / system.experiment_hash).write_text("a file where a directory should be")
    train(model, optimizer, 4)
    assert system.step == 4
    with pytest.raises(wle.CheckpointError, match="could not be written") as error:
        system.close()
    assert len(error.value.failures) >= 2


def test_failed_fork_writes_its_config_with_the_next_successful_save(make_system):
    fs = FaultyFileSystem()
    system = make_system(checkpoint_frequency=3, file_system=fs)
    model = wle.register_model("model", mlp())
    optimizer = wle.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    fs.fault = ("rename", errno.EIO)
    train(model, optimizer, 1)  # the start checkpoint (and the hash's files) fail
    with pytest.raises(wle.CheckpointError):
        system.wait()
    fs.fault = None
    train(model, optimizer, 2)
    system.wait()
    h = system.experiment_hash
    assert system.store.config_path(h).is_file() and manifest_steps(system, h) == [(3, "periodic")]


# -- memory and back-pressure -----------------------------------------------------------------


def test_periodic_save_is_skipped_when_the_writer_is_behind(setup, monkeypatch, caplog):
    system, model, optimizer, config, rec = setup(checkpoint_frequency=2, when_busy="skip")
    train(model, optimizer, 1)
    system.wait()
    release = blocking_commit(system, monkeypatch)
    with caplog.at_level(logging.WARNING, "weightslab_events"):
        train(model, optimizer, 5)  # step 2 is being written; 4 and 6 find no free slot
    release.set()
    skipped = rec.of_type("checkpoint_skipped")
    assert [e.step for e in skipped] == [4, 6] and "skipped the periodic checkpoint" in caplog.text
    system.wait()
    assert [s for s, _ in manifest_steps(system, system.experiment_hash)] == [1, 2]
    train(model, optimizer, 2)  # the writer has caught up: step 8 is saved again
    system.wait()
    assert [s for s, _ in manifest_steps(system, system.experiment_hash)] == [1, 2, 8]


def test_fork_saves_wait_instead_of_being_skipped(setup, monkeypatch):
    system, model, optimizer, config, rec = setup(checkpoint_frequency=2, when_busy="skip")
    train(model, optimizer, 1)
    system.wait()
    release = blocking_commit(system, monkeypatch)
    train(model, optimizer, 2)  # step 2's save is being written (blocked)
    config["lr"] = 0.5
    threading.Timer(0.3, release.set).start()
    train(model, optimizer, 1)  # the fork at step 4 waits for a slot rather than being skipped
    system.wait()
    assert not rec.of_type("checkpoint_skipped")
    assert manifest_steps(system, system.experiment_hash) == [(4, "fork")]


def test_max_pending_bounds_the_snapshots_in_memory(setup, monkeypatch):
    system, model, optimizer, *_ = setup(checkpoint_frequency=1, max_pending=2, when_busy="block")
    train(model, optimizer, 1)
    system.wait()
    release = blocking_commit(system, monkeypatch)
    threading.Timer(0.5, release.set).start()
    train(model, optimizer, 6)
    assert system.saver.pending() <= 2
    release.set()
    system.wait()
    assert [s for s, _ in manifest_steps(system, system.experiment_hash)] == list(range(1, 8))


def test_store_rejects_names_that_escape_the_root(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(wle.InvalidNameError):
        store.exp_dir("../outside")
