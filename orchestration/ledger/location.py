"""Where the run ledger is when nothing says: the project's, else the user's.

In order: ``ORCHESTRA_DB_URL`` (any SQLAlchemy URL, or a plain path to a SQLite file); the
nearest ``.orchestra/`` directory found walking up from the working directory, as git finds
``.git/`` (``.orchestra/runs.db`` in it), so that ``cd demos && orchestra runs`` sees the
project's runs; else the user's own ledger, ``$ORCHESTRA_HOME/runs.db`` or
``$XDG_DATA_HOME/orchestra/runs.db`` (``~/.local/share/orchestra/runs.db``), beside the
model cache. A project gets a ledger of its own with ``mkdir .orchestra``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = [
    "PROJECT_DIR",
    "default_db_url",
    "ledger_url",
    "project_ledger",
    "user_ledger",
]

PROJECT_DIR = ".orchestra"
LEDGER_FILE = "runs.db"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]+:")  # two letters at least: C:\ is a path


def default_db_url() -> str:
    """``ORCHESTRA_DB_URL``, else the project's ledger, else the user's (module docstring)."""
    configured = os.environ.get("ORCHESTRA_DB_URL")
    if configured:
        return ledger_url(configured)
    return f"sqlite:///{project_ledger() or user_ledger()}"


def ledger_url(value: str) -> str:
    """``value`` as a SQLAlchemy URL: one without a ``scheme:`` is the path of a SQLite file."""
    if _SCHEME.match(value):
        return value
    return f"sqlite:///{Path(value).expanduser()}"


def project_ledger(start: Path | None = None) -> Path | None:
    """``.orchestra/runs.db`` in the nearest ``.orchestra/`` at or above ``start`` (cwd)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / PROJECT_DIR).is_dir():
            return folder / PROJECT_DIR / LEDGER_FILE
    return None


def user_ledger() -> Path:
    """The user's own ledger: ``$ORCHESTRA_HOME/runs.db``, else in the user's data directory."""
    home = os.environ.get("ORCHESTRA_HOME")
    if home:
        return Path(home).expanduser() / LEDGER_FILE
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "orchestra" / LEDGER_FILE
