"""Follow-up work in a finished run (``TaskExecutor.extend``), and progress while answers stream.

Calls go over real HTTP to the fault server speaking OpenAI's wire format; its own call log
says what was sent, so a task recorded before the extension must never be sent again.
"""

from __future__ import annotations

import sqlite3
from collections import Counter

import pytest

from llm_abstractions import LlmFactory
from llm_abstractions.errors import ConfigurationError
from llm_abstractions.testing import FunctionLlm
from orchestration import (
    AgentRegistry,
    AgentTask,
    GraphValidationError,
    RetryPolicy,
    TaskExecutor,
    TaskProgress,
    TaskStatus,
)
from orchestration.ledger import Ledger
from tests.fakes.faults import FaultPlan, FaultServer
from tests.support.ledger_rows import rows

pytestmark = pytest.mark.anyio


def registry() -> AgentRegistry:
    agents = AgentRegistry()
    agents.register_agent(
        "gpt", "openai-gpt", model="gpt-4o-mini", api_key="k", script_fallback=False
    )
    return agents


def task(tid: str, *deps: str, agent: str = "gpt") -> AgentTask:
    return AgentTask(task_id=tid, description=f"[[task:{tid}]] go", agent=agent, depends_on=deps)


async def test_extend_runs_only_the_new_tasks_fed_by_the_recorded_ones(
    server: FaultServer, ledger: Ledger
) -> None:
    async with TaskExecutor(registry(), ledger=ledger) as executor:
        first = await executor.run([task("a"), task("b", "a")], name="first")
        assert first.ok
        done: list[str] = []
        extended = await executor.extend(
            first.run_id, [task("c", "b"), task("d")], on_task_done=lambda r: done.append(r.task_id)
        )
    assert extended.run_id == first.run_id and extended.ok
    assert sorted(done) == ["c", "d"]  # the recorded tasks are not reported again
    assert extended.results["b"].output == "done:b"  # kept from the ledger
    assert Counter(c.key for c in server.log.calls) == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert rows(ledger, "SELECT task_id, position FROM run_tasks ORDER BY position") == [
        ("a", 0),
        ("b", 1),
        ("c", 2),
        ("d", 3),
    ]
    assert rows(ledger, "SELECT name, status, task_count FROM runs") == [("first", "succeeded", 4)]
    sent = rows(ledger, "SELECT request FROM attempts WHERE task_id = 'c'")[0][0]
    assert "Output of task b:\\ndone:b" in sent  # b's recorded output reached c


async def test_a_new_task_behind_a_failed_one_is_skipped_and_the_run_stays_failed(
    server: FaultServer, ledger: Ledger
) -> None:
    server.plan = FaultPlan(rate=1.0, kinds={"500": 1})  # every call fails
    async with TaskExecutor(registry(), ledger=ledger, retry=RetryPolicy.never()) as executor:
        first = await executor.run([task("a")])
        server.plan = FaultPlan(rate=0.0)
        extended = await executor.extend(first.run_id, [task("b", "a"), task("c")])
    assert extended.results["a"].status is TaskStatus.FAILED
    assert extended.results["b"].status is TaskStatus.SKIPPED
    assert extended.results["c"].status is TaskStatus.SUCCEEDED
    assert not extended.ok
    assert rows(ledger, "SELECT status FROM runs") == [("failed",)]
    assert [c.key for c in server.log.calls] == ["a", "c"]


async def test_extend_refuses_bad_extensions_before_anything_is_sent(
    server: FaultServer, ledger: Ledger
) -> None:
    async with TaskExecutor(registry(), ledger=ledger) as executor:
        with pytest.raises(ConfigurationError, match="No run 'nope'"):
            await executor.extend("nope", [task("x")])
        first = await executor.run([task("a"), task("b", "a")])
        sent = len(server.log)
        with pytest.raises(GraphValidationError, match="'a' is used 2 times"):
            await executor.extend(first.run_id, [task("a")])
        with pytest.raises(GraphValidationError, match="'zz'"):
            await executor.extend(first.run_id, [task("c", "zz")])
        with pytest.raises(GraphValidationError, match="ghost"):
            await executor.extend(first.run_id, [task("c", agent="ghost")])
        assert ledger.path is not None
        with sqlite3.connect(ledger.path) as connection:  # as if the run had been cut short
            connection.execute("UPDATE task_runs SET status = 'pending' WHERE task_id = 'b'")
        with pytest.raises(ConfigurationError, match=r"never finished \(b\).*orchestra resume"):
            await executor.extend(first.run_id, [task("c")])
    assert len(server.log) == sent
    assert rows(ledger, "SELECT COUNT(*) FROM run_tasks") == [(2,)]


async def test_extend_needs_the_ledger() -> None:
    from orchestration.model.errors import LedgerError

    async with TaskExecutor(registry(), record=False) as executor:
        with pytest.raises(LedgerError, match="record=True"):
            await executor.extend("any", [task("a")])


async def test_progress_reports_each_piece_as_it_streams_over_http(
    server: FaultServer, ledger: Ledger
) -> None:
    reports: list[TaskProgress] = []
    async with TaskExecutor(registry(), ledger=ledger) as executor:
        run = await executor.run([task("a"), task("b", "a")], on_progress=reports.append)
    assert run.ok
    assert all(call.stream for call in server.log.calls)  # asked to stream because watched
    for tid in ("a", "b"):
        mine = [r for r in reports if r.task_id == tid]
        assert "".join(r.delta for r in mine) == run.results[tid].output == f"done:{tid}"
        assert [r.output_tokens for r in mine] == sorted(r.output_tokens for r in mine)
        assert mine[0].agent == "gpt" and mine[0].provider == "openai-gpt"
        assert mine[-1].model == "gpt-4o-mini" and mine[-1].elapsed_s >= mine[0].first_token_s
    # The answer is recorded as it would be without streaming: usage from the final chunk.
    assert rows(ledger, "SELECT status, input_tokens > 0 FROM attempts") == [("succeeded", 1)] * 2


async def test_without_a_progress_callback_nothing_streams(
    server: FaultServer, ledger: Ledger
) -> None:
    async with TaskExecutor(registry(), ledger=ledger) as executor:
        assert (await executor.run([task("a")])).ok
    assert [call.stream for call in server.log.calls] == [False]


async def test_token_counts_come_from_the_provider_when_it_gives_them() -> None:
    LlmFactory.register_provider("words", lambda **_: FunctionLlm(lambda _: "one two three four"))
    agents = AgentRegistry()
    agents.register_agent("w", "words")
    reports: list[TaskProgress] = []

    def broken(_: TaskProgress) -> None:
        raise RuntimeError("a display bug")

    async with TaskExecutor(agents, record=False) as executor:
        run = await executor.run([task("a", agent="w")], on_progress=reports.append)
        again = await executor.run([task("b", agent="w")], on_progress=broken)
    assert [r.output_tokens for r in reports] == [1, 2, 3, 4]  # one a word, as the double says
    assert run.ok and again.ok  # a progress display that raises does not break the run
