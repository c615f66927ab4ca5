"""Where the ledger is when nothing says: the nearest `.orchestra/` up the tree, else the user's.

Each command runs in its own process, in a directory of the test's, with no
``ORCHESTRA_DB_URL``: what it finds is what a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestration.ledger.location import default_db_url, project_ledger, user_ledger

RUN_FILE = """
from llm_abstractions import LlmFactory
from llm_abstractions.testing import FunctionLlm
from orchestration import AgentRegistry, AgentTask

LlmFactory.register_provider("echo", lambda **_: FunctionLlm(lambda r: "ok"), replace=True)
registry = AgentRegistry()
registry.register_agent("echo", "echo")
tasks = [AgentTask(task_id="only", description="go", agent="echo")]
"""


def orchestra(*args: str, cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ORCHESTRA_DB_URL"}
    env["ORCHESTRA_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "orchestration.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_project_s_ledger_is_found_from_any_directory_below_it(tmp_path: Path) -> None:
    project, home = tmp_path / "project", tmp_path / "home"
    deep = project / "demos" / "deeper"
    deep.mkdir(parents=True)
    (project / ".orchestra").mkdir()
    (project / "pipeline.py").write_text(RUN_FILE)
    ran = orchestra("run", "pipeline.py", "--json", cwd=project, home=home)
    assert ran.returncode == 0, ran.stderr
    run_id = json.loads(ran.stdout)["run_id"]
    listed = orchestra("runs", "--json", cwd=deep, home=home)
    assert [r["id"] for r in json.loads(listed.stdout)] == [run_id]
    assert (project / ".orchestra" / "runs.db").is_file()
    assert not home.exists()  # the user's own ledger was not touched


def test_without_a_project_runs_go_to_the_user_s_own_ledger(tmp_path: Path) -> None:
    above = project_ledger(tmp_path)
    if above is not None:
        pytest.skip(f"a .orchestra/ above the test's directory would be found: {above.parent}")
    elsewhere, home = tmp_path / "scratch", tmp_path / "home" / "nested"
    elsewhere.mkdir()
    (elsewhere / "pipeline.py").write_text(RUN_FILE)
    ran = orchestra("run", "pipeline.py", "--json", cwd=elsewhere, home=home)
    assert ran.returncode == 0, ran.stderr
    assert (home / "runs.db").is_file()  # its directories made as needed
    listed = orchestra("runs", "--json", cwd=tmp_path, home=home)
    assert len(json.loads(listed.stdout)) == 1


def test_db_names_the_ledger_before_or_after_the_subcommand(tmp_path: Path) -> None:
    (tmp_path / "pipeline.py").write_text(RUN_FILE)
    ledger = tmp_path / "mine.db"
    home = tmp_path / "home"
    ran = orchestra("run", "pipeline.py", "--db", str(ledger), "--json", cwd=tmp_path, home=home)
    assert ran.returncode == 0, ran.stderr
    for args in (["--db", str(ledger), "runs", "--json"], ["runs", "--json", "--db", str(ledger)]):
        assert len(json.loads(orchestra(*args, cwd=tmp_path, home=home).stdout)) == 1
    assert not home.exists()


def test_the_lookup_itself(tmp_path: Path, monkeypatch: object) -> None:
    (tmp_path / "a" / ".orchestra").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    assert project_ledger(tmp_path / "a" / "b" / "c") == tmp_path / "a" / ".orchestra" / "runs.db"
    assert project_ledger(tmp_path / "a") == tmp_path / "a" / ".orchestra" / "runs.db"
    assert os.environ["ORCHESTRA_DB_URL"] in default_db_url()  # the setting wins
    assert user_ledger().name == "runs.db"
