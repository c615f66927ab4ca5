"""Resuming runs after failures (``kill -9`` of the process running them: on both backends, in
``tests/test_ledger_backends.py``).

The fault server's own call log says what was sent; a task that succeeded before the resume
must never be sent again.
"""

from __future__ import annotations

import os
import socket
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest

from llm_abstractions.errors import ConfigurationError
from orchestration import AgentRegistry, AgentTask, RetryPolicy, TaskExecutor, TaskStatus
from orchestration.ledger import Ledger
from tests.fakes.faults import OK, FaultPlan, FaultServer
from tests.support.ledger_rows import rows

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent


def registry() -> AgentRegistry:
    agents = AgentRegistry()
    agents.register_agent(
        "gpt", "openai-gpt", model="gpt-4o-mini", api_key="k", script_fallback=False
    )
    return agents


def task(tid: str, *deps: str) -> AgentTask:
    return AgentTask(task_id=tid, description=f"[[task:{tid}]] go", agent="gpt", depends_on=deps)


def seed_failing_only(failing: str, passing: list[str]) -> int:
    """A seed under which, at a 50% rate of 500s, only ``failing`` fails its first call."""
    for seed in range(1000):
        plan = FaultPlan(rate=0.5, kinds={"500": 1}, seed=seed, max_faults_per_key=1)
        if plan.pick(failing, 1, 0) != OK and all(plan.pick(p, 1, 0) == OK for p in passing):
            return seed
    raise AssertionError("no such seed")


async def test_resume_keeps_what_succeeded_and_retries_failed_tasks_when_asked(
    server: FaultServer, ledger: Ledger
) -> None:
    seed = seed_failing_only("b", ["a", "c", "d"])
    server.plan = FaultPlan(rate=0.5, kinds={"500": 1}, seed=seed, max_faults_per_key=1)
    tasks = [task("a"), task("b", "a"), task("c", "b"), task("d")]
    async with TaskExecutor(registry(), ledger=ledger, retry=RetryPolicy.never()) as executor:
        first = await executor.run(tasks)
        statuses = {t: r.status for t, r in first.results.items()}
        assert statuses == {
            "a": TaskStatus.SUCCEEDED,
            "b": TaskStatus.FAILED,
            "c": TaskStatus.SKIPPED,
            "d": TaskStatus.SUCCEEDED,
        }
        # Without --retry-failed nothing can run: b stays failed, c skipped.
        unchanged = await executor.resume(first.run_id)
        assert unchanged.results["b"].status is TaskStatus.FAILED
        assert unchanged.results["c"].status is TaskStatus.SKIPPED
        assert [c.key for c in server.log.calls].count("c") == 0 and len(server.log) == 3
        again = await executor.resume(first.run_id, retry_failed=True)
    assert again.ok and again.results["c"].output == "done:c"
    assert again.results["a"].output == "done:a"  # kept from the ledger, fed to b
    calls = Counter(c.key for c in server.log.calls)
    assert calls == {"a": 1, "b": 2, "c": 1, "d": 1}
    tried = rows(ledger.path, "SELECT task_id, attempt, status FROM attempts ORDER BY id")
    assert tried[-2:] == [("b", 2, "succeeded"), ("c", 1, "succeeded")]
    assert rows(ledger.path, "SELECT status FROM runs") == [("succeeded",)]


async def test_resume_refuses_unknown_and_live_runs(server: FaultServer, ledger: Ledger) -> None:
    async with TaskExecutor(registry(), ledger=ledger) as executor:
        with pytest.raises(ConfigurationError, match="No run 'nope'"):
            await executor.resume("nope")
        done = await executor.run([task("a")])
        with sqlite3.connect(ledger.path or "") as connection:  # as if this process ran it
            connection.execute(
                "UPDATE runs SET status = 'running', pid = ?, host = ?",
                (os.getpid(), socket.gethostname()),
            )
        with pytest.raises(ConfigurationError, match="still being run by process"):
            await executor.resume(done.run_id)
    assert len(server.log) == 1


async def test_a_run_with_a_default_agent_resumes(server: FaultServer, ledger: Ledger) -> None:
    plain = AgentTask(task_id="p", description="[[task:p]] [[500]] go")  # names no agent
    never = RetryPolicy.never()
    async with TaskExecutor(registry(), ledger=ledger, default_agent="gpt", retry=never) as one:
        first = await one.run([plain])
    assert first.results["p"].status is TaskStatus.FAILED
    async with TaskExecutor(registry(), ledger=ledger, retry=never) as other:  # no default
        again = await other.resume(first.run_id, retry_failed=True)
    assert again.results["p"].status is TaskStatus.FAILED  # it ran: the marker fails it
    assert server.log.kinds_for("p") == ["500", "500"]


async def test_only_one_of_two_resumes_claims_the_run(server: FaultServer, ledger: Ledger) -> None:
    from orchestration.runtime.resume import claim_run, load_run

    async with TaskExecutor(registry(), ledger=ledger) as executor:
        done = await executor.run([task("a")])
    with sqlite3.connect(ledger.path or "") as connection:  # as if a dead process ran it
        connection.execute("UPDATE runs SET status = 'running', pid = 999999999")
    saved = load_run(ledger, done.run_id)
    assert claim_run(ledger, saved) is True  # the first to claim it from that state
    assert claim_run(ledger, saved) is False  # the second finds the run already taken


async def test_resume_keeps_to_what_is_left_of_the_budget(
    server: FaultServer, ledger: Ledger
) -> None:
    agents = AgentRegistry()
    agents.register_agent(
        "gpt", "openai-gpt", model="gpt-4o-mini", api_key="k", metadata={"max_tokens": 1000}
    )
    async with TaskExecutor(agents, ledger=ledger) as executor:
        first = await executor.run([task("a"), task("b")], budget_usd=0.0005)
        assert {r.status for r in first.results.values()} == {TaskStatus.BUDGET_EXCEEDED}
        kept = await executor.resume(first.run_id)  # the run's own budget still applies
        assert {r.status for r in kept.results.values()} == {TaskStatus.BUDGET_EXCEEDED}
        more = await executor.resume(first.run_id, budget_usd=0.01)
    assert more.ok and len(server.log) == 2


async def test_a_succeeded_run_is_left_alone(server: FaultServer, ledger: Ledger) -> None:
    async with TaskExecutor(registry(), ledger=ledger) as executor:
        done = await executor.run([task("a")])
        again = await executor.resume(done.run_id, retry_failed=True)
    assert again.ok and again.results["a"].output == "done:a" and len(server.log) == 1
    assert rows(ledger.path, "SELECT status, pid FROM runs") == [("succeeded", os.getpid())]


def test_migrations_bring_a_first_version_ledger_up_to_date(tmp_path: Path) -> None:
    """A database made before migration 002: its rows stay, the new columns and tables come."""
    path = tmp_path / "old.db"
    Ledger(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as connection:  # take it back to what 001 made
        for table in ("run_agents", "response_cache", "breakers"):
            connection.execute(f"DROP TABLE {table}")
        for column in (
            *("wait_s", "fallback_reason", "cached_from"),
            *("request", "response", "finish_reason", "validation"),
        ):
            connection.execute(f"ALTER TABLE attempts DROP COLUMN {column}")
        connection.execute("ALTER TABLE task_runs DROP COLUMN value")
        connection.execute("ALTER TABLE run_tasks DROP COLUMN contract")
        for column in ("pid", "host", "budget_usd"):
            connection.execute(f"ALTER TABLE runs DROP COLUMN {column}")
        connection.execute("DELETE FROM schema_migrations WHERE name != '001_initial_tables'")
        connection.execute(
            "INSERT INTO runs (id, status, task_count, started_at) "
            "VALUES ('old', 'succeeded', 0, '2026-01-01 00:00:00')"
        )
    Ledger(f"sqlite:///{path}").close()
    names = {r[0] for r in rows(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"run_agents", "response_cache", "breakers"} <= names
    columns = {r[1] for r in rows(path, "PRAGMA table_info(attempts)")}
    assert {"wait_s", "fallback_reason", "cached_from"} <= columns
    assert {"request", "response", "finish_reason", "validation"} <= columns
    assert "value" in {r[1] for r in rows(path, "PRAGMA table_info(task_runs)")}
    assert "contract" in {r[1] for r in rows(path, "PRAGMA table_info(run_tasks)")}
    assert {r[1] for r in rows(path, "PRAGMA table_info(runs)")} >= {"pid", "host", "budget_usd"}
    assert rows(path, "SELECT id, status FROM runs") == [("old", "succeeded")]


async def test_two_resumes_at_once_run_the_run_once(server: FaultServer, ledger: Ledger) -> None:
    never = RetryPolicy.never()
    async with TaskExecutor(registry(), ledger=ledger, retry=never) as executor:
        first = await executor.run(
            [AgentTask(task_id="x", description="[[task:x]] [[500]]", agent="gpt")]
        )
        outcomes: list[str] = []
        server.plan = FaultPlan(latency=0.5)  # the first resume is still running the task

        async def resume() -> None:
            try:
                await executor.resume(first.run_id, retry_failed=True)
                outcomes.append("ran")
            except ConfigurationError as exc:
                outcomes.append(str(exc))

        async with anyio.create_task_group() as tg:
            tg.start_soon(resume)
            tg.start_soon(resume)
    assert outcomes.count("ran") == 1
    refused = next(o for o in outcomes if o != "ran")  # depending on when it read the run:
    assert "resumed by another process" in refused or "still being run by process" in refused
    assert server.log.kinds_for("x") == ["500", "500"]  # the first run's call, and one more


async def test_an_agent_replaced_with_another_key_gets_a_new_client(ledger: Ledger) -> None:
    from llm_abstractions import LlmFactory
    from llm_abstractions.testing import FunctionLlm

    def keyed(api_key: str | None = None, **_: Any) -> FunctionLlm:
        return FunctionLlm(lambda request: f"key={api_key}")

    LlmFactory.register_provider("keyed", keyed, env_keys=("KEYED_API_KEY",), replace=True)
    agents = AgentRegistry()
    agents.register_agent("k", "keyed", api_key="old-key")
    one = AgentTask(task_id="t", description="x", agent="k")
    async with TaskExecutor(agents, ledger=ledger) as executor:
        before = await executor.execute(one)
        agents.register_agent("k", "keyed", api_key="new-key", replace=True)
        after = await executor.execute(one)
    assert (before.output, after.output) == ("key=old-key", "key=new-key")
