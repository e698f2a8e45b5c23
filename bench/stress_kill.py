"""A longer crash stress run: kill a saving training process many times, check each time.

Each trial starts ``tests/helpers/crash_worker.py`` (a wide model saving every step), kills it
with SIGKILL after a random delay, then checks that every committed checkpoint verifies and loads,
and that a restart resumes from what is there.

    python bench/stress_kill.py --trials 40
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from weightslab_events.store import TEMP_MARK, Store

WORKER = Path(__file__).resolve().parent.parent / "tests" / "helpers" / "crash_worker.py"


def trial(root: Path, delay: float) -> tuple[bool, int, str]:
    process = subprocess.Popen(
        [sys.executable, str(WORKER), "--root", str(root), "--steps", "100000", "--width", "2048"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    process.stdout.readline()
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait()
    store = Store(root)
    committed = 0
    for hash, record, fault in store.verify():
        if fault is not None:
            return False, committed, str(fault)
        payload = torch.load(store.file_of(hash, record), weights_only=True)
        if payload["step"] != record["step"] or TEMP_MARK in record["file"]:
            return False, committed, f"{record['file']} does not hold what the manifest says"
        committed += 1
    if committed:
        out = subprocess.run(
            [sys.executable, str(WORKER), "--root", str(root), "--steps", "1", "--width", "2048"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if out.returncode != 0 or int(out.stdout.split()[1]) < 1:
            return False, committed, f"restart did not resume: {out.stderr[-500:]}"
    return True, committed, ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    ok = 0
    with tempfile.TemporaryDirectory() as directory:
        for number in range(args.trials):
            good, committed, why = trial(Path(directory) / f"t{number}", rng.uniform(0.05, 1.5))
            ok += good
            print(f"trial {number:3d}: {'ok' if good else 'FAILED ' + why} ({committed} committed)", flush=True)
    print(f"{ok} of {args.trials} trials ok")
    sys.exit(0 if ok == args.trials else 1)


if __name__ == "__main__":
    main()
