"""Fixtures for suites that send calls to the fault server and read the ledger back.

Registered for every test module by ``tests/conftest.py`` (``pytest_plugins``); a module may
still define a fixture of the same name (its own wins).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestration.ledger import Ledger
from tests.fakes.faults import FaultServer


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultServer]:
    """A fault server of the test's own, answering every OpenAI client of the test."""
    with FaultServer() as running:
        monkeypatch.setenv("OPENAI_BASE_URL", f"{running.url}/v1")
        yield running


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    """A SQLite ledger in the test's temporary directory."""
    opened = Ledger(f"sqlite:///{tmp_path / 'runs.db'}")
    yield opened
    opened.close()


def rows(where: Ledger | Path | None, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """What ``sql`` reads from a ledger's SQLite file (or the file at ``where``)."""
    path = where.path if isinstance(where, Ledger) else where
    assert path is not None
    with sqlite3.connect(path) as connection:
        return connection.execute(sql, params).fetchall()
