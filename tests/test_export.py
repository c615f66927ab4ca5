"""``orchestra export RUN``: every record of a run as JSON Lines, parsed and complete."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import anyio
import pytest
from typer.testing import CliRunner

from llm_abstractions import LlmFactory, LlmRequest, LLMServerError
from llm_abstractions.testing import FunctionLlm
from orchestration import AgentRegistry, AgentTask, RetryPolicy, TaskExecutor
from orchestration.cli import app
from orchestration.ledger.store import default_db_url, sqlite_file

runner = CliRunner()


KEY = "sk-export-key-0123456789abcdef"


async def make_run() -> str:
    """draft succeeds; review fails; publish never runs. The agent's key is in a prompt."""

    def answer(request: LlmRequest) -> str:
        if request.metadata["task_id"] == "review":
            raise LLMServerError("overloaded", status_code=500)
        return "a draft"

    LlmFactory.register_provider(
        "fake", lambda **_: FunctionLlm(answer), env_keys=("EXPORT_KEY",), replace=True
    )
    registry = AgentRegistry()
    registry.register_agent("writer", "fake", temperature=0.2)
    tasks = [
        AgentTask(task_id="draft", description="Write.", agent="writer"),
        AgentTask(task_id="review", description="Check.", agent="writer", depends_on=("draft",)),
        AgentTask(
            task_id="publish", description=f"Go, {KEY}.", agent="writer", depends_on=("review",)
        ),
    ]
    async with TaskExecutor(registry, retry=RetryPolicy.never()) as executor:
        return (await executor.run(tasks, name="exported")).run_id


def test_export_writes_the_run_its_agents_tasks_and_attempts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXPORT_KEY", KEY)
    run_id = anyio.run(make_run)
    done = runner.invoke(app, ["export", run_id[:10], "--format", "jsonl"])
    assert done.exit_code == 0, done.output
    records = [json.loads(line) for line in done.output.splitlines()]
    assert [r["type"] for r in records] == [
        "run",
        "agent",
        "task",
        "task",
        "task",
        "attempt",
        "attempt",
    ]
    run, agent, *tasks = records[:5]
    attempts = records[5:]
    assert (run["id"], run["name"], run["status"]) == (run_id, "exported", "failed")
    assert run["started_at"].endswith("+00:00")
    assert agent["definition"]["metadata"] == {"temperature": 0.2}
    assert [(t["task_id"], t["status"]) for t in tasks] == [
        ("draft", "succeeded"),
        ("review", "failed"),
        ("publish", "skipped"),
    ]
    assert tasks[0]["definition"]["description"] == "Write." and tasks[0]["output"] == "a draft"
    assert tasks[1]["definition"]["depends_on"] == ["draft"]
    draft, review = attempts
    assert draft["request"]["messages"] == [{"role": "user", "content": "Write."}]
    assert draft["request"]["temperature"] == 0.2 and draft["response"] == "a draft"
    assert review["status"] == "failed" and "overloaded" in review["error_message"]
    # A key in a prompt is masked where the task is recorded, so no export holds it.
    assert tasks[2]["definition"]["description"] == "Go, [REDACTED]."
    assert KEY not in done.output
    path = sqlite_file(default_db_url())
    assert path is not None
    with closing(sqlite3.connect(path)) as db:
        (counted,) = db.execute(
            "SELECT count(*) FROM attempts WHERE run_id = ?", (run_id,)
        ).fetchone()
    assert counted == len(attempts)


def test_export_of_several_runs_and_of_an_unknown_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPORT_KEY", KEY)
    first, second = anyio.run(make_run), anyio.run(make_run)
    both = runner.invoke(app, ["export", first, second])
    assert both.exit_code == 0, both.output
    runs = [json.loads(line)["id"] for line in both.output.splitlines() if '"type": "run"' in line]
    assert runs == [first, second]
    unknown = runner.invoke(app, ["export", first, "nope"])
    assert unknown.exit_code == 2 and "No run 'nope'" in unknown.output
    assert '"type"' not in unknown.output  # nothing half-written before the error
