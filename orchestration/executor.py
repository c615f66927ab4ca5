"""Running tasks: one at a time (``execute``) or as a DAG (``run``).

Scheduling is event-driven, not level by level: when a task ends, each dependent whose last
dependency just succeeded starts at once, and the dependents of a task that did not succeed
are marked ``skipped`` without running. Concurrency is capped globally and per agent
(``AgentConfig.max_concurrency``). A dependency's output reaches the dependent task in its
prompt (see ``prompts.build_request``).

Every run, task and attempt is recorded in the run ledger (``orchestration.ledger``) unless
``record=False``; a task's result is committed before its dependents start, which is what
lets ``resume`` finish a run whose process died without paying twice for any task.

Each task goes through its agent's fallback chain (``orchestration.chain``): retries with
backoff, rate limits and circuit breakers per provider, the response cache, the agents or
models of ``fallbacks``, and last the bundled stdlib-only script (``scripts/llm_call.py``)
when the provider cannot serve. Agents whose interface is ``script`` or ``cli`` run their
own script. A run may have a budget; tasks it cannot afford end ``budget_exceeded``.
"""

from __future__ import annotations

import bisect
import itertools
import re
import sys
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.lowlevel
from pydantic import BaseModel, Field

from llm_abstractions.base import BaseLlm
from llm_abstractions.errors import ConfigurationError
from orchestration.accounting import agent_secrets, redact
from orchestration.agent_registry import AgentConfig, AgentRegistry
from orchestration.chain import TaskRunner
from orchestration.errors import LedgerError
from orchestration.graph import validate_tasks
from orchestration.logs import get_logger
from orchestration.resilience import (
    BreakerPolicy,
    Budget,
    CircuitBreaker,
    Clock,
    RateLimit,
    RetryPolicy,
    SystemClock,
)
from orchestration.tasks import AgentTask, TaskResult, TaskStatus

if TYPE_CHECKING:
    import networkx as nx

    from orchestration.cache import ResponseCache
    from orchestration.ledger import Commit, Ledger
    from orchestration.recording import Recorder

__all__ = ["RunResult", "RunStatus", "TaskExecutor"]

_RUN_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")


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
        retry: When failed attempts are tried again (``RetryPolicy()`` when None; pass
            ``RetryPolicy.never()`` for none).
        rate_limits: Requests and tokens per minute, by provider name.
        breaker: When a provider's circuit opens (``BreakerPolicy()`` when None); pass
            ``breakers=False`` to turn breakers off.
        breakers: Whether providers get circuit breakers at all.
        cache: Reuse answers to identical requests, kept in the ledger (agents may say
            otherwise with their own ``cache`` setting). Needs the ledger.
        clock: Where waits are timed (tests inject one to skip real sleeping).
    """

    def __init__(
        self,
        registry: AgentRegistry,
        *,
        max_concurrency: int = 16,
        default_agent: str | None = None,
        ledger: Ledger | None = None,
        record: bool = True,
        retry: RetryPolicy | None = None,
        rate_limits: Mapping[str, RateLimit] | None = None,
        breaker: BreakerPolicy | None = None,
        breakers: bool = True,
        cache: bool = False,
        clock: Clock | None = None,
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
        self._providers: dict[tuple[str, str, str | None], tuple[AgentConfig, BaseLlm]] = {}
        self._retired: list[BaseLlm] = []  # providers of agents replaced since
        self.runner = TaskRunner(
            registry,
            self._provider,
            retry=retry or RetryPolicy(),
            clock=clock or SystemClock(),
            rate_limits=dict(rate_limits or {}),
            breaker=(breaker or BreakerPolicy()) if breakers else None,
            cache=cache,
        )
        self._recording: list[Recorder] = []  # the recorders of the runs in progress
        self.runner.on_breaker_change = self._breaker_changed

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
        run_id: str | None = None,
        budget_usd: float | None = None,
    ) -> RunResult:
        """Run a DAG of tasks; validation errors are raised before anything runs.

        Args:
            tasks: The tasks; dependencies name other tasks of the list.
            name: A label for the run, shown by ``orchestra runs``.
            default_agent: Agent for tasks that name none.
            on_task_done: Called with each task's final result (including skipped ones),
                on the event loop, as soon as it is known, before its dependents start.
            run_id: The new run's id (letters, digits, ``-`` and ``_``), for callers that
                need it before the run starts; a random one when None.
            budget_usd: The most the run may spend; a task whose estimated cost would go
                over (with what was spent and what tasks in flight may spend) is not run
                and ends ``budget_exceeded``.

        Raises:
            GraphValidationError: The graph is not runnable (every problem listed).
            ConfigurationError: ``run_id`` is not a valid id, the budget is negative, or an
                agent's fallback names nothing known.
        """
        default = default_agent or self.default_agent
        if run_id is not None and not _RUN_ID.fullmatch(run_id):
            raise ConfigurationError(f"run_id {run_id!r} must be 1-64 letters, digits, '-' or '_'.")
        graph = self._validate(tasks, default, budget_usd)
        if default is not None:  # recorded with their agent, so that a resume needs no default
            tasks = [t if t.agent else t.model_copy(update={"agent": default}) for t in tasks]
        recorder = await self._recorder()
        if run_id is not None and recorder is not None:
            await self._check_new(run_id)
        run = RunResult(run_id=run_id or uuid.uuid4().hex, name=name)
        if recorder is not None:
            with anyio.CancelScope(shield=True):  # a recorded start is always finished
                await recorder.start_run(
                    run.run_id,
                    name,
                    tasks,
                    run.started_at,
                    self._agents_of(tasks, default),
                    budget_usd,
                )
        return await self._execute(
            _Plan(graph, tasks, default, budget_usd), run, recorder, on_task_done
        )

    async def resume(
        self,
        run_id: str,
        *,
        retry_failed: bool = False,
        on_task_done: Callable[[TaskResult], None] | None = None,
        budget_usd: float | None = None,
        force: bool = False,
    ) -> RunResult:
        """Finish a recorded run: what succeeded is kept, everything else runs.

        Tasks that succeeded are not run again; their recorded outputs feed their
        dependents. Tasks a dead process left ``running`` get a ``crashed`` attempt and run
        again, as do skipped, cancelled, pending and ``budget_exceeded`` ones; failed tasks
        only with ``retry_failed``. The tasks are the recorded definitions; the agents are
        this executor's registry. A run that succeeded is returned as it is.

        Args:
            run_id: The run, as ``orchestra runs`` shows it.
            retry_failed: Run failed tasks (and what they held back) again.
            on_task_done: As for ``run``; called for the tasks that run now.
            budget_usd: The most what runs now may spend; when None, what is left of the
                run's own budget (if it had one).
            force: Resume a run recorded as running on another machine (whose process
                cannot be checked from here).

        Raises:
            ConfigurationError: No such run, its process is still alive (or on another
                machine, without ``force``), another process resumed it first, or an agent
                it needs is not in the registry.
            LedgerError: The executor records nothing (``record=False``).
        """
        from orchestration.resume import claim_run, load_run

        recorder = await self._recorder()
        if recorder is None or self.ledger is None:
            raise LedgerError("resume needs the run ledger: build the executor with record=True.")
        saved = await anyio.to_thread.run_sync(load_run, self.ledger, run_id)
        if saved.status == RunStatus.SUCCEEDED:
            self.last_run = saved.as_result()
            return self.last_run
        saved.refuse_if_alive(force)
        if budget_usd is None and saved.budget_usd is not None:
            budget_usd = max(0.0, saved.budget_usd - saved.spent)
        graph = self._validate(saved.tasks, None, budget_usd)
        if not await anyio.to_thread.run_sync(claim_run, self.ledger, saved):
            raise ConfigurationError(
                f"Run {run_id!r} was just resumed by another process; leave it to that one."
            )
        run = RunResult(run_id=run_id, name=saved.name)
        kept = saved.kept(retry_failed)
        run.results.update(kept)
        crashed = saved.crashed()  # counts the attempts they were making
        with anyio.CancelScope(shield=True):
            await recorder.resume_run(run_id, crashed, run.started_at)
        plan = _Plan(graph, saved.tasks, None, budget_usd, kept, saved.attempts)
        return await self._execute(plan, run, recorder, on_task_done)

    def _breaker_changed(self, breaker: CircuitBreaker) -> None:
        if self._recording:  # recorded by a run in progress (any: the state is shared)
            self._recording[-1].breaker_changed(breaker)

    def _validate(
        self, tasks: Sequence[AgentTask], default: str | None, budget_usd: float | None
    ) -> nx.DiGraph[str]:
        if budget_usd is not None and not budget_usd >= 0:
            raise ConfigurationError(f"budget_usd must be 0 or more, not {budget_usd!r}.")
        graph = validate_tasks(tasks, self.registry, default)
        for agent in self._agents_of(tasks, default):
            self.runner.chain(agent)  # a fallback that names nothing fails here, not later
        return graph

    def _agents_of(self, tasks: Sequence[AgentTask], default: str | None) -> list[AgentConfig]:
        """The agents the tasks name, and the agents of their fallbacks."""
        names = dict.fromkeys(t.agent or default or "" for t in tasks)
        found: dict[str, AgentConfig] = {}
        while names:
            name = next(iter(names))
            del names[name]
            if name in found or name not in self.registry:
                continue
            agent = found[name] = self.registry.get(name)
            names.update(dict.fromkeys(f for f in agent.fallbacks if f in self.registry))
        return list(found.values())

    async def _execute(
        self,
        plan: _Plan,
        run: RunResult,
        recorder: Recorder | None,
        on_task_done: Callable[[TaskResult], None] | None,
    ) -> RunResult:
        self.last_run = run
        scheduler = _Scheduler(self, plan, run)
        scheduler.recorder = recorder
        scheduler.on_task_done = on_task_done
        if recorder is not None and self.ledger is not None:
            from orchestration.cache import ResponseCache

            scheduler.cache = ResponseCache(self.ledger)
            self._recording.append(recorder)
        try:
            await scheduler.run()
        except ExceptionGroup as group:
            # A ledger that cannot be written stops the run; say so plainly.
            ledger_errors = group.subgroup(lambda e: isinstance(e, LedgerError))
            if ledger_errors is None:
                raise
            run.status = RunStatus.FAILED
            raise _first(ledger_errors) from None
        finally:
            if recorder in self._recording:
                self._recording.remove(recorder)
            run.finished_at = datetime.now(UTC)
            if run.status is RunStatus.RUNNING:
                run.status = _run_status(run, len(plan.tasks))
            if recorder is not None:
                await _record_end(recorder, run)
        return run

    async def _check_new(self, run_id: str) -> None:
        assert self.ledger is not None  # noqa: S101 - a recorder implies a ledger
        if await anyio.to_thread.run_sync(self.ledger.has_run, run_id):
            raise ConfigurationError(
                f"A run with id {run_id!r} is already in the ledger; pass a new run_id."
            )

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

    async def __aenter__(self) -> TaskExecutor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every provider this executor built (their HTTP clients), and its own ledger."""
        providers = [llm for _, llm in self._providers.values()] + self._retired
        self._providers, self._retired = {}, []
        for llm in providers:
            await llm.aclose()
        if self._owns_ledger and self.ledger is not None:
            await anyio.to_thread.run_sync(self.ledger.close)
            self.ledger, self._owns_ledger = None, False

    def _provider(self, agent: AgentConfig) -> BaseLlm:
        """The agent's provider, built once (a fallback ``provider:model`` is its own).

        An agent replaced with another key gets a new provider; the old one is closed with
        the executor.
        """
        key = (agent.name, agent.agent_type, agent.model)
        built = self._providers.get(key)
        if built is not None:
            if (built[0].api_key, built[0].api_key_env) == (agent.api_key, agent.api_key_env):
                return built[1]
            self._retired.append(built[1])
        from llm_abstractions.factory import LlmFactory

        llm = LlmFactory.get_provider(
            agent.agent_type, model=agent.model, api_key=agent.resolved_api_key()
        )
        self._providers[key] = (agent, llm)
        return llm


class _IdleWorker:
    """A worker waiting for its next task (None: the run is over)."""

    __slots__ = ("_event", "task")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self.task: str | None = None

    def start(self, tid: str | None) -> None:
        self.task = tid
        self._event.set()

    async def next_task(self) -> str | None:
        await self._event.wait()
        return self.task


class _Scheduler:
    """One DAG run: starts tasks as their dependencies succeed, skips what cannot run.

    Tasks run on reusable workers (coroutines of one task group), not a coroutine each:
    spawning an anyio task costs about 50 us, more than the rest of the scheduling. A task
    needs a slot, globally and for its agent; ready tasks wait in one queue per agent and a
    free slot goes to the one that became ready first among agents with room. A finished
    task gives its slot back before its result is committed (only its dependents wait for
    the commit), so a worker may outlive its slot: idle workers wait for a task, and a new
    worker is spawned only when a slot is free and none is idle.
    """

    def __init__(self, executor: TaskExecutor, plan: _Plan, run: RunResult) -> None:
        self.executor = executor
        self.graph = graph = plan.graph
        self.tasks = tasks = {t.task_id: t for t in plan.tasks}
        self.run_result = run
        self.kept = plan.kept
        self.attempts_before = plan.attempts_before
        self.budget = Budget(plan.budget_usd) if plan.budget_usd is not None else None
        self.cache: ResponseCache | None = None
        registry = executor.registry
        self.agents = {
            tid: registry.get(task.agent or plan.default_agent or "") for tid, task in tasks.items()
        }
        self.waiting_on = {tid: graph.in_degree(tid) for tid in tasks}
        self.free = executor.max_concurrency
        self.agent_free = {
            a.name: a.max_concurrency for a in self.agents.values() if a.max_concurrency
        }
        self.ready: dict[str, deque[tuple[int, str]]] = {}
        self.order = itertools.count()
        self.unfinished = 0  # claimed tasks whose dependents are not released yet
        self.idle: list[_IdleWorker] = []
        self.committing: dict[Commit, list[tuple[str, TaskResult]]] = {}
        self.made: dict[str, int] = {}  # attempts numbered so far, by task
        self.started_order: dict[str, int] = {}  # the place each task took in the queue
        self.resuming: dict[str, anyio.Event] = {}  # tasks waiting to get their slot back
        # Bound once: binding at every event cost more than the rest of the logging.
        self.log = get_logger().bind(run=run.run_id)
        self.tg: anyio.abc.TaskGroup | None = None
        self.recorder: Recorder | None = None
        self.on_task_done: Callable[[TaskResult], None] | None = None

    async def run(self) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self.tg = tg
                self._start_from_kept()
                for tid, count in self.waiting_on.items():
                    if count == 0 and tid not in self.run_result.results:
                        self._queue(tid)
                self._dispatch()
        except anyio.get_cancelled_exc_class():
            self._cancel_queued()
            raise
        # A task can end its worker with a stray cancellation that is not the run's own:
        # what it left queued never ran.
        self._cancel_queued()

    def _start_from_kept(self) -> None:
        """A resumed run's standing results: what succeeded feeds, what failed holds back."""
        for tid, result in self.kept.items():
            if result.succeeded:
                for child in self.graph.successors(tid):
                    self.waiting_on[child] -= 1
        for tid, result in self.kept.items():
            if not result.succeeded:
                self._release_dependents(tid, result)

    def _queue(self, tid: str) -> None:
        agent = self.agents[tid].name
        order = self.started_order[tid] = next(self.order)
        self.ready.setdefault(agent, deque()).append((order, tid))

    def _claim(self) -> str | None:
        """Take the slots of the oldest ready task among agents with room, if any.

        A task that gave its slot back for a wait and wants it again is ready too: it gets
        the slot and is woken, and the search goes on for a task to start.
        """
        while self.free > 0:
            best: deque[tuple[int, str]] | None = None
            for agent, queue in self.ready.items():
                room = self.agent_free.get(agent, 1) > 0
                if queue and room and (best is None or queue[0] < best[0]):
                    best = queue
            if best is None:
                return None
            _, tid = best.popleft()
            self._take(tid, -1)
            resumed = self.resuming.pop(tid, None)
            if resumed is None:
                self.unfinished += 1
                return tid
            resumed.set()
        return None

    @asynccontextmanager
    async def _slot_given_back(self, tid: str) -> AsyncIterator[None]:
        """While a task waits (backoff, rate limit, budget), its slot serves other tasks.

        Afterwards it queues for a slot again, ahead of tasks that became ready after it
        started.
        """
        self._take(tid, +1)
        self._dispatch()
        yield  # cancelled here: the run is ending, so no slot is asked back, nothing started
        back = anyio.Event()
        self.resuming[tid] = back
        queue = self.ready.setdefault(self.agents[tid].name, deque())
        bisect.insort(queue, (self.started_order[tid], tid))
        self._dispatch()
        try:
            await back.wait()
        except anyio.get_cancelled_exc_class():
            if self.resuming.pop(tid, None) is not None:  # still queued: take it out
                queue.remove((self.started_order[tid], tid))
            raise

    def _take(self, tid: str, change: int) -> None:
        """Take (-1) or give back (+1) the slots ``tid`` occupies."""
        self.free += change
        agent = self.agents[tid].name
        if agent in self.agent_free:
            self.agent_free[agent] += change

    def _dispatch(self) -> None:
        """Hand every task that can start now to an idle worker, or to a new one."""
        while (tid := self._claim()) is not None:
            if self.idle:
                self.idle.pop().start(tid)
            else:
                assert self.tg is not None  # noqa: S101 - set before any task is queued
                self.tg.start_soon(self._worker, tid, name="orchestra worker")

    async def _worker(self, tid: str | None) -> None:
        while tid is not None:
            await self._run_one(tid)
            tid = self._claim()
            self._dispatch()  # what this task released beyond the one this worker took
            if tid is None:
                if self._over():
                    return
                waiting = _IdleWorker()
                self.idle.append(waiting)
                try:
                    tid = await waiting.next_task()
                except anyio.get_cancelled_exc_class():
                    if waiting.task is not None:  # handed a task it will never run
                        self._end_without_running(waiting.task, TaskStatus.CANCELLED, "cancelled")
                    raise

    def _over(self) -> bool:
        """Whether the run is over (nothing runs or awaits its commit, nothing is ready).

        If so, the idle workers are told to stop.
        """
        if self.unfinished:
            return False
        for worker in self.idle:
            worker.start(None)
        self.idle.clear()
        return True

    def _cancel_queued(self) -> None:
        """Ready tasks that never got a slot end as cancelled, like those in flight."""
        for queue in self.ready.values():
            for _, tid in queue:
                self._end_without_running(tid, TaskStatus.CANCELLED, "cancelled")
            queue.clear()

    async def _run_one(self, tid: str) -> None:
        task = self.tasks[tid]
        agent = self.agents[tid]
        results = self.run_result.results
        upstream = {dep: results[dep].output or "" for dep in task.depends_on}
        run_id = self.run_result.run_id
        try:
            if self.recorder is not None:
                self.recorder.task_started(run_id, tid, agent.name)
            tries = await self._attempts(task, agent, upstream)
        except anyio.get_cancelled_exc_class():
            self._end_without_running(tid, TaskStatus.CANCELLED, "cancelled")
            raise
        self._take(tid, +1)  # the provider is done: the slot may serve another task now
        result = tries[-1]
        made = self.made.get(tid, self.attempts_before.get(tid, 0))
        if result.attempts != made:  # counted as the ledger counts them
            result = result.model_copy(update={"attempts": made})
        if self.recorder is None:
            self._finish(tid, result)
            return
        # Committed before any dependent starts: a resumed run never pays for it again. The
        # tasks of one group commit are finished together, by one coroutine.
        commit = self.recorder.task_finished(run_id, task, agent, result)
        finishing = self.committing.get(commit)
        if finishing is None:
            finishing = self.committing[commit] = []
            assert self.tg is not None  # noqa: S101 - set before any task runs
            self.tg.start_soon(self._after_commit, commit, name="orchestra commit")
        finishing.append((tid, result))

    async def _after_commit(self, commit: Commit) -> None:
        # Shielded: a call that was paid for is recorded even if the run is cancelled now.
        with anyio.CancelScope(shield=True):
            await commit.wait()
        for tid, result in self.committing.pop(commit):
            self._finish(tid, result)
        await anyio.lowlevel.checkpoint_if_cancelled()  # cancelled: start nothing new
        self._dispatch()
        self._over()

    def _finish(self, tid: str, result: TaskResult) -> None:
        """Publish a task's result (recorded by now) and release its dependents."""
        self.run_result.results[tid] = result
        self.unfinished -= 1
        self._done(result)
        self._release_dependents(tid, result)

    def _attempt_made(self, task: AgentTask, agent: AgentConfig, attempt: TaskResult) -> None:
        """Number, log and record an attempt as soon as it ends.

        Recorded then, not with the task's result: a run cancelled (or killed) between two
        attempts keeps the ones it made, paid or not.
        """
        tid = task.task_id
        number = self.made[tid] = self.made.get(tid, self.attempts_before.get(tid, 0)) + 1
        attempt.metadata["attempt"] = number
        _log_attempt(self.log, task, agent, number, attempt)
        if self.recorder is not None:
            self.recorder.attempt_made(self.run_result.run_id, tid, agent, number, attempt)

    async def _attempts(
        self, task: AgentTask, agent: AgentConfig, upstream: dict[str, str]
    ) -> list[TaskResult]:
        """The task's attempts; a bug or an unmapped error fails this task, not the run."""

        def made(attempt: TaskResult) -> None:
            self._attempt_made(task, agent, attempt)

        try:
            return await self.executor.runner.run(
                task,
                agent,
                upstream,
                budget=self.budget,
                cache=self.cache,
                on_attempt=made,
                waiting=lambda: self._slot_given_back(task.task_id),
            )
        except Exception as exc:  # cancellation is a BaseException and passes through
            failed = _failed_before_trying(task, agent, exc, "unexpected ")
            made(failed)
            return [failed]

    def _done(self, result: TaskResult) -> None:
        if self.on_task_done is None:
            return
        try:
            self.on_task_done(result)
        except Exception:  # a progress display must not break the run
            self.log.exception("on_task_done failed", task=result.task_id)

    def _end_without_running(self, tid: str, status: TaskStatus, error: str) -> None:
        """Record a task that ends without a result of its own: skipped or cancelled."""
        made = self.made.get(tid, self.attempts_before.get(tid, 0))
        ended = TaskResult(task_id=tid, status=status, error=error, attempts=made)
        self.run_result.results[tid] = ended
        self._done(ended)
        if self.recorder is not None:
            self.recorder.task_ended_without_running(
                self.run_result.run_id, tid, self.agents[tid].name, ended
            )

    def _release_dependents(self, tid: str, result: TaskResult) -> None:
        results = self.run_result.results
        if not result.succeeded:
            import networkx as nx

            reason = f"not run: task {tid!r} {result.status.value}"
            for descendant in nx.descendants(self.graph, tid):
                if descendant not in results:
                    self._end_without_running(descendant, TaskStatus.SKIPPED, reason)
            return
        waiting_on = self.waiting_on
        for child in self.graph.successors(tid):
            waiting_on[child] -= 1
            if waiting_on[child] == 0 and child not in results:
                self._queue(child)


@dataclass(frozen=True)
class _Plan:
    """What a run (or the rest of a resumed one) executes."""

    graph: nx.DiGraph[str]
    tasks: Sequence[AgentTask]
    default_agent: str | None
    budget_usd: float | None
    kept: Mapping[str, TaskResult] = field(default_factory=dict)  # results that stand
    attempts_before: Mapping[str, int] = field(default_factory=dict)  # recorded attempts


def _log_attempt(
    log: Any, task: AgentTask, agent: AgentConfig, number: int, attempt: TaskResult
) -> None:
    """One structured event per attempt; errors are already redacted, keys never passed."""
    meta = attempt.metadata
    log.info(
        "attempt",
        task=task.task_id,
        agent=meta.get("agent", agent.name),
        attempt=number,
        method=meta.get("execution_method"),
        provider=meta.get("provider"),
        model=meta.get("model"),
        status=attempt.status.value,
        error_type=meta.get("error_type"),
        wait_s=meta.get("wait_s"),
        fallback_reason=meta.get("fallback_reason"),
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


async def _record_end(recorder: Recorder, run: RunResult) -> None:
    """Record how the run ended; a failure to do so is raised unless another error is."""
    try:
        await recorder.finish_run(run.run_id, run.status.value, run.finished_at or run.started_at)
    except LedgerError:
        if sys.exception() is None:
            raise
        get_logger().warning("could not record the end of the run")


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
