"""Running tasks: one at a time (``execute``) or as a DAG (``run``).

Scheduling is event-driven, not level by level: when a task ends, each dependent whose last
dependency just succeeded starts at once, and the dependents of a task that did not succeed
are marked ``skipped`` without running. Concurrency is capped globally and per agent
(``AgentConfig.max_concurrency``). A dependency's output reaches the dependent task in its
prompt (see ``prompts.build_request``).

Every run, task and attempt is recorded in the run ledger (``orchestration.ledger``) unless
``record=False``; a task's result is committed before its dependents start.

Each task gets one in-process attempt through its provider; when the provider cannot serve
(SDK missing, unreachable, a failure retrying could fix) and the agent allows it, one more
through the bundled stdlib-only script (``scripts/llm_call.py``). Agents whose interface is
``script`` or ``cli`` run their own script. Retries and fallback chains come later (see
docs/PROJECT-PLAN.md).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import structlog
from pydantic import BaseModel, Field

from llm_abstractions.base import BaseLlm
from llm_abstractions.errors import ConfigurationError
from orchestration.accounting import agent_secrets, redact
from orchestration.agent_registry import AgentConfig, AgentInterface, AgentRegistry
from orchestration.errors import LedgerError
from orchestration.graph import validate_tasks
from orchestration.prompts import build_request
from orchestration.tasks import AgentTask, TaskResult, TaskStatus

if TYPE_CHECKING:
    import networkx as nx

    from orchestration.ledger import Ledger
    from orchestration.recording import Recorder

__all__ = ["RunResult", "RunStatus", "TaskExecutor"]


class RunStatus(StrEnum):
    """How a run ended."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"  # every task succeeded
    FAILED = "failed"  # some task failed or was skipped
    CANCELLED = "cancelled"


class RunResult(BaseModel):
    """The outcome of one DAG run, task by task."""

    run_id: str
    name: str | None = None
    status: RunStatus = RunStatus.RUNNING
    results: dict[str, TaskResult] = Field(default_factory=dict)
    started_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None

    @property
    def ok(self) -> bool:
        """Whether every task succeeded."""
        return self.status is RunStatus.SUCCEEDED


class TaskExecutor:
    """Runs ``AgentTask``s on the agents of a registry.

    Args:
        registry: The agents tasks may use.
        max_concurrency: Tasks running at once, across all agents.
        default_agent: Agent for tasks that name none.
        ledger: Where runs are recorded; opened at ``default_db_url()`` on first use when
            None.
        record: Set False to record nothing (benchmarks, throwaway runs).
    """

    def __init__(
        self,
        registry: AgentRegistry,
        *,
        max_concurrency: int = 16,
        default_agent: str | None = None,
        ledger: Ledger | None = None,
        record: bool = True,
    ) -> None:
        if max_concurrency < 1:
            raise ConfigurationError("max_concurrency must be at least 1")
        self.registry = registry
        self.max_concurrency = max_concurrency
        self.default_agent = default_agent
        self.last_run: RunResult | None = None
        self.ledger = ledger
        self.record = record
        self._owns_ledger = False
        self._providers: dict[str, BaseLlm] = {}

    async def execute(self, task: AgentTask, agent: str | None = None) -> TaskResult:
        """Run one task (its dependencies are ignored) on ``agent`` or the task's own agent.

        Raises:
            UnknownAgentError: The agent is not registered.
            ConfigurationError: No agent was given at all.
        """
        name = agent or task.agent or self.default_agent
        if name is None:
            raise ConfigurationError(
                f"Task {task.task_id!r} names no agent: pass agent= or set AgentTask.agent."
            )
        self.registry.get(name)  # an UnknownAgentError, not a graph error, for one task
        run = await self.run([task.model_copy(update={"agent": name, "depends_on": ()})])
        return run.results[task.task_id]

    async def run(
        self,
        tasks: Sequence[AgentTask],
        *,
        name: str | None = None,
        default_agent: str | None = None,
        on_task_done: Callable[[TaskResult], None] | None = None,
    ) -> RunResult:
        """Run a DAG of tasks; validation errors are raised before anything runs.

        Args:
            tasks: The tasks; dependencies name other tasks of the list.
            name: A label for the run, shown by ``orchestra runs``.
            default_agent: Agent for tasks that name none.
            on_task_done: Called with each task's final result (including skipped ones),
                on the event loop, as soon as it is known; for progress displays.

        Raises:
            GraphValidationError: The graph is not runnable (every problem listed).
        """
        default = default_agent or self.default_agent
        graph = validate_tasks(tasks, self.registry, default)
        recorder = await self._recorder()
        run = RunResult(run_id=uuid.uuid4().hex, name=name)
        self.last_run = run
        if recorder is not None:
            await recorder.start_run(run.run_id, name, tasks, run.started_at)
        scheduler = _Scheduler(self, graph, {t.task_id: t for t in tasks}, default, run)
        scheduler.recorder = recorder
        scheduler.on_task_done = on_task_done
        try:
            await scheduler.run()
        except ExceptionGroup as group:
            # A ledger that cannot be written stops the run; say so plainly.
            ledger_errors = group.subgroup(lambda e: isinstance(e, LedgerError))
            if ledger_errors is None:
                raise
            run.finished_at, run.status = datetime.now(UTC), RunStatus.FAILED
            raise _first(ledger_errors) from None
        finally:
            if run.finished_at is None:
                run.finished_at = datetime.now(UTC)
                run.status = _run_status(run, len(tasks))
                if recorder is not None:
                    await recorder.finish_run(run.run_id, run.status.value, run.finished_at)
        return run

    async def _recorder(self) -> Recorder | None:
        if not self.record:
            return None
        from orchestration.recording import Recorder

        if self.ledger is None:
            from orchestration.ledger import Ledger

            # Opening migrates the schema: keep that file I/O off the event loop.
            self.ledger = await anyio.to_thread.run_sync(Ledger)
            self._owns_ledger = True
        return Recorder(self.ledger)

    async def aclose(self) -> None:
        """Close every provider this executor built."""
        providers, self._providers = list(self._providers.values()), {}
        for llm in providers:
            await llm.aclose()
        if self._owns_ledger and self.ledger is not None:
            await anyio.to_thread.run_sync(self.ledger.close)
            self.ledger, self._owns_ledger = None, False

    def _provider(self, agent: AgentConfig) -> BaseLlm:
        llm = self._providers.get(agent.name)
        if llm is None:
            from llm_abstractions.factory import LlmFactory

            llm = LlmFactory.get_provider(
                agent.agent_type, model=agent.model, api_key=agent.resolved_api_key()
            )
            self._providers[agent.name] = llm
        return llm

    async def _run_task(
        self, task: AgentTask, agent: AgentConfig, upstream: dict[str, str]
    ) -> list[TaskResult]:
        """Every attempt at ``task``, in order; the last one is the task's outcome."""
        from orchestration.attempts import can_fall_back, llm_attempt, script_attempt

        try:
            request = build_request(task, agent, upstream)
        except ConfigurationError as exc:  # bad settings: nothing to try
            return [_failed_before_trying(task, agent, exc, "")]
        if agent.interface is not AgentInterface.API:
            return [await script_attempt(task, agent, request)]
        first = await llm_attempt(task, agent, request, lambda: self._provider(agent))
        if first.succeeded or not can_fall_back(agent, first):
            return [first]
        return [first, await script_attempt(task, agent, request)]


class _Scheduler:
    """One DAG run: starts tasks as their dependencies succeed, skips what cannot run."""

    def __init__(
        self,
        executor: TaskExecutor,
        graph: nx.DiGraph[str],
        tasks: dict[str, AgentTask],
        default_agent: str | None,
        run: RunResult,
    ) -> None:
        self.executor = executor
        self.graph = graph
        self.tasks = tasks
        self.default_agent = default_agent
        self.run_result = run
        self.waiting_on = {tid: graph.in_degree(tid) for tid in tasks}
        self.limiter = anyio.CapacityLimiter(executor.max_concurrency)
        self.agent_limiters: dict[str, anyio.CapacityLimiter] = {}
        self.tg: anyio.abc.TaskGroup | None = None
        self.recorder: Recorder | None = None
        self.on_task_done: Callable[[TaskResult], None] | None = None

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            self.tg = tg
            for tid, count in self.waiting_on.items():
                if count == 0:
                    tg.start_soon(self._run_one, tid, name=f"task {tid}")

    def _agent(self, task: AgentTask) -> AgentConfig:
        name = task.agent or self.default_agent
        assert name is not None  # noqa: S101 - validate_tasks guarantees it
        return self.executor.registry.get(name)

    def _agent_limiter(self, agent: AgentConfig) -> anyio.CapacityLimiter:
        limiter = self.agent_limiters.get(agent.name)
        if limiter is None:
            limiter = anyio.CapacityLimiter(agent.max_concurrency or self.executor.max_concurrency)
            self.agent_limiters[agent.name] = limiter
        return limiter

    async def _run_one(self, tid: str) -> None:
        task = self.tasks[tid]
        agent = self._agent(task)
        results = self.run_result.results
        upstream = {dep: results[dep].output or "" for dep in task.depends_on}
        run_id = self.run_result.run_id
        try:
            # The agent's own cap first: its queued tasks must not sit on global slots
            # that other agents could use.
            async with self._agent_limiter(agent), self.limiter:
                results[tid] = TaskResult(task_id=tid, status=TaskStatus.RUNNING)
                if self.recorder is not None:
                    self.recorder.task_started(run_id, task, agent)
                tries = await self._attempts(task, agent, upstream)
        except anyio.get_cancelled_exc_class():
            cancelled = TaskResult(task_id=tid, status=TaskStatus.CANCELLED, error="cancelled")
            results[tid] = cancelled
            if self.recorder is not None:
                self.recorder.task_ended_without_running(run_id, tid, agent.name, cancelled)
            self._done(cancelled)
            raise
        if self.recorder is not None:
            # Committed before any dependent starts: a resumed run never pays for it again.
            # Shielded: a call that was paid for is recorded even if the run is cancelled now.
            with anyio.CancelScope(shield=True):
                tries = await self.recorder.task_finished(run_id, task, agent, tries)
        for number, attempt in enumerate(tries, start=1):
            _log_attempt(run_id, task, agent, number, attempt)
        result = tries[-1].model_copy(update={"attempts": len(tries)})
        results[tid] = result
        self._done(result)
        self._release_dependents(tid, result)

    async def _attempts(
        self, task: AgentTask, agent: AgentConfig, upstream: dict[str, str]
    ) -> list[TaskResult]:
        """The task's attempts; a bug or an unmapped error fails this task, not the run."""
        try:
            return await self.executor._run_task(task, agent, upstream)
        except Exception as exc:  # cancellation is a BaseException and passes through
            return [_failed_before_trying(task, agent, exc, "unexpected ")]

    def _done(self, result: TaskResult) -> None:
        if self.on_task_done is None:
            return
        try:
            self.on_task_done(result)
        except Exception:  # a progress display must not break the run
            structlog.get_logger("orchestra").exception("on_task_done failed", task=result.task_id)

    def _release_dependents(self, tid: str, result: TaskResult) -> None:
        results = self.run_result.results
        if not result.succeeded:
            import networkx as nx

            for descendant in nx.descendants(self.graph, tid):
                if descendant not in results:
                    skipped = TaskResult(
                        task_id=descendant,
                        status=TaskStatus.SKIPPED,
                        error=f"not run: task {tid!r} {result.status.value}",
                    )
                    results[descendant] = skipped
                    self._done(skipped)
                    if self.recorder is not None:
                        agent = self._agent(self.tasks[descendant]).name
                        self.recorder.task_ended_without_running(
                            self.run_result.run_id, descendant, agent, skipped
                        )
            return
        for child in self.graph.successors(tid):
            self.waiting_on[child] -= 1
            if self.waiting_on[child] == 0 and child not in results:
                assert self.tg is not None  # noqa: S101 - set before any task runs
                self.tg.start_soon(self._run_one, child, name=f"task {child}")


def _log_attempt(
    run_id: str, task: AgentTask, agent: AgentConfig, number: int, attempt: TaskResult
) -> None:
    """One structured event per attempt; errors are already redacted, keys never passed."""
    import structlog

    meta = attempt.metadata
    structlog.get_logger("orchestra").info(
        "attempt",
        run=run_id,
        task=task.task_id,
        agent=agent.name,
        attempt=number,
        method=meta.get("execution_method"),
        provider=meta.get("provider"),
        model=meta.get("model"),
        status=attempt.status.value,
        error_type=meta.get("error_type"),
        error=attempt.error,
        input_tokens=attempt.usage.input_tokens,
        output_tokens=attempt.usage.output_tokens,
        cost_usd=attempt.cost_usd,
        latency_s=attempt.latency_s,
    )


def _failed_before_trying(
    task: AgentTask, agent: AgentConfig, exc: Exception, prefix: str
) -> TaskResult:
    """A failed attempt for an error raised outside any execution method."""
    return TaskResult(
        task_id=task.task_id,
        status=TaskStatus.FAILED,
        error=redact(f"{prefix}{type(exc).__name__}: {exc}", agent_secrets(agent)),
        attempts=1,
        metadata={
            "execution_method": "llm_factory",
            "provider": agent.agent_type,
            "model": agent.model,
            "error_type": type(exc).__name__,
        },
    )


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    error = group.exceptions[0]
    return _first(error) if isinstance(error, BaseExceptionGroup) else error


def _run_status(run: RunResult, task_count: int) -> RunStatus:
    statuses = [r.status for r in run.results.values()]
    if TaskStatus.CANCELLED in statuses or len(statuses) < task_count:
        return RunStatus.CANCELLED
    if all(s is TaskStatus.SUCCEEDED for s in statuses):
        return RunStatus.SUCCEEDED
    return RunStatus.FAILED
