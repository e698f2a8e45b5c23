"""The installed package: one top-level import name, typed, a clean public namespace.

The wheel is built from a copy of the sources and installed into a fresh venv (without the
development checkout on its path) beside a user project that has its own ``handlers.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

import weightslab_events as wle

REPO = Path(__file__).resolve().parents[1]


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"{args}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for folder in ("weightslab_events", "handlers"):
        shutil.copytree(REPO / folder, source / folder, ignore=ignore)
    for file in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / file, source / file)
    dist = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, source)
    (built,) = dist.glob("weightslab_events-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed; its dependencies come from this venv's site-packages."""
    venv = tmp_path_factory.mktemp("venv")
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    purelib = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip())
    # A plain path line: the dependencies (torch, blinker, ...) become importable, but the .pth
    # files there (the development checkout's editable install) are not processed.
    (purelib / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel)
    return python


def test_the_wheel_holds_one_top_level_package_and_its_type_marker(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"weightslab_events"}
    assert "weightslab_events/py.typed" in names
    assert "weightslab_events/handlers/retention.py" in names
    assert "weightslab_events/report_template.html" in names


@pytest.mark.parametrize("first", ["theirs", "ours"])
def test_a_users_own_handlers_module_and_ours_live_side_by_side(installed, tmp_path, first):
    project = tmp_path / "project"
    project.mkdir()
    (project / "handlers.py").write_text("OWNER = 'the user'\n")
    imports = ["import handlers", "import weightslab_events as wle"]
    script = "\n".join(
        [
            *(imports if first == "theirs" else reversed(imports)),
            "from weightslab_events.handlers.retention import LatestN",
            "import weightslab_events.handlers as ours",
            "print(handlers.OWNER)",
            "print(ours.__file__)",
            "print(wle.LatestN is LatestN)",
        ]
    )
    out = run(installed, "-c", script, cwd=project).stdout.splitlines()
    assert out[0] == "the user"
    assert Path(out[1]).is_relative_to(installed.parents[1])  # ours comes from the venv, not the checkout
    assert out[2] == "True"


def test_dir_of_the_package_shows_the_public_api_only():
    names = dir(wle)
    assert "annotations" not in names
    modules = [name for name in names if isinstance(getattr(wle, name), ModuleType)]
    assert modules == ["signals"]  # public on purpose: wle.signals.hash_changed
    assert set(names) == {*wle.__all__, "__version__"}
    for name in wle.__all__:
        getattr(wle, name)
