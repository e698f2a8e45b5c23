"""Wall time of the read-only commands on the quickstart root, against ``python -c pass``.

Each command runs as its own process (what a user or a script pays), interleaved with the
baseline in every round, so machine noise hits both alike. Prints medians with the spread
(min-max) and whether the command imported torch (it must not).

    python bench/cli_startup.py --rounds 15
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def imports_torch(args: list[str]) -> bool:
    probe = (
        "import sys\nfrom weightslab_events.cli import main\n"
        f"try:\n    main({args!r}, standalone_mode=False)\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1] == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = str(Path(folder) / "experiments")
        subprocess.run(
            [sys.executable, str(HERE.parent / "examples" / "quickstart.py"), "--root", root],
            check=True,
            capture_output=True,
        )
        listing = subprocess.run(
            [sys.executable, "-m", "weightslab_events", "ls", root, "--json"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        hashes = [row["hash"] for row in json.loads(listing)]
        first, last = hashes[-1][:8], hashes[0][:8]
        commands = {
            "ls": ["ls", root],
            "show": ["show", root, last],
            "diff": ["diff", root, first, last],
            "log": ["log", root],
            "replay": ["replay", root],
            "--version": ["--version"],
        }
        baseline: list[float] = []
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            baseline.append(timed([sys.executable, "-c", "pass"]))
            for name, cli_args in commands.items():
                times[name].append(timed([sys.executable, "-m", "weightslab_events", *cli_args]))
        base = statistics.median(baseline)
        print(
            f"python -c pass: median {base * 1000:.0f} ms (min {min(baseline) * 1000:.0f}, "
            f"max {max(baseline) * 1000:.0f}), {args.rounds} rounds"
        )
        print("| command | median | min-max | minus `python -c pass` | imports torch |")
        print("|---|---|---|---|---|")
        for name, values in times.items():
            median = statistics.median(values)
            print(
                f"| `{name}` | {median * 1000:.0f} ms | {min(values) * 1000:.0f}-{max(values) * 1000:.0f} ms | "
                f"{(median - base) * 1000:.0f} ms | {'yes' if imports_torch(commands[name]) else 'no'} |"
            )


if __name__ == "__main__":
    main()
