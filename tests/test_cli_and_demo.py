from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestration.cli import app

ROOT = Path(__file__).resolve().parent.parent


def test_providers_table_names_every_provider_and_the_default() -> None:
    result = CliRunner().invoke(app, ["providers", "--format", "table"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    for name in ("anthropic-claude", "openai-gpt", "google-gemini", "ollama", "local"):
        assert name in result.output
    assert "default provider: local" in result.output


def test_providers_json_says_why_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-secret-value")
    result = CliRunner().invoke(app, ["providers", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["local"]["ok"] is True
    assert rows["anthropic-claude"]["ok"] is True  # its key is set
    assert rows["anthropic-claude"]["installed"] is True  # the SDK is a core dependency
    assert (rows["openai-gpt"]["ok"], rows["openai-gpt"]["reason"]) == (False, "set OPENAI_API_KEY")
    assert rows["ollama"]["reachable"] is False
    assert "sk-ant-secret-value" not in result.output


def test_help_and_version() -> None:
    runner = CliRunner()
    assert "providers" in runner.invoke(app, ["--help"]).output
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.strip() == "0.1.0"


@pytest.mark.model
def test_quickstart_streams_a_real_answer() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "demos" / "quickstart.py"), "Say hi.", "--max-tokens", "12"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "provider: local" in out
    answer = out.split("question: Say hi.\n\n", 1)[1].split("\n\nmodel:", 1)[0]
    assert answer.strip()
    output_tokens = int(out.split("output tokens:")[1].split()[0])
    assert 0 < output_tokens <= 12
    assert "tokens/s" in out or output_tokens == 1


def test_quickstart_bad_provider_is_a_clear_error() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "demos" / "quickstart.py"), "--provider", "olama"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "Did you mean 'ollama'?" in done.stderr
    assert "Traceback" not in done.stderr


def test_providers_with_misspelt_orchestra_provider_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ORCHESTRA_PROVIDER", "lokal")
    result = CliRunner().invoke(app, ["providers"], env={"COLUMNS": "160"})
    assert result.exit_code == 2
    assert "Did you mean 'local'?" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.model
def test_team_demo_runs_its_dag_and_records_every_task() -> None:
    import os
    import sqlite3

    done = subprocess.run(
        [sys.executable, str(ROOT / "demos" / "team.py"), "--max-tokens", "8"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "COLUMNS": "160"},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    run_id = done.stdout.split("orchestra show ")[1].split()[0]
    database = os.environ["ORCHESTRA_DB_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT task_id, status, execution_method, cost_usd FROM task_runs "
            "WHERE run_id LIKE ? ORDER BY task_id",
            (run_id + "%",),
        ).fetchall()
    assert rows == [
        ("outline", "succeeded", "llm_factory", 0.0),
        ("pitch", "succeeded", "llm_factory", 0.0),
        ("review", "succeeded", "llm_factory", 0.0),
        ("risks", "succeeded", "llm_factory", 0.0),
    ]


@pytest.mark.model
def test_todo_demo_on_the_embedded_model_fails_honestly_and_records_why(tmp_path: Path) -> None:
    import os
    import sqlite3

    out = tmp_path / "app"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "demos" / "todo_app.py"),
            "--max-tokens",
            "24",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "COLUMNS": "160"},
    )
    # SmolLM2 writes no usable file in 24 tokens: the architect's answers are refused (and
    # asked for again with the reason), it fails, nothing after it runs, and the demo says so.
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "error: the build did not finish: architect has no usable answer" in done.stderr
    assert "architect failed: invalid_output: " in done.stdout
    assert "QA verdict:" in done.stdout and "total cost: $0.0000" in done.stdout
    run_id = done.stdout.split("orchestra show ")[1].split()[0]
    database = os.environ["ORCHESTRA_DB_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT task_id, status, execution_method FROM task_runs WHERE run_id = ? "
            "ORDER BY task_id",
            (run_id,),
        ).fetchall()
        tries = db.execute(
            "SELECT attempt, validation FROM attempts WHERE run_id = ? ORDER BY attempt",
            (run_id,),
        ).fetchall()
    assert rows == [
        ("architect", "failed", "llm_factory"),
        ("backend", "skipped", None),
        ("devops", "skipped", None),
        ("frontend", "skipped", None),
        ("qa-run", "skipped", None),
        ("qa-tests", "skipped", None),
    ]
    assert tries == [(1, "refused"), (2, "refused"), (3, "refused")]
    assert out.is_dir()


@pytest.mark.model
def test_the_typed_example_gets_a_todo_from_the_embedded_model() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "demos" / "typed.py")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("succeeded Todo(title='"), done.stdout
