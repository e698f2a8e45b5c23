"""Runs: restarts, reruns and several processes on one root never lose, mix or overwrite anything.

Real processes (``tests/helpers/run_worker.py``), killed with SIGKILL at a step they announced,
and real files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import train

import weightslab_events as wle
from weightslab_events.eventlog import read_runs
from weightslab_events.report import report_data
from weightslab_events.runs import Run, RunLock
from weightslab_events.store import TEMP_MARK, Store

WORKER = Path(__file__).parent / "helpers" / "run_worker.py"


def start(root: Path, *args: str, stderr: Path | None = None) -> subprocess.Popen[str]:
    err = open(stderr or root.parent / f"stderr-{len(list(root.parent.glob('stderr-*')))}.txt", "w")
    command = [sys.executable, str(WORKER), "--root", str(root), *map(str, args)]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)


def finish(process: subprocess.Popen[str]) -> str:
    out, _ = process.communicate(timeout=180)
    assert process.returncode == 0, f"worker failed ({process.returncode}); see its stderr file; stdout: {out}"
    return out


def ready_step(process: subprocess.Popen[str]) -> int:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("ready "), line
    return int(line.split()[1])


def kill_at(process: subprocess.Popen[str], step: int) -> None:
    """SIGKILL a ``--lockstep`` worker at ``step``, once its run's ``started`` line is in the log.

    The worker waits for a line on stdin after each step, so the kill lands exactly at ``step``;
    the log is written by a thread of its own a few ms behind, so the test waits (polling the
    file for the run's pid, not for a fixed time) until the run has reached it.
    """
    assert process.stdout is not None and process.stdin is not None
    for line in process.stdout:
        if line.startswith("step ") and int(line.split()[1]) >= step:
            break
        process.stdin.write("\n")
        process.stdin.flush()
    log_path = Path(process.args[process.args.index("--root") + 1]) / "logs" / "events.jsonl"
    marker = f'"pid":{process.pid},'
    deadline = time.monotonic() + 60
    while marker not in (log_path.read_text() if log_path.exists() else ""):
        assert time.monotonic() < deadline, "the worker's run never reached the log"
        time.sleep(0.01)  # polling the file for a condition, not a fixed wait
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def outcomes(report: Path) -> tuple[str, list[dict], list[dict]]:
    data = json.loads(report.read_text())
    saved = [o for o in data["outcomes"] if o["type"] == "checkpoint_saved"]
    failed = [o for o in data["outcomes"] if o["type"] == "checkpoint_failed"]
    return data["run"], saved, failed


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "weightslab_events", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_a_process_opening_the_root_in_a_loop_never_breaks_a_trainers_saves(tmp_path):
    root, stop = tmp_path / "root", tmp_path / "stop"
    opener = start(root, "--open-loop", "--stop-file", stop)
    assert opener.stdout is not None and opener.stdout.readline().startswith("opened 1")
    report = tmp_path / "trainer.json"
    finish(start(root, "--steps", 30, "--freq", 1, "--report", report))
    stop.touch()
    opened = int(finish(opener).split()[-1])
    run, saved, failed = outcomes(report)
    assert failed == [] and len(saved) >= 30, "no save may fail because another process opened the root"
    assert opened > 1
    assert all(fault is None for _, _, fault in Store(root).verify())


def test_two_trainers_of_one_configuration_in_one_root_keep_every_checkpoint(tmp_path):
    root = tmp_path / "root"
    reports = [tmp_path / "a.json", tmp_path / "b.json"]
    trainers = [start(root, "--steps", 40, "--freq", 1, "--report", report) for report in reports]
    for trainer in trainers:
        finish(trainer)
    store = Store(root)
    assert [str(fault) for _, _, fault in store.verify() if fault] == [], "verify is clean"
    listed = {(hash, record["file"]): record for hash in store.hashes() for record in store.records(hash)}
    runs = set()
    for report in reports:
        run, saved, failed = outcomes(report)
        runs.add(run)
        assert failed == [] and len(saved) >= 40
        for outcome in saved:
            record = listed.get((outcome["hash"], Path(outcome["path"]).name))
            assert record is not None, f"{outcome['path']} was reported saved but is not in the manifest"
            assert record["run"] == run and record["sha256"] == outcome["sha256"]
            assert torch.load(outcome["path"], weights_only=True)["step"] == outcome["step"]
    assert len(runs) == 2 and {r["run"] for r in listed.values()} == runs
    logged = read_runs(root / "logs" / "events.jsonl")
    assert {r.id for r in logged} == runs, "one shared log, both runs in it"
    for run in logged:
        assert [e.step for e in run.events if e.type == "step"] == list(range(1, 41)), "no line lost or mixed"


def live_decisions(run) -> tuple[list, list]:
    hashes = [(e.data["old_hash"], e.data["new_hash"], e.data["cause"]) for e in run.events if e.type == "hash_changed"]
    saves = [(e.data["hash"], e.step, e.data["reason"]) for e in run.events if e.type == "checkpoint_scheduled"]
    return hashes, saves


def test_killed_twice_and_resumed_the_log_is_one_history_that_replays_run_by_run(tmp_path):
    root = tmp_path / "root"
    first = start(root, "--steps", 30, "--freq", 5, "--resume", "--lockstep")
    assert ready_step(first) == 0
    kill_at(first, 12)
    second = start(root, "--steps", 30, "--freq", 5, "--resume", "--lockstep")
    resumed_at = ready_step(second)
    assert resumed_at in (5, 10)
    kill_at(second, 22)
    third = start(root, "--steps", 30, "--freq", 5, "--resume")
    resumed_again = ready_step(third)
    assert resumed_again in (15, 20)
    finish(third)

    log_path = root / "logs" / "events.jsonl"
    runs = read_runs(log_path)
    assert len(runs) == 3 and [r.index for r in runs] == [1, 2, 3]
    assert [sum(e.type == "resumed" for e in r.events) for r in runs] == [0, 1, 1], "exactly one resumed per resume"
    assert (runs[1].resumed_from_run, runs[1].resumed_step) == (runs[0].id, resumed_at)
    assert (runs[2].resumed_from_run, runs[2].resumed_step) == (runs[1].id, resumed_again)
    assert runs[2].closed and not runs[0].closed

    result = wle.replay(log_path)
    assert [r.id for r in result.runs] == [r.id for r in runs]
    for live, replayed in zip(runs, result.runs, strict=True):
        hashes, saves = live_decisions(live)
        assert saves, "every run decided something"
        assert replayed.hash_changes == hashes
        assert replayed.checkpoints == saves
        assert {e.run for e in replayed.events} == {live.id}

    events = wle.read_events(log_path)
    keys = [(e.run, e.seq) for e in events]
    assert len(set(keys)) == len(keys), "each event once"
    assert [e.run for e in events] == [r.id for r in runs for _ in r.events], "runs in start order"
    for run in runs:
        assert [e.seq for e in run.events] == sorted(e.seq for e in run.events)
        steps = [e.step for e in run.events if e.type == "step"]
        assert steps == list(range(steps[0], steps[0] + len(steps))), "steps never jump back within a run"
    shown = cli("log", root, "--type", "step")
    assert shown.returncode == 0, shown.stderr
    assert len(shown.stdout.splitlines()) == sum(e.type == "step" for e in events), "each event once"


def test_a_torn_last_line_is_set_aside_at_restart_and_the_log_stays_readable(setup, root, caplog):
    system, model, optimizer, *_ = setup(checkpoint_frequency=2)
    train(model, optimizer, 4)
    system.close()
    log_path = root / "logs" / "events.jsonl"
    text = log_path.read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[-1]
    torn = last[: len(last) // 2]
    log_path.write_text(text[: len(text) - len(last) - 1] + torn)
    with caplog.at_level(logging.WARNING, "weightslab_events"):
        system, model, optimizer, *_ = setup(checkpoint_frequency=2)
    aside = log_path.with_name(f"events.jsonl.torn-{system.run.id}")
    assert aside.read_text() == torn + "\n"
    assert str(aside) in caplog.text, "the warning names where the torn piece went"
    train(model, optimizer, 3)
    system.close()
    assert all(json.loads(line) for line in log_path.read_text().splitlines()), "no torn piece inside the log"
    runs = read_runs(log_path)
    assert len(runs) == 2 and runs[1].id == system.run.id
    assert len(wle.replay(log_path).runs) == 2
    assert cli("log", root).returncode == 0
    assert cli("replay", log_path).returncode == 0


def test_a_rerun_without_resume_keeps_every_file_of_the_earlier_run_and_resume_continues_the_newest(tmp_path):
    root = tmp_path / "root"
    first_report, second_report = tmp_path / "1.json", tmp_path / "2.json"
    finish(start(root, "--steps", 20, "--freq", 5, "--seed", 1, "--report", first_report))
    before = {p: sha256(p) for p in (root / "checkpoints").rglob("*") if p.is_file() and p.name != "manifest.yaml"}
    store = Store(root)
    (hash,) = store.hashes()
    first_records = store.records(hash)
    finish(start(root, "--steps", 20, "--freq", 5, "--seed", 2, "--report", second_report))
    assert {p: sha256(p) for p in before} == before, "every file of run 1 keeps its SHA-256"
    first_run, _, _ = outcomes(first_report)
    second_run, saved, _ = outcomes(second_report)
    records = store.records(hash)
    assert [r for r in records if r["run"] == first_run] == first_records
    second_files = {r["file"] for r in records if r["run"] == second_run}
    assert second_files == {Path(o["path"]).name for o in saved} and len(second_files) >= 4
    assert all(second_run in name for name in second_files), "told apart on disk"
    assert all(fault is None for _, _, fault in store.verify())

    third = start(root, "--steps", 25, "--freq", 5, "--resume")
    assert ready_step(third) == 20
    finish(third)
    runs = read_runs(root / "logs" / "events.jsonl")
    assert runs[2].resumed_from_run == second_run, "resume=True continues the newest run"
    assert runs[2].resumed.data["file"].endswith(f"{second_run}.pt")


def test_the_resume_line_names_the_hash_step_run_and_newer_descendants_not_chosen(setup, root, caplog):
    system, model, optimizer, config, _ = setup(checkpoint_frequency=5)
    train(model, optimizer, 10)
    original = system.experiment_hash
    config["lr"] = 0.05  # a fork: its checkpoints are newer and descend from the original
    train(model, optimizer, 10)
    forked = system.experiment_hash
    system.wait()
    with caplog.at_level(logging.INFO, "weightslab_events"):
        assert system.resume(original) == 10
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resumed experiment")]
    assert f"resumed experiment {original} at step 10 of run {system.run.id}" in line
    assert f"{forked} step 20" in line and "not chosen" in line
    system.close()
    (run,) = read_runs(root / "logs" / "events.jsonl")
    (resumed,) = [e for e in run.events if e.type == "resumed"]
    assert resumed.data["from_run"] == system.run.id
    assert {(c["hash"], c["step"]) for c in resumed.data["not_chosen"]} >= {(forked, 20)}


def test_startup_cleanup_removes_only_temporaries_whose_writer_is_dead(root):
    model_dir = root / "checkpoints" / "0123456789abcdef" / "model"
    model_dir.mkdir(parents=True)
    alive, dead = Run(), Run()
    lock = RunLock(root, alive).acquire()
    RunLock(root, dead).acquire()._file.close()  # a run that died without closing
    live_temp = model_dir / f".x_step_000001.pt{TEMP_MARK}{alive.id}-abcd1234"
    dead_temp = model_dir / f".x_step_000002.pt{TEMP_MARK}{dead.id}-abcd1234"
    for temp in (live_temp, dead_temp):
        temp.write_bytes(b"half a checkpoint")
    try:
        removed = Store(root).open()
        assert removed == [dead_temp] and live_temp.exists() and not dead_temp.exists()
        assert not (root / "runs" / f"{dead.id}.lock").exists(), "a dead run's lock file is cleared"
    finally:
        lock.release()
    assert Store(root).open() == [live_temp]


def test_ls_show_the_reader_and_the_report_tell_the_runs_apart(tmp_path):
    """A killed run and its resume: "2 runs; run 2 resumed run 1 at step N" everywhere it helps."""
    root = tmp_path / "root"
    first = start(root, "--steps", 20, "--freq", 5, "--resume", "--lockstep")
    assert ready_step(first) == 0
    kill_at(first, 12)
    second = start(root, "--steps", 20, "--freq", 5, "--resume")
    resumed_at = ready_step(second)
    finish(second)

    opened = wle.open_root(root)
    runs = opened.runs
    assert [r.index for r in runs] == [1, 2]
    assert not runs[0].closed and runs[1].closed
    assert (runs[1].resumed_from, runs[1].resumed_step) == (runs[0].id, resumed_at)
    words = f"2 runs; run 2 resumed run 1 at step {resumed_at}"
    assert wle.runs_in_words(runs) == words
    (exp,) = list(opened)
    assert {c.run for c in exp.checkpoints if c.step <= resumed_at} == {runs[0].id}
    assert {c.run for c in exp.checkpoints if c.step > resumed_at} == {runs[1].id}

    cli = [sys.executable, "-m", "weightslab_events"]
    listing = subprocess.run([*cli, "ls", str(root)], capture_output=True, text=True, check=True).stdout
    assert words in listing
    shown = subprocess.run([*cli, "show", str(root), exp.hash[:8]], capture_output=True, text=True, check=True).stdout
    assert "run 1 started afresh: " + runs[0].id in shown and "ended without close()" in shown
    assert f"run 2 resumed run 1 at step {resumed_at}: {runs[1].id}" in shown
    as_json = subprocess.run([*cli, "show", str(root), exp.hash, "--json"], capture_output=True, text=True, check=True)
    shown_json = json.loads(as_json.stdout)
    assert [r["id"] for r in shown_json["runs"]] == [runs[0].id, runs[1].id]
    assert {c["run"] for c in shown_json["checkpoints"]} == {runs[0].id, runs[1].id}

    data = report_data(root)
    assert data["runs_words"] == words and [r["index"] for r in data["runs"]] == [1, 2]
    assert data["experiments"][0]["runs_words"] == f"run 1 started afresh; {words.split('; ', 1)[1]}"
