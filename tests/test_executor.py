from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from pydantic import ValidationError

from llm_abstractions import LlmFactory, LlmRequest, LLMServerError
from llm_abstractions.testing import FunctionLlm
from orchestration import (
    AgentRegistry,
    AgentTask,
    GraphValidationError,
    RunStatus,
    TaskExecutor,
    TaskStatus,
)

pytestmark = pytest.mark.anyio

Handler = Callable[[LlmRequest], Awaitable[str]] | Callable[[LlmRequest], str]


class Recorder:
    """An async model that logs when each task's call starts and ends."""

    def __init__(self, latency: float = 0.02, fail: set[str] | None = None) -> None:
        self.latency = latency
        self.fail = fail or set()
        self.log: list[tuple[str, str]] = []
        self.requests: dict[str, LlmRequest] = {}
        self.running = 0
        self.peak = 0

    async def __call__(self, request: LlmRequest) -> str:
        tid = str(request.metadata["task_id"])
        self.requests[tid] = request
        self.log.append(("start", tid))
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await anyio.sleep(self.latency)
        finally:
            self.running -= 1
            self.log.append(("end", tid))
        if tid in self.fail:
            raise LLMServerError(f"boom in {tid}", status_code=500)
        return f"output of {tid}"

    def index(self, event: str, tid: str) -> int:
        return self.log.index((event, tid))


def registry_with(recorder: Handler, **agent_settings: object) -> AgentRegistry:
    llm = FunctionLlm(recorder)
    LlmFactory.register_provider("recorded", lambda **_: llm, replace=True)
    registry = AgentRegistry()
    registry.register_agent("worker", "recorded", **agent_settings)  # type: ignore[arg-type]
    return registry


def t(task_id: str, *deps: str, **kw: Any) -> AgentTask:
    fields: dict[str, Any] = {"description": f"do {task_id}", "agent": "worker", **kw}
    return AgentTask(task_id=task_id, depends_on=deps, **fields)


async def test_dependencies_first_and_siblings_overlap() -> None:
    rec = Recorder()
    executor = TaskExecutor(registry=registry_with(rec), max_concurrency=8)
    run = await executor.run([t("a"), t("b", "a"), t("c", "a"), t("d", "b", "c")], name="diamond")
    assert run.ok and run.status is RunStatus.SUCCEEDED and run.name == "diamond"
    assert len(run.run_id) == 32
    for child, parent in [("b", "a"), ("c", "a"), ("d", "b"), ("d", "c")]:
        assert rec.index("start", child) > rec.index("end", parent)
    # b and c really run together: each starts before the other ends.
    assert rec.index("start", "c") < rec.index("end", "b")
    assert rec.index("start", "b") < rec.index("end", "c")


async def test_a_task_starts_when_its_own_dependencies_finish() -> None:
    # No level barrier: "fast-child" must not wait for the slow sibling of its parent.
    class Uneven(Recorder):
        async def __call__(self, request: LlmRequest) -> str:
            self.latency = 0.3 if request.metadata["task_id"] == "slow" else 0.01
            return await super().__call__(request)

    rec = Uneven()
    executor = TaskExecutor(registry=registry_with(rec))
    run = await executor.run([t("slow"), t("fast"), t("fast-child", "fast")])
    assert run.ok
    assert rec.index("end", "fast-child") < rec.index("end", "slow")


async def test_outputs_of_dependencies_reach_the_task() -> None:
    rec = Recorder(latency=0)
    executor = TaskExecutor(registry=registry_with(rec))
    run = await executor.run(
        [t("spec"), t("code", "spec", metadata={"context": "use sqlite", "max_tokens": 50})]
    )
    assert run.results["code"].output == "output of code"
    prompt = rec.requests["code"].messages[-1].content
    assert "Context:\nuse sqlite" in prompt
    assert "Output of task spec:\noutput of spec" in prompt
    assert rec.requests["code"].max_tokens == 50


async def test_failure_skips_descendants_but_not_independent_branches() -> None:
    rec = Recorder(fail={"b"})
    executor = TaskExecutor(registry=registry_with(rec))
    run = await executor.run([t("a"), t("b", "a"), t("c", "a"), t("d", "b"), t("e", "d"), t("x")])
    status = {tid: r.status for tid, r in run.results.items()}
    assert status == {
        "a": TaskStatus.SUCCEEDED,
        "b": TaskStatus.FAILED,
        "c": TaskStatus.SUCCEEDED,
        "d": TaskStatus.SKIPPED,
        "e": TaskStatus.SKIPPED,
        "x": TaskStatus.SUCCEEDED,
    }
    assert run.status is RunStatus.FAILED
    assert "boom in b" in (run.results["b"].error or "")
    assert run.results["d"].error == "not run: task 'b' failed"
    assert ("start", "d") not in rec.log and ("start", "e") not in rec.log


async def test_global_and_per_agent_concurrency_caps() -> None:
    rec = Recorder(latency=0.02)
    executor = TaskExecutor(registry=registry_with(rec), max_concurrency=3)
    assert (await executor.run([t(f"t{i}") for i in range(9)])).ok
    assert rec.peak == 3
    capped = Recorder(latency=0.02)
    executor = TaskExecutor(registry=registry_with(capped, max_concurrency=1), max_concurrency=8)
    assert (await executor.run([t(f"t{i}") for i in range(4)])).ok
    assert capped.peak == 1


async def test_per_task_timeout_fails_the_task() -> None:
    rec = Recorder(latency=30)
    executor = TaskExecutor(registry=registry_with(rec))
    with anyio.fail_after(10):
        result = await executor.execute(t("slow", timeout=0.05))
    assert result.status is TaskStatus.FAILED
    assert result.error == "timed out after 0.05 s"


async def test_cancelling_a_run_records_in_flight_tasks_as_cancelled() -> None:
    rec = Recorder(latency=30)
    executor = TaskExecutor(registry=registry_with(rec))
    with anyio.move_on_after(0.2) as scope:
        await executor.run([t("a"), t("b"), t("c", "a")])
    assert scope.cancelled_caught
    run = executor.last_run
    assert run is not None and run.status is RunStatus.CANCELLED
    assert run.results["a"].status is TaskStatus.CANCELLED
    assert run.results["b"].status is TaskStatus.CANCELLED
    assert "c" not in run.results  # never started
    assert run.finished_at is not None
    import sqlite3

    from orchestration.ledger import default_db_url

    with sqlite3.connect(default_db_url().removeprefix("sqlite:///")) as db:
        assert db.execute("SELECT status FROM runs").fetchall() == [("cancelled",)]
        rows = db.execute("SELECT task_id, status FROM task_runs ORDER BY task_id").fetchall()
    assert rows == [("a", "cancelled"), ("b", "cancelled")]


async def test_invalid_graph_spends_nothing() -> None:
    rec = Recorder(latency=0)
    executor = TaskExecutor(registry=registry_with(rec))
    with pytest.raises(GraphValidationError) as info:
        await executor.run([t("a"), t("b", "a", agent="nobody"), t("c", "zzz")])
    assert len(info.value.problems) == 2
    assert rec.log == []


async def test_unusable_provider_is_a_failed_task_with_a_clear_error() -> None:
    registry = AgentRegistry()
    registry.register_agent("claude", "anthropic-claude", api_key="sk-test")
    async with TaskExecutor(registry=registry) as executor:
        result = await executor.execute(AgentTask(task_id="T1", description="hi"), agent="claude")
    # Nobody listens at the API's address: the in-process call cannot connect (five times,
    # as the default retry policy says), so the script fallback tries too, and finds nobody.
    assert result.status is TaskStatus.FAILED
    assert result.attempts == 6
    assert result.metadata["execution_method"] == "script"
    assert result.metadata["error_type"] == "script:connection"
    assert "Connection refused" in (result.error or "")


async def test_execute_needs_an_agent() -> None:
    executor = TaskExecutor(registry=AgentRegistry())
    with pytest.raises(ValueError, match="names no agent"):
        await executor.execute(AgentTask(task_id="T", description="d"))


@pytest.mark.model
async def test_design_md_usage_example_on_the_embedded_model() -> None:
    from orchestration.agent_registry import AgentInterface, AgentType

    registry = AgentRegistry()
    registry.register_agent(
        name="smol",
        agent_type=AgentType.LOCAL,
        interface=AgentInterface.API,
        model=None,
        metadata={"max_tokens": 16, "temperature": 0.0, "system_prompt": "Answer briefly."},
    )
    task = AgentTask(task_id="TASK-001", description="Name a colour.", metadata={"context": "sky"})
    executor = TaskExecutor(registry=registry)
    result = await executor.execute(task, agent="smol")
    await executor.aclose()
    assert result.status is TaskStatus.SUCCEEDED
    assert result.output
    assert result.metadata["execution_method"] == "llm_factory"
    assert result.metadata["provider"] == "local"
    assert result.metadata["model"] == "SmolLM2-135M-Instruct.Q4_1"
    assert result.usage.output_tokens and result.usage.output_tokens <= 16


async def test_an_unexpected_error_fails_that_task_and_the_run_goes_on() -> None:
    async def crashy(request: LlmRequest) -> str:
        if request.metadata["task_id"] == "bad":
            raise RuntimeError("a bug in a provider")
        return "fine"

    executor = TaskExecutor(registry=registry_with(crashy))
    run = await executor.run([t("bad"), t("after", "bad"), t("other")])
    assert run.results["bad"].status is TaskStatus.FAILED
    assert run.results["bad"].error == "unexpected RuntimeError: a bug in a provider"
    assert run.results["after"].status is TaskStatus.SKIPPED
    assert run.results["other"].status is TaskStatus.SUCCEEDED


async def test_a_capped_agent_does_not_hold_global_slots() -> None:
    rec = Recorder(latency=0.1)
    llm = FunctionLlm(rec)
    LlmFactory.register_provider("recorded", lambda **_: llm, replace=True)
    registry = AgentRegistry()
    registry.register_agent("slow", "recorded", max_concurrency=1)
    registry.register_agent("free", "recorded")
    tasks = [t(f"s{i}", agent="slow") for i in range(3)] + [t("f", agent="free")]
    run = await TaskExecutor(registry=registry, max_concurrency=2).run(tasks)
    assert run.ok
    # "f" gets the second global slot at once instead of queueing behind s1 and s2.
    assert rec.index("start", "f") < rec.index("end", "s0")


async def test_a_ledger_failing_mid_run_stops_it_with_a_plain_error() -> None:
    import sqlite3

    from orchestration.ledger import LedgerError, default_db_url

    def break_ledger(request: LlmRequest) -> str:
        with sqlite3.connect(default_db_url().removeprefix("sqlite:///")) as db:
            db.execute("DROP TABLE attempts")
        return "paid for, but cannot be recorded"

    executor = TaskExecutor(registry=registry_with(break_ledger))
    with pytest.raises(LedgerError, match="Could not write to the run ledger"):
        await executor.run([t("a"), t("b", "a")])


def _ledger_rows(query: str) -> list[tuple[object, ...]]:
    import sqlite3

    from orchestration.ledger import default_db_url

    with sqlite3.connect(default_db_url().removeprefix("sqlite:///")) as db:
        return db.execute(query).fetchall()


async def test_a_dependent_starts_only_after_its_dependency_is_committed() -> None:
    seen: dict[str, list[tuple[object, ...]]] = {}

    def look(request: LlmRequest) -> str:
        tid = str(request.metadata["task_id"])
        seen[tid] = _ledger_rows("SELECT task_id, status FROM task_runs WHERE task_id != 'c'")
        return "ok"

    run = await TaskExecutor(registry=registry_with(look)).run([t("a"), t("b", "a"), t("c", "b")])
    assert run.ok
    assert ("a", "succeeded") in seen["b"]
    assert ("b", "succeeded") in seen["c"]


async def test_cancelling_records_tasks_waiting_for_a_slot_as_cancelled() -> None:
    rec = Recorder(latency=30)
    executor = TaskExecutor(registry=registry_with(rec), max_concurrency=1)
    with anyio.move_on_after(0.2):
        await executor.run([t("a"), t("b")])
    run = executor.last_run
    assert run is not None and run.status is RunStatus.CANCELLED
    assert rec.log == [("start", "a"), ("end", "a")]  # "b" never got the slot
    assert {tid: r.status for tid, r in run.results.items()} == {
        "a": TaskStatus.CANCELLED,
        "b": TaskStatus.CANCELLED,
    }
    assert _ledger_rows("SELECT task_id, status FROM task_runs ORDER BY task_id") == [
        ("a", "cancelled"),
        ("b", "cancelled"),
    ]


async def test_tasks_share_workers_instead_of_one_coroutine_each() -> None:
    peak_workers = 0

    async def count_workers(request: LlmRequest) -> str:
        nonlocal peak_workers
        workers = [w for w in anyio.get_running_tasks() if w.name == "orchestra worker"]
        peak_workers = max(peak_workers, len(workers))
        await anyio.sleep(0.001)
        return "ok"

    executor = TaskExecutor(registry=registry_with(count_workers), max_concurrency=4, record=False)
    run = await executor.run([t(f"t{i}") for i in range(60)])
    assert run.ok
    assert peak_workers == 4


async def test_results_are_priced_without_a_ledger() -> None:
    llm = FunctionLlm(lambda request: "ok")
    LlmFactory.register_provider("ollama", lambda **_: llm, replace=True)
    registry = AgentRegistry()
    registry.register_agent("w", "ollama", model="llama3.2")
    result = await TaskExecutor(registry=registry, record=False).execute(t("a"), agent="w")
    assert result.cost_usd == 0.0
    assert result.metadata["price_source"] == "local"


async def test_a_run_can_be_given_its_id_and_a_bad_one_is_refused() -> None:
    from llm_abstractions import ConfigurationError

    rec = Recorder(latency=0)
    executor = TaskExecutor(registry=registry_with(rec))
    with pytest.raises(ConfigurationError, match="run_id"):
        await executor.run([t("a")], run_id="../x")
    assert rec.log == []
    run = await executor.run([t("a")], run_id="build-42")
    assert run.run_id == "build-42"
    assert _ledger_rows("SELECT id FROM runs") == [("build-42",)]


async def test_a_run_id_already_in_the_ledger_is_refused_before_anything_runs() -> None:
    from llm_abstractions import ConfigurationError

    rec = Recorder(latency=0)
    executor = TaskExecutor(registry=registry_with(rec))
    assert (await executor.run([t("a")], run_id="twice")).ok
    with pytest.raises(ConfigurationError, match="already in the ledger"):
        await executor.run([t("b")], run_id="twice")
    assert [tid for event, tid in rec.log if event == "start"] == ["a"]
    await executor.aclose()


async def test_a_stray_cancellation_from_a_provider_leaves_no_task_without_a_result() -> None:
    import asyncio

    def handler(request: LlmRequest) -> str:
        raise asyncio.CancelledError  # not the run's own cancellation

    executor = TaskExecutor(registry=registry_with(handler), max_concurrency=1)
    run = await executor.run([t("a"), t("b")])
    assert run.status is RunStatus.CANCELLED
    assert set(run.results) == {"a", "b"}
    assert _ledger_rows("SELECT task_id, status FROM task_runs ORDER BY task_id") == [
        ("a", "cancelled"),
        ("b", "cancelled"),
    ]


async def test_examples_become_earlier_turns_of_the_conversation() -> None:
    asked: list[LlmRequest] = []

    def answer(request: LlmRequest) -> str:
        asked.append(request)
        return "ok"

    executor = TaskExecutor(
        registry=registry_with(answer, metadata={"examples": [["2+2?", "4"]]}), record=False
    )
    task = t("a", metadata={"system_prompt": "Answer with a number."})
    overridden = t("b", metadata={"examples": [("1+1?", "2"), ("3+3?", "6")]})
    with pytest.raises(ValidationError, match=r"examples' must be a list of \(prompt, answer"):
        t("c", metadata={"examples": [("only a prompt",)]})  # refused when made
    run = await executor.run([task, overridden])
    await executor.aclose()
    by_task = {str(r.metadata["task_id"]): r for r in asked}
    first = by_task["a"]
    assert first.system == "Answer with a number."
    assert [(m.role, m.content) for m in first.messages] == [
        ("user", "2+2?"),
        ("assistant", "4"),
        ("user", "do a"),
    ]
    assert [m.content for m in by_task["b"].messages] == ["1+1?", "2", "3+3?", "6", "do b"]
    assert run.ok
