"""Runs stopped from outside: Ctrl-C and SIGTERM stop them cleanly; a killed one shows so.

Each test runs ``orchestra`` in its own process on a run file whose tasks take two minutes,
and stops it once the ledger shows a task running.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestration.cli import app
from orchestration.ledger import Ledger

runner = CliRunner()

SLOW_RUN_FILE = """
from llm_abstractions import LlmFactory
from llm_abstractions.testing import FunctionLlm
from orchestration import AgentRegistry, AgentTask

LlmFactory.register_provider(
    "slow", lambda **_: FunctionLlm(lambda r: "ok", latency=120), replace=True
)
registry = AgentRegistry()
registry.register_agent("sleeper", "slow")
tasks = [
    AgentTask(task_id="first", description="one", agent="sleeper"),
    AgentTask(task_id="second", description="two", agent="sleeper", depends_on=("first",)),
]
"""


def ledger_path() -> Path:
    return Path(os.environ["ORCHESTRA_DB_URL"].removeprefix("sqlite:///"))


def sql(statement: str, *params: Any) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(ledger_path())) as db, db:
        return db.execute(statement, params).fetchall()


def start(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    """``orchestra ARGS`` in its own process (a slow run file is at ``tmp_path/slow.py``)."""
    (tmp_path / "slow.py").write_text(SLOW_RUN_FILE)
    return subprocess.Popen(
        [sys.executable, "-m", "orchestration.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "120"},
    )


def wait_for_a_running_task(process: subprocess.Popen[str], run_id: str | None = None) -> str:
    """The id of the run ``process`` is running, once one of its tasks has started."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            found = sql(
                "SELECT runs.id FROM runs JOIN task_runs ON task_runs.run_id = runs.id "
                "WHERE runs.status = 'running' AND task_runs.status = 'running' "
                "AND runs.pid = ?",
                process.pid,
            )
        except sqlite3.OperationalError:  # no ledger yet, or not its tables
            found = []
        if found and run_id in (None, found[0][0]):
            return str(found[0][0])
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"no task started: {process.communicate()}")


def stop(process: subprocess.Popen[str], signum: int) -> tuple[str, str]:
    process.send_signal(signum)
    try:
        return process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stopped_run_is_recorded_cancelled_and_says_how_to_resume(
    tmp_path: Path, signum: int, code: int
) -> None:
    process = start(tmp_path, "run", "slow.py")
    run_id = wait_for_a_running_task(process)
    _, err = stop(process, signum)
    assert process.returncode == code, err
    # Without a terminal, each task's end is a line (for logs); then how to go on.
    *ended, said = err.strip().splitlines()
    assert [line.split("\t")[:2] for line in ended] == [["first", "cancelled"]]
    assert said == f"interrupted; resume with `orchestra resume {run_id}`"
    assert sql("SELECT status FROM runs WHERE id = ?", run_id) == [("cancelled",)]
    assert sql("SELECT task_id, status FROM task_runs WHERE run_id = ?", run_id) == [
        ("first", "cancelled")
    ]


def test_a_stopped_resume_says_the_same(tmp_path: Path) -> None:
    first = start(tmp_path, "run", "slow.py", "--json")
    run_id = wait_for_a_running_task(first)
    stop(first, signal.SIGTERM)
    again = start(tmp_path, "resume", run_id[:10], "--file", "slow.py", "--json")
    wait_for_a_running_task(again, run_id)
    out, err = stop(again, signal.SIGTERM)
    assert again.returncode == 143, err
    assert err.strip().splitlines() == [f"interrupted; resume with `orchestra resume {run_id}`"]
    assert out == ""
    assert sql("SELECT status FROM runs WHERE id = ?", run_id) == [("cancelled",)]


def test_a_run_whose_process_died_shows_interrupted(tmp_path: Path) -> None:
    process = start(tmp_path, "run", "slow.py")
    run_id = wait_for_a_running_task(process)
    process.kill()  # SIGKILL: nothing is recorded
    process.communicate(timeout=60)
    elsewhere = "elsewhere-" + run_id[:8]
    sql(  # the same run on another machine cannot be checked: it stays running
        "INSERT INTO runs (id, name, status, task_count, started_at, pid, host) "
        "SELECT ?, name, status, task_count, started_at, pid, 'another-host' FROM runs "
        "WHERE id = ?",
        elsewhere,
        run_id,
    )
    listed = json.loads(runner.invoke(app, ["runs", "--json"]).output)
    assert {r["id"]: r["status"] for r in listed} == {run_id: "interrupted", elsewhere: "running"}
    shown = json.loads(runner.invoke(app, ["show", run_id, "--json"]).output)
    assert shown["status"] == "interrupted"
    assert [(t["task_id"], t["status"]) for t in shown["tasks"]] == [("first", "interrupted")]
    table = runner.invoke(app, ["show", run_id, "--format", "table"], env={"COLUMNS": "200"})
    assert f"Run {run_id}: interrupted" in table.output
    reported = json.loads(runner.invoke(app, ["report", run_id, "--json"]).output)
    assert reported["status"] == "interrupted"
    assert [(t["task_id"], t["status"]) for t in reported["tasks"]] == [
        ("first", "interrupted"),
        ("second", "pending"),
    ]
    # Read commands write nothing: the ledger still says what the dead process left.
    assert sql("SELECT status FROM runs WHERE id = ?", run_id) == [("running",)]
    assert sql("SELECT status FROM task_runs WHERE run_id = ?", run_id) == [("running",)]


def test_a_running_run_of_a_live_process_stays_running() -> None:
    Ledger().close()  # an empty ledger
    sql(
        "INSERT INTO runs (id, name, status, task_count, started_at, pid, host) "
        "VALUES ('live', 'x', 'running', 0, '2026-01-01 00:00:00', ?, ?)",
        os.getpid(),
        socket.gethostname(),
    )
    listed = json.loads(runner.invoke(app, ["runs", "--json"]).output)
    assert [(r["id"], r["status"]) for r in listed] == [("live", "running")]


LOCAL_RUN_FILE = """
from orchestration import AgentRegistry, AgentTask

registry = AgentRegistry()
registry.register_agent("writer", "local", metadata={"max_tokens": 4000, "temperature": 0.7})
tasks = [
    AgentTask(
        task_id="story", description="Write a very long story about a lighthouse.", agent="writer"
    )
]
"""


@pytest.mark.model
@pytest.mark.parametrize("pause", [0.0, 1.0, 3.0])
def test_ctrl_c_during_embedded_generation_stops_cleanly(tmp_path: Path, pause: float) -> None:
    # Ctrl-C while llama.cpp computes (loading, the prompt, the answer) once crashed the
    # process (SIGSEGV in libggml-cpu) with nothing printed.
    (tmp_path / "local.py").write_text(LOCAL_RUN_FILE)
    process = start(tmp_path, "run", "local.py")
    run_id = wait_for_a_running_task(process)
    time.sleep(pause)
    _, err = stop(process, signal.SIGINT)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == f"interrupted; resume with `orchestra resume {run_id}`"
    assert sql("SELECT status FROM runs WHERE id = ?", run_id) == [("cancelled",)]
    assert sql("SELECT status FROM attempts WHERE run_id = ?", run_id) in ([], [("cancelled",)])


def test_a_run_file_whose_graph_cannot_run_is_refused_in_a_few_lines(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text(SLOW_RUN_FILE.replace('agent="sleeper", depends', "depends"))
    process = start(tmp_path, "run", "bad.py")
    out, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert out == ""  # said before any table is drawn
    assert err.strip().splitlines() == [
        "error: The task graph cannot run (1 problem(s)):",
        "  - task 'second' names no agent and no default agent is set",
    ]
