"""The real coding-agent CLIs, installed from the npm registry for tests only.

They go to ``.venv/clis`` (beside the test environment, kept between runs; ``make clean``
removes it with the venv), never onto the machine's PATH: a test puts their ``bin``
directory on its own PATH. Without npm the tests that need them are skipped with the reason.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["CLI_HOME", "npm_cli"]

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
