"""One conformance suite for the ledger, on SQLite and on a real PostgreSQL server.

Each test runs twice: on a SQLite file and on a fresh database of a throwaway PostgreSQL
cluster (``tests/support/postgres.py``, skipped with its reason only where the server
binaries are missing). What it covers: runs, resume and its claim, extend, the response
cache, breaker state, tool calls and replays, migrations, and the CLI reading it all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from typer.testing import CliRunner

from llm_abstractions import LlmFactory, LlmRequest, LLMServerError
from llm_abstractions.testing import FunctionLlm
from llm_abstractions.types import LlmResponse, ToolCall
from orchestration import AgentRegistry, AgentTask, RetryPolicy, TaskExecutor
from orchestration.cli import app
from orchestration.cli.report_data import load_report
from orchestration.ledger import Ledger
from orchestration.ledger.schema import MIGRATIONS, pending
from orchestration.ledger.store import sqlite_file
from orchestration.runtime.resume import claim_run, load_run
from tests.fakes.faults import FaultPlan, FaultServer
from tests.support.postgres import PostgresServer, server_binaries_missing

pytestmark = pytest.mark.anyio
cli = CliRunner()
ROOT = Path(__file__).resolve().parent.parent


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
    # Another executor (another process, as far as it knows) sharing the ledger keeps off
    # the provider until the cool-down is over: no call is sent.
    patient = RetryPolicy(max_attempts=1, max_total_s=1)
    async with TaskExecutor(agents(answer), ledger=ledger, retry=patient, breaker=policy) as run:
        held = await run.run([AgentTask(task_id="t", description="again?", agent="w")])
    assert calls == ["t"] and held.results["t"].metadata["error_type"] == "CircuitOpen"


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


WRITER = """
import sys

import anyio

from llm_abstractions import LlmFactory
from llm_abstractions.testing import FunctionLlm
from orchestration import AgentRegistry, TaskExecutor
from orchestration.ledger import Ledger

url, name = sys.argv[1], sys.argv[2]
sys.path.insert(0, sys.argv[3])  # the repository, for tests.support
from tests.support.writers import layers

LlmFactory.register_provider(
    "scripted", lambda **_: FunctionLlm(lambda r: f"{name} {r.metadata['task_id']}")
)
registry = AgentRegistry()
registry.register_agent("w", "scripted")
tasks = layers(name)


async def main() -> None:
    async with TaskExecutor(registry, ledger=Ledger(url), max_concurrency=64) as run:
        result = await run.run(tasks, run_id=name, name="writer")
    sys.exit(0 if result.ok else 1)

anyio.run(main)
"""


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    """What ``sql`` reads from the ledger at ``url``, through a connection of its own."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(sql))]
    finally:
        engine.dispose()


def test_four_processes_write_a_thousand_tasks_each_and_lose_no_row(
    url: str, tmp_path: Path
) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    # All four open the new database at once: its migrations race as well.
    logs = [tmp_path / f"writer-{n}.log" for n in range(4)]
    writers = []
    for n, log in enumerate(logs):
        with log.open("w") as stderr:
            writers.append(
                subprocess.Popen(  # noqa: S603 - our interpreter, our script
                    [sys.executable, str(script), url, f"writer-{n}", str(ROOT)],
                    cwd=ROOT,
                    stderr=stderr,
                )
            )
    ended = [(writer.wait(timeout=600), log) for writer, log in zip(writers, logs, strict=True)]
    failed = [log.read_text()[-2000:] for code, log in ended if code != 0]
    assert not failed, failed
    assert query(url, "SELECT id, status FROM runs ORDER BY id") == [
        (f"writer-{n}", "succeeded") for n in range(4)
    ]
    counts = "SELECT run_id, status, count(*) FROM {} GROUP BY run_id, status ORDER BY run_id"
    expected = [(f"writer-{n}", "succeeded", 1000) for n in range(4)]
    assert query(url, counts.format("task_runs")) == expected
    assert query(url, counts.format("attempts")) == expected
    outputs = query(url, "SELECT run_id, task_id, output FROM task_runs")
    assert all(output == f"{run} {task}" for run, task, output in outputs)
    assert query(url, "SELECT count(*) FROM schema_migrations") == [(len(MIGRATIONS),)]


KILLED = """
import anyio, sys
from orchestration import AgentRegistry, AgentTask, TaskExecutor
from orchestration.ledger import Ledger

registry = AgentRegistry()
registry.register_agent("gpt", "openai-gpt", model="gpt-4o-mini", api_key_env="FAULT_KEY")
tasks = []
for layer in range(6):
    for i in range(8):
        deps = () if layer == 0 else (f"L{layer - 1}-{i}", f"L{layer - 1}-{(i + 1) % 8}")
        tid = f"L{layer}-{i}"
        tasks.append(AgentTask(task_id=tid, description=f"[[task:{tid}]] go", agent="gpt",
                               depends_on=deps))

async def main() -> None:
    async with TaskExecutor(registry, ledger=Ledger(sys.argv[1]), max_concurrency=4) as ex:
        await ex.run(tasks, run_id="killed")

anyio.run(main)
"""


def test_kill_9_then_orchestra_resume_from_another_process_pays_nothing_twice(
    url: str, server: FaultServer, tmp_path: Path
) -> None:
    server.plan = FaultPlan(latency=0.15)
    env = {
        **os.environ,
        "OPENAI_BASE_URL": f"{server.url}/v1",
        "FAULT_KEY": "k-fault",
        "ORCHESTRA_DB_URL": url,
    }
    script = tmp_path / "child.py"
    script.write_text(KILLED)
    child = subprocess.Popen(  # noqa: S603 - our interpreter, our script
        [sys.executable, str(script), url], env=env, cwd=tmp_path
    )
    succeeded_so_far = "SELECT count(*) FROM task_runs WHERE status = 'succeeded'"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert child.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run never got going"
            try:
                if query(url, succeeded_so_far)[0][0] >= 12:
                    break
            except SQLAlchemyError:  # the file or its tables are not there yet
                pass
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    by_status = "SELECT task_id FROM task_runs WHERE status = '{}'"
    succeeded = {t for (t,) in query(url, by_status.format("succeeded"))}
    running = {t for (t,) in query(url, by_status.format("running"))}
    assert 12 <= len(succeeded) < 48 and running
    before = Counter(c.key for c in server.log.calls)
    server.plan = FaultPlan()

    resumed = subprocess.run(  # noqa: S603 - the installed CLI, as another process
        [Path(sys.executable).with_name("orchestra"), "resume", "killed", "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = Counter(c.key for c in server.log.calls)
    assert all(after[t] == before[t] for t in succeeded)  # nothing that succeeded was re-sent
    assert set(after) == {f"L{layer}-{i}" for layer in range(6) for i in range(8)}
    statuses = query(url, "SELECT status, count(*) FROM task_runs GROUP BY status")
    assert statuses == [("succeeded", 48)]
    crashed = query(url, "SELECT task_id FROM attempts WHERE status = 'crashed'")
    assert {t for (t,) in crashed} == running  # the interrupted attempts are on record
    assert query(url, "SELECT status FROM runs") == [("succeeded",)]
    stored = query(url, "SELECT definition FROM run_agents UNION SELECT definition FROM run_tasks")
    assert stored and "k-fault" not in repr(stored)  # the key was never stored
    database = sqlite_file(url)
    if database is not None:
        assert query(url, "PRAGMA integrity_check") == [("ok",)]
        assert "k-fault" not in database.read_bytes().decode("latin-1")
