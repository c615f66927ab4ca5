from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest
from typer.testing import CliRunner

from llm_abstractions import LlmFactory, LlmRequest, LLMServerError
from llm_abstractions.testing import FunctionLlm
from orchestration import AgentRegistry, AgentTask, RetryPolicy, RunResult, TaskExecutor
from orchestration.cli import app
from orchestration.ledger import default_db_url

runner = CliRunner()
WIDE = {"COLUMNS": "200"}


def make_run() -> RunResult:
    def handler(request: LlmRequest) -> str:
        if request.metadata["task_id"] == "b":
            raise LLMServerError("b broke", status_code=500)
        return "done"

    LlmFactory.register_provider("fake", lambda **_: FunctionLlm(handler), replace=True)
    registry = AgentRegistry()
    registry.register_agent("worker", "fake")
    tasks = [
        AgentTask(task_id=tid, description=tid, agent="worker", depends_on=deps)
        for tid, deps in [("a", ()), ("b", ("a",)), ("c", ("b",))]
    ]

    async def main() -> RunResult:
        executor = TaskExecutor(registry=registry, retry=RetryPolicy.never())
        try:
            return await executor.run(tasks, name="cli-test")
        finally:
            await executor.aclose()

    return anyio.run(main)


def test_db_prints_the_path_sqlite3_can_open() -> None:
    make_run()
    result = runner.invoke(app, ["db"])
    assert result.exit_code == 0
    path = result.output.strip()
    assert path == str(Path(default_db_url().removeprefix("sqlite:///")).resolve())
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT COUNT(*) FROM runs").fetchone() == (1,)


def test_runs_show_and_attempts_read_back_the_run() -> None:
    run = make_run()
    listed = json.loads(runner.invoke(app, ["runs", "--json"]).output)
    assert [(r["id"], r["name"], r["status"], r["tasks"]) for r in listed] == [
        (run.run_id, "cli-test", "failed", 3)
    ]
    assert listed[0]["input_tokens"] == 2 and listed[0]["cost_usd"] is None
    shown = json.loads(runner.invoke(app, ["show", run.run_id[:8], "--json"]).output)
    assert shown["run_id"] == run.run_id
    statuses = {t["task_id"]: t["status"] for t in shown["tasks"]}
    assert statuses == {"a": "succeeded", "b": "failed", "c": "skipped"}
    tried = json.loads(runner.invoke(app, ["attempts", run.run_id, "--task", "b", "--json"]).output)
    assert [(a["task_id"], a["status"], a["error_type"]) for a in tried] == [
        ("b", "failed", "LLMServerError")
    ]
    table = runner.invoke(app, ["show", run.run_id], env=WIDE)
    assert table.exit_code == 0
    assert "LLMServerError: b broke" in table.output
    assert run.run_id in runner.invoke(app, ["runs"], env=WIDE).output
    assert "llm_factory" in runner.invoke(app, ["attempts", run.run_id], env=WIDE).output


def test_unknown_run_and_missing_ledger_are_clear_errors() -> None:
    missing = runner.invoke(app, ["show", "abc"])
    assert missing.exit_code == 1 and "No ledger at" in missing.output
    assert runner.invoke(app, ["runs"]).exit_code == 0  # no ledger yet: no runs
    make_run()
    unknown = runner.invoke(app, ["show", "zzzz"])
    assert unknown.exit_code == 2
    assert "No run 'zzzz'" in unknown.output


RUN_FILE = """
from llm_abstractions import LlmFactory
from llm_abstractions.testing import FunctionLlm
from orchestration import AgentRegistry, AgentTask

LlmFactory.register_provider("echo-file", lambda **_: FunctionLlm(lambda r: "ok"), replace=True)
registry = AgentRegistry()
registry.register_agent("echo", "echo-file")
tasks = [
    AgentTask(task_id="first", description="one", agent="echo"),
    AgentTask(task_id="second", description="two", agent="echo", depends_on=("first",)),
]
"""


def test_run_file_executes_and_records(tmp_path: Path) -> None:
    script = tmp_path / "pipeline.py"
    script.write_text(RUN_FILE)
    result = runner.invoke(app, ["run", str(script), "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["status"] == "succeeded" and body["name"] == "pipeline"
    assert set(body["results"]) == {"first", "second"}
    live = runner.invoke(app, ["run", str(script)], env=WIDE)
    assert live.exit_code == 0, live.output
    assert "inspect it: orchestra show" in live.output


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("x = 1\n", "must define `registry"),
        (
            "from orchestration import AgentRegistry\nregistry = AgentRegistry()\ntasks = [1]\n",
            "list of AgentTask",
        ),
    ],
)
def test_run_file_without_registry_or_tasks(tmp_path: Path, text: str, needle: str) -> None:
    script = tmp_path / "bad.py"
    script.write_text(text)
    result = runner.invoke(app, ["run", str(script)])
    assert result.exit_code == 2
    assert needle in result.output


def test_verbose_logs_go_to_stderr_and_json_stays_clean(tmp_path: Path) -> None:
    script = tmp_path / "pipeline.py"
    script.write_text(RUN_FILE)
    result = runner.invoke(app, ["-v", "run", str(script), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "succeeded"
    assert result.stderr.count("] attempt ") == 2  # one event per attempt


def keyed_run(keys: list[str | None]) -> str:
    """A run whose agent has an explicit api_key, failed: there is something to resume.

    ``keys`` receives the key each provider built for the run is given.
    """
    answers = iter([LLMServerError("down", status_code=503)])

    def handler(request: LlmRequest) -> str:
        error = next(answers, None)
        if error is not None:
            raise error
        return "done"

    def build(**settings: Any) -> FunctionLlm:
        keys.append(settings.get("api_key"))
        return FunctionLlm(handler)

    LlmFactory.register_provider("keyed", build, env_keys=("KEYED_API_KEY",), replace=True)
    registry = AgentRegistry()
    registry.register_agent("writer", "keyed", api_key="sk-explicit-key")

    async def main() -> RunResult:
        async with TaskExecutor(registry=registry, retry=RetryPolicy.never()) as executor:
            return await executor.run([AgentTask(task_id="a", description="a", agent="writer")])

    run = anyio.run(main)
    assert run.results["a"].status.value == "failed"
    return run.run_id


KEYED_RUN_FILE = """
from orchestration import AgentRegistry, AgentTask

registry = AgentRegistry()
registry.register_agent("writer", "keyed", api_key="sk-from-the-file")
tasks = [AgentTask(task_id="a", description="a", agent="writer")]
"""


def test_resume_refuses_to_replace_an_explicit_api_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYED_API_KEY", "sk-from-the-environment")  # what it would use instead
    keys: list[str | None] = []
    run_id = keyed_run(keys)  # the ledger records that the agent had a key, never the key
    refused = runner.invoke(app, ["resume", run_id, "--retry-failed"])
    assert refused.exit_code == 2, refused.output
    assert refused.stderr.strip().splitlines() == [
        f"error: run {run_id} used agent 'writer' with an explicit api_key, which is never "
        "stored; pass --file RUNFILE.py (or --agents FILE.toml) so resume can rebuild it"
    ]
    assert keys == ["sk-explicit-key"]  # nothing built, nothing sent
    script = tmp_path / "keyed.py"
    script.write_text(KEYED_RUN_FILE)
    resumed = runner.invoke(app, ["resume", run_id, "--retry-failed", "--file", str(script)])
    assert resumed.exit_code == 0, resumed.output
    assert keys == ["sk-explicit-key", "sk-from-the-file"]
