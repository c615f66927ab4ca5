"""Running tasks: one at a time (``execute``) or as a DAG (``run``), and resuming a run.

``TaskExecutor`` is the public face: it validates a graph before anything runs, opens the
ledger, records the run's start and end, builds each agent's provider once, and hands the
run to the scheduler (``runtime.scheduler``), which starts tasks as their dependencies
succeed. A dependency's output reaches the dependent task in its prompt (see
``prompts.build_request``).

Every run, task and attempt is recorded in the run ledger (``orchestration.ledger``) unless
``record=False``; a task's result is committed before its dependents start, which is what
lets ``resume`` finish a run whose process died without paying twice for any task.

Each task goes through its agent's fallback chain (``runtime.chain``): retries with
backoff, rate limits and circuit breakers per provider, the response cache, the agents or
models of ``fallbacks``, and last the bundled stdlib-only script (``scripts/llm_call.py``)
when the provider cannot serve. Agents whose interface is ``script`` or ``cli`` run their
own script. A run may have a budget; tasks it cannot afford end ``budget_exceeded``.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio

from llm_abstractions.base import BaseLlm
from llm_abstractions.errors import ConfigurationError
from orchestration.logs import get_logger
from orchestration.model.agent_registry import AgentConfig, AgentInterface, AgentRegistry
from orchestration.model.errors import LedgerError
from orchestration.model.graph import TaskGraph, checked_graph
from orchestration.model.tasks import AgentTask, TaskProgress, TaskResult
from orchestration.model.tools import mcp_servers
from orchestration.runtime.backend import Backend, backend_of
from orchestration.runtime.chain import TaskRunner
from orchestration.runtime.resilience import (
    BreakerPolicy,
    CircuitBreaker,
    Clock,
    RateLimit,
    RetryPolicy,
    SystemClock,
)
from orchestration.runtime.results import RunResult, RunStatus, run_status
from orchestration.runtime.scheduler import Plan, Scheduler
from orchestration.runtime.telemetry import run_span

if TYPE_CHECKING:
    from orchestration.ledger.recording import Recorder
    from orchestration.ledger.store import Ledger

__all__ = ["TaskExecutor"]

_RUN_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")


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
        tracer_provider: An OpenTelemetry ``TracerProvider`` to trace runs with; when
            None, the application's global one, if it set one (``runtime.telemetry``).
        backend: Where attempts' work runs: ``"local"`` (this process, the default),
            ``"ray"`` or a ``RayBackend(address=...)`` (a Ray cluster; the scheduling,
            policies and ledger stay here). See ``runtime.backend``.
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
        tracer_provider: Any | None = None,
        backend: str | Backend | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ConfigurationError("max_concurrency must be at least 1")
        self.backend = backend_of(backend)
        self.registry = registry
        self.max_concurrency = max_concurrency
        self.default_agent = default_agent
        self.last_run: RunResult | None = None
        self.ledger = ledger
        self.record = record
        self.tracer_provider = tracer_provider
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
            backend=self.backend,
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
        on_progress: Callable[[TaskProgress], None] | None = None,
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
            on_progress: Called on the event loop as an answer's text arrives, with the
                task, tokens so far and time taken (``TaskProgress``). Providers that can
                stream are then asked to; a callback that raises is logged and ignored.

        Raises:
            GraphValidationError: The graph is not runnable (every problem listed).
            ConfigurationError: ``run_id`` is not a valid id, the budget is negative, or an
                agent's fallback names nothing known.
        """
        default = default_agent or self.default_agent
        if run_id is not None and not _RUN_ID.fullmatch(run_id):
            raise ConfigurationError(f"run_id {run_id!r} must be 1-64 letters, digits, '-' or '_'.")
        graph = self._validate(tasks, default, budget_usd)
        await self.backend.start(self._agents_of(tasks, default))
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
            Plan(graph, tasks, default, budget_usd), run, recorder, on_task_done, on_progress
        )

    async def resume(
        self,
        run_id: str,
        *,
        retry_failed: bool = False,
        on_task_done: Callable[[TaskResult], None] | None = None,
        budget_usd: float | None = None,
        force: bool = False,
        tasks: Sequence[AgentTask] | None = None,
        on_progress: Callable[[TaskProgress], None] | None = None,
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
            tasks: The run's tasks as first given, for what the ledger cannot keep: their
                ``output_type`` and ``validators`` (matched by task id). Needed when a task
                that runs again had an output contract.
            on_progress: As for ``run``.

        Raises:
            ConfigurationError: No such run, its process is still alive (or on another
                machine, without ``force``), another process resumed it first, an agent
                it needs is not in the registry, or a task that runs again had an output
                contract and ``tasks`` does not give it back.
            LedgerError: The executor records nothing (``record=False``).
        """
        from orchestration.runtime.resume import claim_run, load_run

        recorder = await self._recorder()
        if recorder is None or self.ledger is None:
            raise LedgerError("resume needs the run ledger: build the executor with record=True.")
        saved = await anyio.to_thread.run_sync(load_run, self.ledger, run_id)
        if saved.status == RunStatus.SUCCEEDED:
            self.last_run = saved.as_result()
            return self.last_run
        saved.refuse_if_alive(force)
        if tasks is not None:
            saved.with_contracts(tasks)
        saved.refuse_missing_contracts(list(saved.kept(retry_failed)))
        saved.refuse_refused_tasks(list(saved.kept(retry_failed)))
        if budget_usd is None and saved.budget_usd is not None:
            budget_usd = max(0.0, saved.budget_usd - saved.spent)
        graph = self._validate(saved.tasks, None, budget_usd)
        await self.backend.start(self._agents_of(saved.tasks, None))
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
        plan = Plan(graph, saved.tasks, None, budget_usd, kept, saved.attempts, saved.replays(kept))
        return await self._execute(plan, run, recorder, on_task_done, on_progress)

    async def extend(
        self,
        run_id: str,
        tasks: Sequence[AgentTask],
        *,
        on_task_done: Callable[[TaskResult], None] | None = None,
        on_progress: Callable[[TaskProgress], None] | None = None,
        budget_usd: float | None = None,
    ) -> RunResult:
        """Add tasks to a finished run and run them: follow-up work its results called for.

        A repair after failing tests, a second opinion on a weak answer: work that is
        decided by what a run produced becomes tasks of the same run, in its ledger rows
        and its report's graph. Their dependencies may name the run's tasks, whose recorded
        outputs they receive; nothing recorded runs again. The run ends with a status over
        all its tasks, old and new.

        Args:
            run_id: A run that is not running (``resume`` one that was cut short first).
            tasks: The new tasks; their ids must be new to the run.
            on_task_done: As for ``run``; called for the new tasks.
            on_progress: As for ``run``.
            budget_usd: The most the new tasks may spend; when None, what is left of the
                run's own budget (if it had one).

        Raises:
            GraphValidationError: The new tasks clash with the run's or do not form a DAG
                with them (every problem listed).
            ConfigurationError: No such run, it is still running or has tasks that never
                finished, another process claimed it first, or an agent it needs is not in
                the registry.
            LedgerError: The executor records nothing (``record=False``).
        """
        from orchestration.runtime.resume import claim_run, load_run

        recorder = await self._recorder()
        if recorder is None or self.ledger is None:
            raise LedgerError("extend needs the run ledger: build the executor with record=True.")
        saved = await anyio.to_thread.run_sync(load_run, self.ledger, run_id)
        saved.refuse_if_alive()
        unfinished = saved.unfinished()
        if unfinished:
            raise ConfigurationError(
                f"Run {run_id!r} has tasks that never finished ({', '.join(unfinished)}): "
                f"finish it first (orchestra resume {run_id}), then extend it."
            )
        if budget_usd is None and saved.budget_usd is not None:
            budget_usd = max(0.0, saved.budget_usd - saved.spent)
        every = [*saved.tasks, *tasks]
        graph = self._validate(every, None, budget_usd)
        new = {task.task_id for task in tasks}
        agents = [a for a in self._agents_of(tasks, None) if a.name not in saved.agent_names()]
        await self.backend.start(self._agents_of(tasks, None))
        if not await anyio.to_thread.run_sync(claim_run, self.ledger, saved):
            raise ConfigurationError(
                f"Run {run_id!r} was just claimed by another process; leave it to that one."
            )
        run = RunResult(run_id=run_id, name=saved.name)
        kept = saved.standing()
        run.results.update(kept)
        with anyio.CancelScope(shield=True):
            await recorder.extend_run(run_id, tasks, len(saved.tasks), agents)
        plan = Plan(graph, every, None, budget_usd, kept, saved.attempts)
        get_logger().info("run extended", run=run_id, tasks=sorted(new))
        return await self._execute(plan, run, recorder, on_task_done, on_progress)

    def _breaker_changed(self, breaker: CircuitBreaker) -> None:
        if self._recording:  # recorded by a run in progress (any: the state is shared)
            opened = breaker.opened_at  # on the breaker's clock; the ledger keeps wall time
            self._recording[-1].breaker_changed(
                breaker.provider,
                breaker.state.value,
                breaker.consecutive,
                None if opened is None else time.time() - (breaker.clock.now() - opened),
            )

    async def _share_circuits(self, ledger: Ledger) -> None:
        """Open the circuits other processes sharing the ledger opened (and we did not).

        Best effort: a ledger that cannot be read here does not stop a run already recorded
        as started (its writes will say so if the ledger is really gone).
        """
        if self.runner.breaker_policy is None:
            return
        from sqlalchemy.exc import SQLAlchemyError

        from orchestration.ledger.history import open_circuits

        try:
            opened = await anyio.to_thread.run_sync(open_circuits, ledger)
        except SQLAlchemyError as exc:
            get_logger().warning(
                "could not read the circuits other processes opened", error=str(exc)
            )
            return
        now = time.time()
        for provider, when in opened.items():
            breaker = self.runner.breaker(provider)
            if breaker is not None:
                breaker.opened_elsewhere(now - when)

    def _validate(
        self, tasks: Sequence[AgentTask], default: str | None, budget_usd: float | None
    ) -> TaskGraph:
        if budget_usd is not None and not budget_usd >= 0:
            raise ConfigurationError(f"budget_usd must be 0 or more, not {budget_usd!r}.")
        graph = checked_graph(tasks, self.registry, default)
        for agent in self._agents_of(tasks, default):
            self.runner.chain(agent)  # a fallback that names nothing fails here, not later
        for task in tasks:
            if task.output_type is not None:
                self._check_structured_output(task, default)
            self._check_tools(task, default)
        return graph

    @contextlib.asynccontextmanager
    async def _mcp(self, plan: Plan, run: RunResult) -> AsyncIterator[None]:
        """The run's MCP servers connected (each once) while it runs; a failure fails it."""
        agents = self._agents_of(plan.tasks, plan.default_agent)
        servers = mcp_servers(*(task.tools for task in plan.tasks), *(a.tools for a in agents))
        if not servers:
            yield
            return
        from orchestration.runtime.mcp import connected

        entered = False
        try:
            async with connected(servers):
                entered = True
                yield
        except ConfigurationError:
            if not entered:  # no server, no task run: the run failed, before it began
                run.status = RunStatus.FAILED
            raise

    def _check_tools(self, task: AgentTask, default: str | None) -> None:
        """Refuse, before the run, tools that no link of the task's chain could call."""
        from llm_abstractions.factory import LlmFactory
        from llm_abstractions.providers.tool_wire import TOOL_PROVIDERS

        agent = self.registry.get(task.agent or default or "")
        for label, link in self.runner.chain(agent):
            if not (link.tools or task.tools):
                continue
            if link.interface is not AgentInterface.API:
                raise ConfigurationError(
                    f"Task {task.task_id!r} has tools, but {label!r} is a "
                    f"{link.interface.value} agent, which cannot call them: give the tools to "
                    "an API agent."
                )
            built_from = LlmFactory.provider_class(link.agent_type)
            if built_from is not None and not built_from.supports_tools:
                raise ConfigurationError(
                    f"Task {task.task_id!r} has tools, but {label!r} runs on provider "
                    f"{link.agent_type!r}, which cannot call tools yet: give the task an agent "
                    f"on a provider that can ({TOOL_PROVIDERS})."
                )

    def _check_structured_output(self, task: AgentTask, default: str | None) -> None:
        """Refuse, before the run, a typed task whose providers cannot do structured output."""
        agent = self.registry.get(task.agent or default or "")
        if agent.interface is not AgentInterface.API:
            return  # a script answers as it can; the contract checks what it says
        if "grammar" in agent.metadata or "grammar" in task.metadata:
            raise ConfigurationError(
                f"Task {task.task_id!r} has an output_type, and a grammar in its or its "
                f"agent {agent.name!r}'s metadata: the output_type's schema already constrains "
                "the answer; drop one of them."
            )
        from llm_abstractions.factory import LlmFactory

        for label, link in self.runner.chain(agent):
            built_from = LlmFactory.provider_class(link.agent_type)
            if built_from is not None and not built_from.supports_output_schema:
                raise ConfigurationError(
                    f"Task {task.task_id!r} has an output_type, but {label!r} runs on provider "
                    f"{link.agent_type!r}, which cannot do structured output: give the task an "
                    "agent whose provider can, or drop output_type and check the text with "
                    "validators."
                )

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
        plan: Plan,
        run: RunResult,
        recorder: Recorder | None,
        on_task_done: Callable[[TaskResult], None] | None,
        on_progress: Callable[[TaskProgress], None] | None = None,
    ) -> RunResult:
        self.last_run = run
        scheduler = Scheduler(plan, run, self.runner, self.registry, self.max_concurrency)
        scheduler.recorder = recorder
        scheduler.on_task_done = on_task_done
        scheduler.on_progress = on_progress
        if recorder is not None and self.ledger is not None:
            from orchestration.ledger.cache import ResponseCache

            scheduler.cache = ResponseCache(self.ledger)
            await self._share_circuits(self.ledger)
            self._recording.append(recorder)
        # The span ends after the run's status is known; MCP servers' tools are listed once.
        with run_span(run, len(plan.tasks), self.tracer_provider):
            try:
                async with self._mcp(plan, run):
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
                    run.status = run_status(run, len(plan.tasks))
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
        from orchestration.ledger.recording import Recorder

        if self.ledger is None:
            from orchestration.ledger.store import Ledger

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
        await self.backend.aclose()
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

        llm = self.backend.provider(
            agent,
            LlmFactory.get_provider(
                agent.agent_type, model=agent.model, api_key=agent.resolved_api_key()
            ),
        )
        self._providers[key] = (agent, llm)
        return llm


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
