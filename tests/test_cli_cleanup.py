"""`orchestra rm` and `orchestra prune`: runs forgotten whole, live ones never."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from contextlib import closing

from typer.testing import CliRunner

from orchestration.cli import app
from orchestration.ledger import default_db_url
from tests.test_cli_formats import make_runs

runner = CliRunner()


def count(sql: str) -> int:
    path = default_db_url().removeprefix("sqlite:///")
    with closing(sqlite3.connect(path)) as db:
        return int(db.execute(sql).fetchone()[0])


def listed() -> list[str]:
    return [r["id"] for r in json.loads(runner.invoke(app, ["runs", "--json"]).stdout)]


def test_rm_forgets_a_run_and_all_that_was_recorded_of_it() -> None:
    made = make_runs(failing=1, passing=1)
    gone, kept = made
    result = runner.invoke(app, ["rm", gone.run_id[:12]])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "removed 1 run(s) and their 1 attempt(s)"
    assert listed() == [kept.run_id]
    for table in ("attempts", "task_runs", "run_tasks", "run_agents"):
        assert count(f"SELECT COUNT(*) FROM {table} WHERE run_id = '{gone.run_id}'") == 0  # noqa: S608
    assert count(f"SELECT COUNT(*) FROM attempts WHERE run_id = '{kept.run_id}'") == 1  # noqa: S608
    unknown = runner.invoke(app, ["rm", "zzzz"])
    assert unknown.exit_code == 2


def test_a_run_a_live_process_is_running_is_not_removed() -> None:
    (made,) = make_runs(failing=0, passing=1)
    path = default_db_url().removeprefix("sqlite:///")
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "UPDATE runs SET status = 'running', pid = ?, host = ?",
            (os.getpid(), socket.gethostname()),
        )
    result = runner.invoke(app, ["rm", made.run_id])
    assert result.exit_code == 2
    assert "is still running" in result.stderr
    assert listed() == [made.run_id]


def test_prune_removes_finished_runs_before_a_date_and_asks_first() -> None:
    make_runs(failing=1, passing=2)
    declined = runner.invoke(app, ["prune", "--before", "2999-01-01"], input="n\n")
    assert declined.exit_code == 1 and len(listed()) == 3
    nothing = runner.invoke(app, ["prune", "--before", "2000-01-01", "--yes"])
    assert nothing.exit_code == 0 and nothing.stdout.startswith("no finished run")
    pruned = runner.invoke(app, ["prune", "--before", "2999-01-01", "--yes"])
    assert pruned.exit_code == 0, pruned.output
    assert pruned.stdout.strip() == "removed 3 run(s) and their 3 attempt(s)"
    assert listed() == []
