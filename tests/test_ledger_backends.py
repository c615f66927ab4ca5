"""One conformance suite for the ledger, on SQLite and on a real PostgreSQL server.

Each test runs twice: on a SQLite file and on a fresh database of a throwaway PostgreSQL
cluster (``tests/support/postgres.py``, skipped with its reason only where the server
binaries are missing). What it covers: runs, resume and its claim, extend, the response
cache, breaker state, tool calls and replays, migrations, and the CLI reading it all.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from llm_abstractions import LlmFactory, LlmRequest, LLMServerError
from llm_abstractions.testing import FunctionLlm
from llm_abstractions.types import LlmResponse, ToolCall
from orchestration import AgentRegistry, AgentTask, RetryPolicy, TaskExecutor
from orchestration.cli import app
from orchestration.cli.report_data import load_report
from orchestration.ledger import Ledger
from orchestration.ledger.schema import MIGRATIONS, pending
from orchestration.runtime.resume import claim_run, load_run
from tests.support.postgres import PostgresServer, server_binaries_missing

pytestmark = pytest.mark.anyio
cli = CliRunner()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    missing = server_binaries_missing()
    if missing is not None:
        pytest.skip(f"no PostgreSQL server to test against: {missing}")
    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "sqlite":
        found = f"sqlite:///{tmp_path / 'runs.db'}"
    else:
        found = request.getfixturevalue("postgres").database()
    monkeypatch.setenv("ORCHESTRA_DB_URL", found)  # for the CLI
    return found


@pytest.fixture
def ledger(url: str) -> Iterator[Ledger]:
    opened = Ledger(url)
    yield opened
    opened.close()


def agents(answer: object) -> AgentRegistry:
    LlmFactory.register_provider("scripted", lambda **_: FunctionLlm(answer), replace=True)  # type: ignore[arg-type]
    registry = AgentRegistry()
    registry.register_agent("w", "scripted")
    return registry


async def test_a_run_its_resume_and_an_extension_read_back_alike(ledger: Ledger) -> None:
    failing = {"once"}

    def answer(request: LlmRequest) -> str:
        task = str(request.metadata["task_id"])
        if task in failing:
            failing.discard(task)
            raise LLMServerError("down", status_code=500)
        return f"done {task}"

    tasks = [
        AgentTask(task_id="first", description="a", agent="w"),
        AgentTask(task_id="once", description="b", agent="w", depends_on=("first",)),
    ]
    async with TaskExecutor(agents(answer), ledger=ledger, retry=RetryPolicy.never()) as run:
        first = await run.run(tasks, name="conformance")
        assert first.status.value == "failed"
        again = await run.resume(first.run_id, retry_failed=True)
        assert again.ok
        more = await run.extend(
            first.run_id,
            [AgentTask(task_id="more", description="c", agent="w", depends_on=("once",))],
        )
        assert more.ok
    report = load_report(ledger, first.run_id[:10])
    assert [(t.task_id, t.status) for t in report.tasks] == [
        ("first", "succeeded"),
        ("once", "succeeded"),
        ("more", "succeeded"),
    ]
    assert [(a.task_id, a.status) for a in report.attempts] == [
        ("first", "succeeded"),
        ("once", "failed"),
        ("once", "succeeded"),
        ("more", "succeeded"),
    ]
    shown = cli.invoke(app, ["show", first.run_id[:12], "--format", "plain"])
    assert shown.exit_code == 0 and "more\tw\tsucceeded" in shown.output
    exported = cli.invoke(app, ["export", first.run_id]).output.splitlines()
    assert len(exported) == 1 + 1 + 3 + 4  # the run, its agent, tasks and attempts
    assert cli.invoke(app, ["output", first.run_id, "more"]).output == "done more\n"


async def test_of_two_resumes_of_a_run_one_claims_it(ledger: Ledger) -> None:
    def answer(request: LlmRequest) -> str:
        raise LLMServerError("down", status_code=500)

    async with TaskExecutor(agents(answer), ledger=ledger, retry=RetryPolicy.never()) as run:
        failed = await run.run([AgentTask(task_id="t", description="a", agent="w")])
    saved = load_run(ledger, failed.run_id)
    assert claim_run(ledger, saved) is True
    assert claim_run(ledger, saved) is False  # the row no longer is what it read


async def test_cached_answers_and_breaker_state_are_shared_through_it(ledger: Ledger) -> None:
    calls: list[str] = []

    def answer(request: LlmRequest) -> str:
        calls.append(str(request.metadata["task_id"]))
        return "cached answer"

    registry = agents(answer)
    task = AgentTask(task_id="t", description="the same question", agent="w")
    async with TaskExecutor(registry, ledger=ledger, cache=True) as run:
        await run.run([task])
        second = await run.run([task])
    assert calls == ["t"] and second.results["t"].metadata["execution_method"] == "cache"

    def down(request: LlmRequest) -> str:
        raise LLMServerError("down", status_code=500)

    from orchestration import BreakerPolicy

    policy = BreakerPolicy(consecutive_failures=2, window=10, min_calls=100)
    async with TaskExecutor(
        agents(down), ledger=ledger, retry=RetryPolicy.never(), breaker=policy
    ) as run:
        await run.run([AgentTask(task_id=f"t{i}", description=str(i), agent="w") for i in range(2)])
    with ledger.session() as session:
        state = session.execute(text("SELECT state FROM breakers WHERE provider = 'scripted'"))
        assert state.scalar_one() == "open"


async def test_tool_calls_are_recorded_replayed_and_removed(ledger: Ledger) -> None:
    charged: list[int] = []

    def charge(cents: int) -> str:
        """Charge."""
        charged.append(cents)
        return "receipt"

    turns = {"n": 0}

    def answer(request: LlmRequest) -> LlmResponse | str:
        turns["n"] += 1
        if turns["n"] == 2:
            raise LLMServerError("down", status_code=500)  # the first attempt dies mid-loop
        if not any(m.role == "tool" for m in request.messages):
            call = ToolCall(id="c", name="charge", arguments='{"cents": 5}')
            return LlmResponse(text="", provider="scripted", model="m", tool_calls=(call,))
        return "paid"

    LlmFactory.register_provider("scripted", lambda **_: FunctionLlm(answer), replace=True)
    registry = AgentRegistry()
    registry.register_agent("w", "scripted", tools=[charge])
    retry = RetryPolicy(max_attempts=2, base_delay_s=0.01, jitter=0)
    async with TaskExecutor(registry, ledger=ledger, retry=retry) as run:
        result = await run.run([AgentTask(task_id="buy", description="Buy.", agent="w")])
    assert result.ok and charged == [5]
    with ledger.session() as session:
        rows = session.execute(text("SELECT attempt, replayed FROM tool_calls ORDER BY id")).all()
    assert [(attempt, bool(replayed)) for attempt, replayed in rows] == [(1, False), (2, True)]
    assert cli.invoke(app, ["rm", result.run_id]).exit_code == 0
    with ledger.session() as session:
        assert session.execute(text("SELECT count(*) FROM tool_calls")).scalar_one() == 0


def test_migrations_apply_once_and_a_reopened_ledger_needs_none(url: str) -> None:
    Ledger(url).close()
    reopened = Ledger(url)
    try:
        with reopened.engine.connect() as connection:
            assert pending(connection) == []
            applied = connection.execute(text("SELECT name FROM schema_migrations")).scalars()
            assert sorted(applied) == sorted(name for name, _ in MIGRATIONS)
    finally:
        reopened.close()
