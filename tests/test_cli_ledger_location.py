"""Where the ledger cannot be: one line saying what is wrong and what to do, exit 2.

And where it can only be read: the read commands open it read-only and write nothing.
Root ignores file permissions: run as root, the tests that need a read-only place run the
command in its own mount namespace, where that place is bound read-only (which stops root
too); elsewhere ``chmod`` does.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestration.cli import app

runner = CliRunner()

RUN_FILE = """
from llm_abstractions import LlmFactory
from llm_abstractions.testing import FunctionLlm
from orchestration import AgentRegistry, AgentTask

LlmFactory.register_provider("echo-file", lambda **_: FunctionLlm(lambda r: "ok"), replace=True)
registry = AgentRegistry()
registry.register_agent("echo", "echo-file")
tasks = [AgentTask(task_id="first", description="one", agent="echo")]
"""
READ_COMMANDS = [["runs"], ["show", "RUN"], ["attempts", "RUN"], ["report", "RUN"]]
# Binds its first argument read-only over itself, then runs the rest.
_BIND_READ_ONLY = 'mount --bind -o ro "$0" "$0" && exec "$@"'


def orchestra(
    *args: str, cwd: Path, env: dict[str, str] | None = None, frozen: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The ``orchestra`` command in its own process; ``frozen``: a directory it cannot write."""
    command = [sys.executable, "-m", "orchestration.cli", *args]
    if frozen is not None:
        frozen.chmod(0o555)
        for inside in frozen.iterdir():
            inside.chmod(0o444)
        command = [*read_only_prefix(frozen), *command]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def read_only_prefix(folder: Path) -> list[str]:
    """What to run a command under so that ``folder`` is read-only for it, even as root."""
    if os.geteuid() != 0:
        return []  # chmod holds
    prefix = ["unshare", "--mount", "sh", "-c", _BIND_READ_ONLY, str(folder)]
    if shutil.which("unshare") is None:
        pytest.skip("running as root without unshare: nothing makes a directory read-only")
    probe = subprocess.run(
        [*prefix, "sh", "-c", f"! touch {folder}/probe"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip("running as root, and a read-only bind mount is not allowed here")
    return prefix


@pytest.fixture(autouse=True)
def _writable_again(tmp_path: Path) -> Iterator[None]:
    """Leave tmp_path removable by pytest."""
    yield
    for inside in [tmp_path, *tmp_path.rglob("*")]:
        if inside.is_dir():
            inside.chmod(0o755)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text[-3000:]
    assert "Traceback" not in text
    return lines[0]


BAD = ["unknown kind", "unparsable", "missing directories", "directory", "not SQLite"]


def bad_locations(tmp_path: Path) -> dict[str, tuple[str, str, str]]:
    """Case -> (URL, a fragment of what is wrong, a fragment of what to do)."""
    (tmp_path / "notes.db").write_text("these are not the rows you are looking for\n")
    return {
        "unknown kind": ("nonsense://x", "'nonsense' is not a kind of database", "sqlite:///"),
        "unparsable": ("sqlite:relative.db", "not a database URL", "sqlite:///PATH"),
        "missing directories": (
            f"sqlite:///{tmp_path}/no/such/x.db",
            "does not exist",
            "ORCHESTRA_DB_URL",
        ),
        "directory": (f"sqlite:///{tmp_path}", "is a directory", f"{tmp_path / 'runs.db'}"),
        "not SQLite": (f"sqlite:///{tmp_path}/notes.db", "not a SQLite database", "ORCHESTRA"),
    }


@pytest.mark.parametrize("case", BAD)
def test_run_on_a_bad_ledger_location_says_so_in_one_line(tmp_path: Path, case: str) -> None:
    url, what, todo = bad_locations(tmp_path)[case]
    script = tmp_path / "pipeline.py"
    script.write_text(RUN_FILE)
    done = orchestra("run", str(script), cwd=tmp_path, env={"ORCHESTRA_DB_URL": url})
    assert done.returncode == 2, done.stderr[-3000:]
    line = one_line(done.stderr)
    assert line.startswith("orchestra: cannot open the run ledger at "), line
    assert what in line and todo in line
    assert done.stdout == ""
    assert not (tmp_path / "no").exists()  # no chain of directories made on the way


def test_every_command_that_opens_the_ledger_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for url, what, _ in bad_locations(tmp_path).values():
        monkeypatch.setenv("ORCHESTRA_DB_URL", url)
        for command in [*READ_COMMANDS, ["resume", "RUN"], ["output", "RUN"]]:
            result = runner.invoke(app, command)
            assert result.exit_code == 2, (url, command, result.output)
            assert what in one_line(result.output), (url, command)
    monkeypatch.setenv("ORCHESTRA_DB_URL", "sqlite:relative.db")
    result = runner.invoke(app, ["db"])
    assert result.exit_code == 2
    assert "'sqlite:relative.db' is not a database URL" in one_line(result.output)


def test_a_password_in_the_url_never_shows(tmp_path: Path) -> None:
    url = "postgresql://orchestra:hunter2@127.0.0.1:1/runs"
    done = orchestra("runs", cwd=tmp_path, env={"ORCHESTRA_DB_URL": url})
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert "hunter2" not in line and "orchestra:***@" in line


def test_a_plain_path_is_a_sqlite_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = tmp_path / "plain" / "runs.db"
    monkeypatch.setenv("ORCHESTRA_DB_URL", str(ledger))
    script = tmp_path / "pipeline.py"
    script.write_text(RUN_FILE)
    ran = runner.invoke(app, ["run", str(script), "--json"])
    assert ran.exit_code == 0, ran.output
    assert runner.invoke(app, ["db"]).output.strip() == str(ledger)
    assert sql(ledger, "SELECT status FROM runs") == [("succeeded",)]


def recorded_run(folder: Path) -> tuple[Path, str]:
    """A ledger in ``folder`` holding one finished run (made by ``orchestra run``)."""
    folder.mkdir(exist_ok=True)
    ledger = folder / "runs.db"
    script = folder.parent / "pipeline.py"
    script.write_text(RUN_FILE)
    done = orchestra("run", str(script), "--json", cwd=folder, env=sqlite_env(ledger))
    assert done.returncode == 0, done.stderr[-3000:]
    ((run_id,),) = sql(ledger, "SELECT id FROM runs")
    assert sorted(p.name for p in folder.iterdir()) == ["runs.db"]  # no -wal, no -shm left
    return ledger, run_id


def sql(ledger: Path, statement: str) -> list[tuple[Any, ...]]:
    """Run one statement on the ledger and close it (leaving no -wal or -shm file)."""
    with closing(sqlite3.connect(ledger)) as db, db:
        return db.execute(statement).fetchall()


def sqlite_env(ledger: Path) -> dict[str, str]:
    return {"ORCHESTRA_DB_URL": f"sqlite:///{ledger}"}


def test_read_commands_work_on_a_read_only_ledger(tmp_path: Path) -> None:
    ledger, run_id = recorded_run(tmp_path / "shelf")
    before = ledger.read_bytes()
    for command in [*READ_COMMANDS, ["runs", "--json"], ["output", "RUN"]]:
        args = [run_id if arg == "RUN" else arg for arg in command]
        done = orchestra(*args, cwd=tmp_path, env=sqlite_env(ledger), frozen=ledger.parent)
        assert done.returncode == 0, (command, done.stderr[-3000:])
        assert "Traceback" not in done.stderr
        shown = {
            "output": "=== first: succeeded ===",
            "show": "first\techo\tsucceeded",
            "attempts": "first\t1\tllm_factory",
        }
        assert shown.get(command[0], run_id) in done.stdout, (command, done.stdout)
    assert ledger.read_bytes() == before
    assert sorted(p.name for p in ledger.parent.iterdir()) == ["runs.db"]


def test_a_run_on_a_read_only_ledger_says_so(tmp_path: Path) -> None:
    ledger, _ = recorded_run(tmp_path / "shelf")
    script = tmp_path / "pipeline.py"
    done = orchestra("run", str(script), cwd=tmp_path, env=sqlite_env(ledger), frozen=ledger.parent)
    assert done.returncode == 2, done.stderr[-3000:]
    line = one_line(done.stderr)
    assert "the file is read-only" in line and "a run needs write access" in line


def test_a_run_in_an_unwritable_directory_says_so(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    script = tmp_path / "pipeline.py"
    script.write_text(RUN_FILE)
    env = sqlite_env(locked / "runs.db")
    done = orchestra("run", str(script), cwd=tmp_path, env=env, frozen=locked)
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"its directory {locked} is not writable" in one_line(done.stderr)
    assert list(locked.iterdir()) == []


def test_an_outdated_read_only_ledger_says_to_run_a_write_command(tmp_path: Path) -> None:
    ledger, _ = recorded_run(tmp_path / "shelf")
    sql(ledger, "DELETE FROM schema_migrations WHERE name = '004_checked_output'")
    done = orchestra("runs", cwd=tmp_path, env=sqlite_env(ledger), frozen=ledger.parent)
    assert done.returncode == 2, done.stderr[-3000:]
    line = one_line(done.stderr)
    assert "lacks 004_checked_output" in line and "run a write command" in line


def test_read_commands_write_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not even the switch to WAL (a write to the file's header) or a migration."""
    ledger, run_id = recorded_run(tmp_path / "shelf")
    sql(ledger, "PRAGMA journal_mode=DELETE")
    before = ledger.read_bytes()
    monkeypatch.setenv("ORCHESTRA_DB_URL", f"sqlite:///{ledger}")
    for command in [*READ_COMMANDS, ["output", "RUN"], ["providers", "--json"]]:
        result = runner.invoke(app, [run_id if arg == "RUN" else arg for arg in command])
        assert result.exit_code == 0, (command, result.output)
    assert ledger.read_bytes() == before


def test_an_outdated_writable_ledger_is_brought_up_to_date_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger, run_id = recorded_run(tmp_path / "shelf")
    sql(ledger, "DELETE FROM schema_migrations WHERE name = '004_checked_output'")
    monkeypatch.setenv("ORCHESTRA_DB_URL", f"sqlite:///{ledger}")
    result = runner.invoke(app, ["show", run_id, "--json"])
    assert result.exit_code == 0, result.output
    names = {row[0] for row in sql(ledger, "SELECT name FROM schema_migrations")}
    assert "004_checked_output" in names
