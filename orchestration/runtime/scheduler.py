"""The DAG scheduler: one run's tasks started as their dependencies succeed.

Scheduling is event-driven, not level by level: when a task ends, each dependent whose last
dependency just succeeded starts at once, and the dependents of a task that did not succeed
are marked ``skipped`` without running. Concurrency is capped globally and per agent
(``AgentConfig.max_concurrency``). Each task goes through its agent's fallback chain
(``runtime.chain.TaskRunner``); every attempt is numbered, logged and recorded as it ends,
and a task's result is committed before its dependents start.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from orchestration.ledger.accounting import agent_secrets, redact
from orchestration.logs import get_logger
from orchestration.model.agent_registry import AgentConfig, AgentRegistry
from orchestration.model.tasks import AgentTask, TaskProgress, TaskResult, TaskStatus
from orchestration.model.tools import ToolCallRecord
from orchestration.runtime.chain import TaskRunner
from orchestration.runtime.resilience import Budget
from orchestration.runtime.results import RunResult
from orchestration.runtime.telemetry import task_span
from orchestration.runtime.tool_loop import Replays

if TYPE_CHECKING:
    from llm_abstractions.types import LlmRequest
    from orchestration.ledger.cache import ResponseCache
    from orchestration.ledger.recording import Recorder
    from orchestration.ledger.store import Commit
    from orchestration.model.graph import TaskGraph

__all__ = ["Plan", "Scheduler"]


class _IdleWorker:
    """A worker waiting for its next task (None: the run is over).

    On asyncio it waits on a bare future: an ``anyio.Event`` costs a few microseconds
    more a wait (an ``asyncio.Event`` made, waited on and woken, for every task a worker
    waits for). A cancellation reaches the waiter all the same (it cancels its task).
    """

    __slots__ = ("_event", "_future", "task")

    def __init__(self) -> None:
        self.task: str | None = None
        self._event: anyio.Event | None = None
        self._future: asyncio.Future[None] | None = None
        try:
            self._future = asyncio.get_running_loop().create_future()
        except RuntimeError:  # another event loop (trio)
            self._event = anyio.Event()

    def start(self, tid: str | None) -> None:
        self.task = tid
        if self._future is not None:
            if not self._future.done():  # not cancelled
                self._future.set_result(None)
        elif self._event is not None:
            self._event.set()

    async def next_task(self) -> str | None:
        if self._future is not None:
            await self._future
        elif self._event is not None:
            await self._event.wait()
        return self.task


class Scheduler:
    """One DAG run: starts tasks as their dependencies succeed, skips what cannot run.

    Tasks run on reusable workers (coroutines of one task group), not a coroutine each:
    spawning an anyio task costs about 50 us, more than the rest of the scheduling. A task
    needs a slot, globally and for its agent; ready tasks wait in one queue per agent and a
    free slot goes to the one that became ready first among agents with room. A finished
    task gives its slot back before its result is committed (only its dependents wait for
    the commit), so a worker may outlive its slot: idle workers wait for a task, and a new
    worker is spawned only when a slot is free and none is idle.
    """

    def __init__(
        self,
        plan: Plan,
        run: RunResult,
        runner: TaskRunner,
        registry: AgentRegistry,
        max_concurrency: int,
    ) -> None:
        self.runner = runner
        self.graph = graph = plan.graph
        self.tasks = tasks = {t.task_id: t for t in plan.tasks}
        self.run_result = run
        self.kept = plan.kept
        self.attempts_before = plan.attempts_before
        self.replays = plan.replays
        self.budget = Budget(plan.budget_usd) if plan.budget_usd is not None else None
        self.cache: ResponseCache | None = None
        self.agents = {
            tid: registry.get(task.agent or plan.default_agent or "") for tid, task in tasks.items()
        }
        self.waiting_on = graph.waiting_on()
        self.free = max_concurrency
        self.agent_free = {
            a.name: a.max_concurrency for a in self.agents.values() if a.max_concurrency
        }
        self.ready: dict[str, deque[tuple[int, str]]] = {}
        self.order = itertools.count()
        self.unfinished = 0  # claimed tasks whose dependents are not released yet
        self.idle: list[_IdleWorker] = []
        # Group commits not stored yet, and the results each will publish.
        self.committing: dict[Commit, list[tuple[str, TaskResult]]] = {}
        self.failed_commit: Exception | None = None  # one that failed as the run ended
        self.made: dict[str, int] = {}  # attempts numbered so far, by task
        self.started_order: dict[str, int] = {}  # the place each task took in the queue
        self.resuming: dict[str, anyio.Event] = {}  # tasks waiting to get their slot back
        # Bound once: binding at every event cost more than the rest of the logging.
        self.log = get_logger().bind(run=run.run_id)
        self.logging_attempts = _enabled(self.log, logging.INFO)
        self.tg: anyio.abc.TaskGroup | None = None
        self.recorder: Recorder | None = None
        self.on_task_done: Callable[[TaskResult], None] | None = None
        self.on_progress: Callable[[TaskProgress], None] | None = None

    async def run(self) -> None:
        """Run the plan's tasks to the end (or until cancelled)."""
        try:
            async with anyio.create_task_group() as tg:
                self.tg = tg
                self._start_from_kept()
                for tid, count in self.waiting_on.items():
                    if count == 0 and tid not in self.run_result.results:
                        self._queue(tid)
                self._dispatch()
        finally:
            self.tg = None
            try:
                await self._settle()
            finally:
                # Ready tasks that never got a slot end as cancelled: the run was cancelled,
                # or a task ended its worker with a stray cancellation not the run's own.
                self._cancel_queued()

    def _start_from_kept(self) -> None:
        """A resumed run's standing results: what succeeded feeds, what failed holds back."""
        for tid, result in self.kept.items():
            if result.succeeded:
                for child in self.graph.dependents[tid]:
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
        if self.recorder is not None:
            self.recorder.task_started(run_id, tid, agent.name)
        with task_span(task, agent) as ended:
            try:
                tries = await self.runner.run(
                    task,
                    agent,
                    upstream,
                    budget=self.budget,
                    cache=self.cache,
                    on_attempt=functools.partial(self._attempt_made, task, agent),
                    waiting=functools.partial(self._slot_given_back, tid),
                    on_progress=None if self.on_progress is None else self._progress,
                    on_tool_call=functools.partial(self._tool_called, task, agent),
                    replays=self.replays.get(tid),
                )
            except anyio.get_cancelled_exc_class():
                self._end_without_running(tid, TaskStatus.CANCELLED, "cancelled")
                raise
            except Exception as exc:  # a bug or an unmapped error fails this task, not the run
                failed = _failed_before_trying(task, agent, exc, "unexpected ")
                self._attempt_made(task, agent, failed, None)
                tries = [failed]
            self._take(tid, +1)  # the provider is done: the slot may serve another task now
            result = ended(self._final(tid, tries))
        if self.recorder is None:
            self._finish(tid, result)
            return
        # Committed before any dependent starts: a resumed run never pays for it again. The
        # tasks of one group commit are finished together, by its callback. The only task
        # in flight commits at once (a chain's step): nothing else would join its commit.
        alone = self.unfinished == 1
        commit = self.recorder.task_finished(run_id, task, agent, result, alone)
        if commit.done():  # committed on the spot: this worker takes what it freed
            commit.result()  # a failed commit fails the run
            self._finish(tid, result)
            return
        finishing = self.committing.get(commit)
        if finishing is not None:
            finishing.append((tid, result))
        else:
            self.committing[commit] = [(tid, result)]
            commit.add_done_callback(self._committed)

    def _final(self, tid: str, tries: list[TaskResult]) -> TaskResult:
        """A task's result: its last attempt's, with every attempt's count and cost."""
        result = tries[-1]
        made = self.made.get(tid, self.attempts_before.get(tid, 0))
        changes: dict[str, Any] = {}
        if result.attempts != made:  # counted as the ledger counts them
            changes["attempts"] = made
        earlier = sum(t.cost_usd or 0.0 for t in tries[:-1])  # answers refused, paid for
        if earlier and (result.cost_usd is not None or not result.succeeded):
            changes["cost_usd"] = (result.cost_usd or 0.0) + earlier
        return result.model_copy(update=changes) if changes else result

    def _committed(self, commit: Commit) -> None:
        """Publish the results of a group commit, on the loop, as soon as it is stored.

        A callback, not a coroutine per commit (spawning one cost 30-50 us, as much as the
        rest of a task's scheduling). A failed commit fails the run; its results are not
        published (they were not stored). After the run's task group has ended (cancelled),
        results are still published (``run`` waits for them) but nothing new starts.
        """
        finishing = self.committing.pop(commit)
        try:
            commit.result()
            for tid, result in finishing:
                self._finish(tid, result)
            if self.tg is not None and not self.tg.cancel_scope.cancel_called:
                self._dispatch()
                self._over()
        except Exception as exc:  # a write that failed, or a bug of ours: the run fails
            if self.tg is None or self.tg.cancel_scope.cancel_called:  # raised by _settle
                self.failed_commit = self.failed_commit or exc
            else:
                self.tg.start_soon(_raise, exc, name="orchestra commit failed")

    async def _settle(self) -> None:
        """Wait for the commits still pending when the task group ended (cancelled).

        A call that was paid for is recorded, and its result published, even then.
        """
        with anyio.CancelScope(shield=True):
            while self.committing:
                await next(iter(self.committing)).settled()
        if self.failed_commit is not None:
            raise self.failed_commit

    def _finish(self, tid: str, result: TaskResult) -> None:
        """Publish a task's result (recorded by now) and release its dependents."""
        self.run_result.results[tid] = result
        self.unfinished -= 1
        self._done(result)
        self._release_dependents(tid, result)

    def _attempt_made(
        self,
        task: AgentTask,
        agent: AgentConfig,
        attempt: TaskResult,
        request: LlmRequest | None,
    ) -> None:
        """Number, log and record an attempt as soon as it ends.

        Recorded then, not with the task's result: a run cancelled (or killed) between two
        attempts keeps the ones it made, paid or not.
        """
        tid = task.task_id
        number = self.made[tid] = self.made.get(tid, self.attempts_before.get(tid, 0)) + 1
        attempt.metadata["attempt"] = number
        if self.logging_attempts:
            _log_attempt(self.log, task, agent, number, attempt)
        if self.recorder is not None:
            run_id = self.run_result.run_id
            self.recorder.attempt_made(run_id, tid, agent, number, attempt, request)

    def _tool_called(self, task: AgentTask, agent: AgentConfig, call: ToolCallRecord) -> None:
        """Record a tool call as it ends, with the number its attempt will get.

        A task's attempts are made one after the other, so the attempt in progress is the
        one after those already numbered.
        """
        if self.recorder is None:
            return
        tid = task.task_id
        number = self.made.get(tid, self.attempts_before.get(tid, 0)) + 1
        self.recorder.tool_called(self.run_result.run_id, tid, agent, number, call)

    def _progress(self, progress: TaskProgress) -> None:
        assert self.on_progress is not None  # noqa: S101 - passed only when set
        try:
            self.on_progress(progress)
        except Exception:  # a progress display must not break the run
            self.log.exception("on_progress failed", task=progress.task_id)

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
            reason = f"not run: task {tid!r} {result.status.value}"
            for descendant in self.graph.descendants(tid):
                if descendant not in results:
                    self._end_without_running(descendant, TaskStatus.SKIPPED, reason)
            return
        waiting_on = self.waiting_on
        for child in self.graph.dependents[tid]:
            waiting_on[child] -= 1
            if waiting_on[child] == 0 and child not in results:
                self._queue(child)


@dataclass(frozen=True)
class Plan:
    """What a run (or the rest of a resumed one) executes."""

    graph: TaskGraph
    tasks: Sequence[AgentTask]
    default_agent: str | None
    budget_usd: float | None
    kept: Mapping[str, TaskResult] = field(default_factory=dict)  # results that stand
    attempts_before: Mapping[str, int] = field(default_factory=dict)  # recorded attempts
    # Tool results recorded by earlier runs of the tasks, by task (what a resume replays).
    replays: Mapping[str, Replays] = field(default_factory=dict)


def _enabled(log: Any, level: int) -> bool:
    """Whether ``log`` would emit an event at ``level`` (if it cannot say: yes).

    An attempt's event has sixteen fields: building them for a logger that drops them cost
    more than the rest of recording the attempt without a ledger. Looked up on the logger's
    type: structlog's generic ``BoundLogger`` answers any attribute with a logging method.
    """
    try:
        check = getattr(type(log), "is_enabled_for", None)  # structlog's filtering loggers
        if check is not None:
            return bool(check(log, level))
        inner = getattr(log, "_logger", None)  # a structlog logger around a standard one
        if isinstance(inner, logging.Logger):
            return inner.isEnabledFor(level)
    except Exception:  # noqa: BLE001 - a logger of the application's that cannot say
        return True
    return True


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
        validation=meta.get("validation"),
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


async def _raise(error: Exception) -> None:
    """Raise ``error`` in the run's task group (from a callback, which cannot)."""
    raise error
