"""The real coding-agent CLIs, installed from the npm registry and PyPI for tests only.

They go to ``.venv/clis`` (beside the test environment, kept between runs; ``make clean``
removes it with the venv), never onto the machine's PATH: a test puts their ``bin``
directory on its own PATH. Without npm the tests that need them are skipped with the reason.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

__all__ = ["CLI_HOME", "npm_cli", "pip_cli"]

CLI_HOME = Path(__file__).resolve().parents[2] / ".venv" / "clis"


def npm_cli(package: str, command: str) -> Path:
    """The directory holding ``command`` from the npm ``package``, installed if need be."""
    found = CLI_HOME / "node_modules" / ".bin" / command
    if found.exists():
        return found.parent
    if shutil.which("npm") is None:
        pytest.skip(f"no npm to install {package} with (install Node.js and npm)")
    CLI_HOME.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(CLI_HOME), package],  # noqa: S607
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0 or not found.exists():
        raise RuntimeError(f"npm install {package} failed: {done.stderr[-2000:]}")
    return found.parent


def pip_cli(package: str, command: str) -> Path:
    """The directory holding ``command`` from the PyPI ``package``, installed if need be.

    In a virtual environment of its own under ``.venv/clis`` (a CLI such as aider pins its
    dependencies, which must not meet ours), made with the Python running the tests.
    """
    where = CLI_HOME / "pip" / package
    found = where / "bin" / command
    if found.exists():
        return found.parent
    CLI_HOME.mkdir(parents=True, exist_ok=True)
    for step in (
        [sys.executable, "-m", "venv", "--clear", str(where)],
        [str(where / "bin" / "python"), "-m", "pip", "install", "-q", package],
    ):
        done = subprocess.run(step, capture_output=True, text=True, timeout=1200, check=False)  # noqa: S603
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(step[:4])} failed: {done.stderr[-2000:]}")
    if not found.exists():
        raise RuntimeError(f"pip install {package} installed no {command!r}")
    return found.parent
