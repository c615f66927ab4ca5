"""One task's attempts along its fallback chain, link by link.

``TaskAttempts`` walks the links ``TaskRunner.chain`` gives (see ``runtime.chain`` for the
order of checks): per link the cache, then attempts past the circuit breaker and the rate
limit, retried with backoff while retrying can help; every answer is judged by the task's
output contract, and a refused one is asked for again with the reason. Last comes the
bundled script, when the agent's own provider could not serve.

It needs of the runner only what ``Policies`` names: the runner's limits, breakers and
providers outlive one task, these attempts do not.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from time import perf_counter
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from llm_abstractions.errors import ConfigurationError
from orchestration.ledger.accounting import agent_secrets, redact
from orchestration.ledger.cache import ResponseCache, cache_key
from orchestration.model.agent_registry import AgentConfig
from orchestration.model.contracts import OutputContract
from orchestration.model.tasks import (
    AgentTask,
    ExecutionMethod,
    TaskProgress,
    TaskResult,
    TaskStatus,
)
from orchestration.model.tools import ToolCallRecord, replay_key
from orchestration.runtime.attempts import (
    FailureKind,
    cancelled_attempt,
    check_output,
    llm_attempt,
    script_attempt,
    script_can_stand_in,
)
from orchestration.runtime.prompts import build_request, with_feedback
from orchestration.runtime.resilience import (
    CALL,
    Budget,
    CircuitBreaker,
    Clock,
    RateLimiter,
    RetryPolicy,
    Waiting,
    estimate_tokens,
)
from orchestration.runtime.spending import BudgetHold, model_of, worst_case
from orchestration.runtime.telemetry import attempt_span

if TYPE_CHECKING:
    from llm_abstractions.base import BaseLlm
    from llm_abstractions.types import LlmRequest
    from orchestration.runtime.backend import Backend

__all__ = ["OnAttempt", "Policies", "TaskAttempts", "not_attempted"]

# Called with each attempt made, and the request it sent (None for a script agent's).
OnAttempt = Callable[[TaskResult, "LlmRequest | None"], None]


class Policies(Protocol):
    """What the attempts of a task use of their runner (``runtime.chain.TaskRunner``)."""

    retry: RetryPolicy
    clock: Clock
    limiters: dict[str, RateLimiter]
    breakers: dict[str, CircuitBreaker]
    cache_default: bool
    rng: random.Random

    def chain(self, agent: AgentConfig) -> list[tuple[str, AgentConfig]]:
        """The agent's links as (label, agent settings), the agent first."""
        ...

    def breaker(self, provider: str) -> CircuitBreaker | None:
        """The provider's breaker (None when breakers are off)."""
        ...

    def provider(self, agent: AgentConfig) -> BaseLlm:
        """The agent's provider, built once."""
        ...

    @property
    def backend(self) -> Backend:
        """Where scripts run (``runtime.backend``)."""
        ...


class TaskAttempts:
    """The attempts of one task, link by link."""

    def __init__(
        self,
        runner: Policies,
        task: AgentTask,
        agent: AgentConfig,
        upstream: dict[str, str],
        cache: ResponseCache | None,
        on_attempt: OnAttempt | None,
        waiting: Waiting,
        budget: Budget | None = None,
    ) -> None:
        self.runner = runner
        self.hold = BudgetHold(budget, waiting)
        # Checked when the run was validated: building it again cannot fail here.
        self.contract = OutputContract.of(task.output_type, task.validators)
        self.output_retries = 0  # answers refused and asked for again
        self.waiting = waiting
        self.task = task
        self.agent = agent
        self.upstream = upstream
        self.cache = cache
        self.on_attempt = on_attempt
        self.on_progress: Callable[[TaskProgress], None] | None = None
        self.on_tool_call: Callable[[ToolCallRecord], None] | None = None
        # Results of tool calls this task made before (an earlier run's, earlier attempts'),
        # given back to a later attempt's calls of tools that must not run twice.
        self.recorded: dict[tuple[str, str], list[str]] = {}
        self.tries: list[TaskResult] = []
        self.started = runner.clock.now()
        self.reason: str | None = None  # why the next attempt is on another link
        self.primary_failure: TaskResult | None = None
        self.primary_open = False

    def add(self, result: TaskResult, request: LlmRequest | None) -> None:
        """One more result (of ``request``); an attempt made is reported at once."""
        self.tries.append(result)
        if self.on_attempt is not None and result.metadata.get("attempted", True):
            self.on_attempt(result, request)

    def settle(self) -> None:
        """Give back what is held of the run's budget and count what was spent."""
        self.hold.settle(self.tries)

    async def run_script(self, request: LlmRequest) -> None:
        """A script agent's attempts: its own command, asked again after a refused answer.

        A script's own failure is its answer; an attempt whose worker died (``crashed``, on
        a cluster backend) is tried again under the retry policy.
        """
        next_request: LlmRequest | None = request
        retry, crashes = self.runner.retry, 0
        while next_request is not None:
            with self._in_flight(self.agent, next_request, ExecutionMethod.SCRIPT) as ended:
                made = ended(
                    await script_attempt(self.task, self.agent, next_request, self.runner.backend)
                )
            result = check_output(self.contract, made, self.agent)
            self.add(result, next_request)
            if result.status is TaskStatus.CRASHED:
                crashes += 1
                left = retry.max_total_s - (self.runner.clock.now() - self.started)
                wait = retry.backoff(crashes, None, self.runner.rng)
                if crashes >= retry.max_attempts or wait >= left:
                    return
                async with self.waiting():
                    await self.runner.clock.sleep(wait)
                continue
            if result.metadata.get("failure_kind") != FailureKind.OUTPUT:
                return
            next_request = await self._ask_again(self.agent, next_request, result)

    async def run(self, request: LlmRequest) -> None:
        """Try the links in order with the primary link's ``request``, then the script."""
        self.started = self.runner.clock.now()  # the task's time runs from its first try
        links = self.runner.chain(self.agent)
        for number, (label, link) in enumerate(links):
            last = not any(self._could_serve(later) for _, later in links[number + 1 :])
            outcome = await self._link(label, link, request if number == 0 else None, last)
            if outcome == "done":
                break
        else:
            await self._last_resort(request)
        if not self.tries:  # out of time before any link could try
            self.add(
                not_attempted(
                    self.task,
                    self.agent,
                    TaskStatus.FAILED,
                    f"not run: {self.reason or 'out of time'}",
                    error_type="NotAttempted",
                ),
                None,
            )

    def _could_serve(self, link: AgentConfig) -> bool:
        """Whether a link's circuit would let a call through now."""
        breaker = self.runner.breakers.get(link.agent_type)
        return breaker is None or breaker.would_allow()

    async def _link(
        self, label: str, link: AgentConfig, request: LlmRequest | None, last: bool
    ) -> str:
        """Try one link; "done" ends the task, "next" moves on to the next link.

        ``request`` is the primary link's (None: build this link's own). A provider that
        asks to wait longer than the cap is left for the next link, unless no later link
        could take the task now.
        """
        runner, retry = self.runner, self.runner.retry
        primary = request is not None
        prepared = await self._prepare(label, link, request)
        if isinstance(prepared, str):
            return prepared
        request, key = prepared
        limiter = runner.limiters.get(link.agent_type)
        wait = 0.0
        error = None
        number = 0  # failures retrying could fix, so far
        waited = 0  # answers that asked to wait (Retry-After), so far
        while number < retry.max_attempts:
            if runner.clock.now() - self.started + wait > retry.max_total_s:
                self.reason = self.reason or f"{label} ran out of time ({retry.max_total_s} s)"
                return "done"  # out of time: the last failure stands
            over = self._over_task_budget(link, request)
            if over is not None:
                self.add(over, None)
                return "done"
            refused = await self.hold.reserve(link, request, self.tries)
            if refused is not None:  # a link at a higher price, say: it must fit again
                self._over_run_budget(
                    link, self.hold.refusal(refused, f"not tried on {label}: its")
                )
                return "done"
            self._hand_budget(request)
            if wait > 0:
                async with self.waiting():
                    await runner.clock.sleep(wait)
            made = await self._attempt(label, link, request, limiter, primary, last)
            if isinstance(made, str):
                return made
            result = check_output(self.contract, made[0], link)
            self.add(self._annotate(result, link, wait + made[1], key), request)
            kind = result.metadata.get("failure_kind")
            if primary and not result.succeeded:
                self.primary_failure = result
            if result.succeeded or kind == FailureKind.REQUEST:
                return "done"
            if kind == FailureKind.OUTPUT:
                asked_again = await self._ask_again(link, request, result)
                if asked_again is None:
                    return "done"  # refused too often: the last refusal is the outcome
                request, wait = asked_again, 0.0
                continue
            error = result.metadata.get("error_type")
            if kind == FailureKind.PROVIDER:
                self.reason = f"{label} cannot serve it: {error}"
                return "next"
            asked = result.metadata.get("retry_after_s")
            if asked is not None and asked > retry.retry_after_cap_s and not last:
                self.reason = (
                    f"{label} asked to wait {asked:g} s (more than the {retry.retry_after_cap_s:g}"
                    f" s cap) after {error}"
                )
                return "next"
            if asked is not None and asked > 0:  # asked to wait: not a failed try
                waited += 1
                wait = retry.backoff(waited, asked, runner.rng)
                continue
            number += 1
            wait = retry.backoff(number, asked, runner.rng)
        self.reason = f"{label} failed {retry.max_attempts} time(s), the last with {error}"
        return "next"

    async def _prepare(
        self, label: str, link: AgentConfig, request: LlmRequest | None
    ) -> tuple[LlmRequest, str | None] | str:
        """The link's request and cache key; or "done" (answered from the cache) or "next"."""
        if request is None:
            try:
                request = build_request(self.task, link, self.upstream, self.contract)
            except ConfigurationError as exc:  # this fallback's own settings are invalid
                self.reason = f"{label} was skipped: {exc}"
                return "next"
        key = self._cache_key(link, request)
        if key is not None:
            hit = await self._cached(key, link)
            if hit is not None:
                self.add(hit, request)
                return "done"
        return request, key

    async def _ask_again(
        self, link: AgentConfig, request: LlmRequest, refused: TaskResult
    ) -> LlmRequest | None:
        """The request that asks again after a refused answer, or None when none is left.

        None too when the run's budget cannot afford another attempt (then the task ends
        ``budget_exceeded``, saying so).
        """
        if self.output_retries >= self.runner.retry.max_output_retries:
            return None
        typed = self.contract is not None and self.contract.typed
        reason = refused.metadata["rejection"]
        again = with_feedback(request, refused.output or "", reason, typed)
        unaffordable = await self.hold.reserve(link, again, self.tries)
        if unaffordable is not None:
            why = self.hold.refusal(unaffordable, "not asked again: the next attempt's")
            self._over_run_budget(link, f"{why}; the last answer was refused: {reason}")
            return None
        self.output_retries += 1
        return again

    async def _attempt(
        self,
        label: str,
        link: AgentConfig,
        request: LlmRequest,
        limiter: RateLimiter | None,
        primary: bool,
        last: bool,
    ) -> tuple[TaskResult, float] | str:
        """One attempt, past the link's circuit breaker and rate limit.

        An open circuit sends the task on to the next link; on the last link that could
        serve, the task waits for the circuit's probe instead.

        Returns:
            The attempt and the seconds its rate limit made it wait; or "next" when the
            circuit is open, "done" when the circuit or the rate limit would take it past
            its time.
        """
        runner = self.runner
        breaker = runner.breaker(link.agent_type)
        ticket = CALL if breaker is None else breaker.allow()  # before any rate-limit wait
        if ticket is None and last:
            assert breaker is not None  # noqa: S101 - no ticket comes only from a breaker
            ticket = await self._through_circuit(breaker, link)
            if ticket is None:
                return "done"
        if ticket is None:
            self.primary_open = self.primary_open or primary
            self.reason = f"circuit open for {link.agent_type}"
            return "next"
        try:
            limited, taken = 0.0, 0.0
            if limiter is not None:
                left = runner.retry.max_total_s - (runner.clock.now() - self.started)
                tokens = sum(estimate_tokens(request))
                limited, granted = await limiter.acquire(tokens, self.waiting, within=left)
                if granted is None:
                    if breaker is not None:
                        breaker.abandoned(ticket)
                    self.reason = self.reason or f"{label} ran out of time for its rate limit"
                    return "done"
                taken = granted
            result = await self._call(link, request, breaker, ticket)
        except BaseException:
            if breaker is not None:
                breaker.abandoned(ticket)
            raise
        if limiter is not None:
            limiter.correct(taken, result.usage.total_tokens if result.succeeded else None)
        return result, limited

    async def _through_circuit(self, breaker: CircuitBreaker, link: AgentConfig) -> int | None:
        """Wait (without a slot) for an open circuit to let this call through, in time.

        Returns:
            The ticket; or None when the probe would come after the task's ``max_total_s``
            (the task then ends, saying so).
        """
        clock, limit = self.runner.clock, self.runner.retry.max_total_s
        while True:
            ticket = breaker.allow()
            if ticket is not None:
                return ticket
            seen, wait = breaker.changes, breaker.cooldown_left()
            left = limit - (clock.now() - self.started)
            if wait > left or left <= 0:
                self.add(
                    not_attempted(
                        self.task,
                        link,
                        TaskStatus.FAILED,
                        f"not run: the circuit for {link.agent_type} is open (failing calls) "
                        f"and its next probe would come after the task's max_total_s of "
                        f"{limit:g} s",
                        error_type="CircuitOpen",
                    ),
                    None,
                )
                return None
            async with self.waiting():
                if wait > 0:  # at least 1 ms: a clock's rounding must not leave it spinning
                    await clock.sleep(max(wait, 0.001))
                else:  # a probe is out: its outcome opens or closes the circuit
                    await breaker.settled(seen)

    async def _call(
        self,
        link: AgentConfig,
        request: LlmRequest,
        breaker: CircuitBreaker | None,
        ticket: int,
    ) -> TaskResult:
        """One attempt through the link's provider; its breaker learns how it went."""
        with self._in_flight(link, request, ExecutionMethod.LLM_FACTORY) as ended:
            result = ended(
                await llm_attempt(
                    self.task,
                    link,
                    request,
                    lambda: self.runner.provider(link),
                    self.on_progress,
                    self._tool_called,
                    {key: deque(results) for key, results in self.recorded.items()},
                    plain=self.contract is None,
                )
            )
        if breaker is not None:
            kind = result.metadata.get("failure_kind")
            if result.status is TaskStatus.CRASHED:  # our worker died: says nothing of it
                breaker.abandoned(ticket)
            elif result.succeeded or kind == FailureKind.REQUEST:
                breaker.succeeded(ticket)  # answered, or rightly refused: the provider is up
            elif kind == FailureKind.TRANSIENT and not _asks_to_wait(result):
                breaker.failed(ticket)
            else:  # asked to wait, or a failure of ours (a key, an SDK): no verdict
                breaker.abandoned(ticket)
        return result

    def _tool_called(self, call: ToolCallRecord) -> None:
        """Keep a call's result for later attempts (a retry runs the loop again), report it."""
        if call.result is not None and not call.replayed:
            self.recorded.setdefault(replay_key(call.tool, call.arguments), []).append(call.result)
        if self.on_tool_call is not None:
            self.on_tool_call(call)

    def _in_flight(
        self, link: AgentConfig, request: LlmRequest, method: ExecutionMethod
    ) -> _InFlight:
        """Around a call, which gives what it yields its result (and gets it back)."""
        return _InFlight(self, link, request, method)

    def _cache_key(self, link: AgentConfig, request: LlmRequest) -> str | None:
        """The request's cache key, if the cache is on for this link (and it can be built)."""
        enabled = link.cache if link.cache is not None else self.runner.cache_default
        if self.cache is None or not enabled:
            return None
        try:
            llm = self.runner.provider(link)
        except ConfigurationError:  # the attempt will say what is wrong
            return None
        if not getattr(llm, "cacheable", True):  # a coding CLI: its answer is its work
            return None
        endpoint = getattr(llm, "base_url", None) or getattr(llm, "host", None)
        return cache_key(link.agent_type, model_of(link), request, endpoint)

    async def _cached(self, key: str, link: AgentConfig) -> TaskResult | None:
        assert self.cache is not None  # noqa: S101 - only called with a cache
        started = perf_counter()
        hit = await self.cache.get(key)
        if hit is None:
            return None
        meta: dict[str, Any] = {
            "execution_method": ExecutionMethod.CACHE.value,
            "provider": link.agent_type,
            "model": hit.model or link.model,
            "finish_reason": hit.finish_reason,
            "price_source": "cache: not charged",
            "cached_from": hit.attempt_id,
            "agent": link.name,
        }
        if self.reason is not None:
            meta["fallback_reason"], self.reason = self.reason, None
        answer = TaskResult(
            task_id=self.task.task_id,
            status=TaskStatus.SUCCEEDED,
            output=hit.output,
            cost_usd=0.0,  # and no tokens: none were used for this answer
            latency_s=perf_counter() - started,
            attempts=1,
            metadata=meta,
        )
        checked = check_output(self.contract, answer, link)
        if not checked.succeeded:  # kept under another contract: ask the provider instead
            if "fallback_reason" in meta:
                self.reason = meta["fallback_reason"]
            return None
        return checked

    def _annotate(
        self, result: TaskResult, link: AgentConfig, wait: float, key: str | None
    ) -> TaskResult:
        """The attempt with what the chain knows: wait, why it moved here, the cache key."""
        meta = result.metadata
        meta["agent"] = link.name
        meta["wait_s"] = wait
        if self.reason is not None:
            meta["fallback_reason"], self.reason = self.reason, None
        complete = meta.get("finish_reason") not in ("length", "content_filter")
        if key is not None and result.succeeded and complete:
            meta["cache_key"] = key
        return result

    def _over_task_budget(self, link: AgentConfig, request: LlmRequest) -> TaskResult | None:
        limit = self.task.budget_usd
        if limit is None:
            return None
        spent = sum(t.cost_usd or 0.0 for t in self.tries)
        worst = worst_case(link, request)
        if spent + worst.cost <= limit:
            return None
        return not_attempted(
            self.task,
            link,
            TaskStatus.BUDGET_EXCEEDED,
            f"stopped: ${spent:.4f} spent and the next attempt's estimated ${worst.cost:.4f} "
            f"would exceed the task's budget of ${limit:.4f}{worst.hint()}",
        )

    def _hand_budget(self, request: LlmRequest) -> None:
        """Tell the attempt what it may spend: what is left of the task's budget and the run's.

        A coding CLI, whose worst case is unknown (so a run budget admits it), is stopped
        there (``runtime.coding``); other providers ignore it. CLIs in flight at once are
        each told the run's whole room, so together they may pass it.
        """
        caps = []
        if self.task.budget_usd is not None:
            caps.append(self.task.budget_usd - sum(t.cost_usd or 0.0 for t in self.tries))
        budget = self.hold.budget
        if budget is not None:  # its room, this task's own hold included
            caps.append(budget.limit - budget.spent - budget.reserved + self.hold.reserved)
        if caps:
            request.metadata["budget_usd"] = max(0.0, min(caps))

    def _over_run_budget(self, link: AgentConfig, why: str) -> None:
        """End the task ``budget_exceeded``, saying ``why``."""
        self.add(not_attempted(self.task, link, TaskStatus.BUDGET_EXCEEDED, why), None)

    async def _last_resort(self, request: LlmRequest) -> None:
        """The bundled script for the agent's own provider, if it could not serve.

        Not when its circuit is open: the script would go around the breaker to a provider
        that is failing.
        """
        failure = self.primary_failure
        unavailable = failure is not None and bool(failure.metadata.get("provider_unavailable"))
        closed = not self.primary_open and self._could_serve(self.agent)
        # The bundled script cannot call tools: it does not stand in for a task that has them.
        tools = bool(self.agent.tools or self.task.tools)
        if unavailable and closed and not tools and script_can_stand_in(self.agent):
            with self._in_flight(self.agent, request, ExecutionMethod.SCRIPT) as ended:
                made = ended(
                    await script_attempt(self.task, self.agent, request, self.runner.backend)
                )
            result = check_output(self.contract, made, self.agent)
            self.add(self._annotate(result, self.agent, 0.0, None), request)
        elif not self.tries:  # every link's circuit was open
            self.add(
                not_attempted(
                    self.task,
                    self.agent,
                    TaskStatus.FAILED,
                    f"not run: {self.reason or 'no provider could take it'}",
                    error_type="CircuitOpen",
                ),
                None,
            )


class _InFlight:
    """Around a call, which gives what it yields its result (and gets it back).

    Cancelled in flight, the call is recorded as a ``cancelled`` attempt. A traced run
    has a span for the call (``runtime.telemetry``). A class, not a generator: it is on
    every attempt's path, and a generator's context manager costs twice as much.
    """

    __slots__ = ("attempts", "link", "method", "request", "span", "started")

    def __init__(
        self,
        attempts: TaskAttempts,
        link: AgentConfig,
        request: LlmRequest,
        method: ExecutionMethod,
    ) -> None:
        self.attempts = attempts
        self.link = link
        self.request = request
        self.method = method
        self.span = attempt_span(attempts.task, link, request, method.value)
        self.started = 0.0

    def __enter__(self) -> Callable[[TaskResult], TaskResult]:
        self.started = perf_counter()
        return self.span.__enter__()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        suppressed = self.span.__exit__(kind, error, traceback)
        if kind is not None and issubclass(kind, anyio.get_cancelled_exc_class()):
            task, link = self.attempts.task, self.link
            attempt = cancelled_attempt(task, link, self.method, perf_counter() - self.started)
            attempt.metadata["agent"] = link.name
            self.attempts.add(attempt, self.request)
        return suppressed


def _asks_to_wait(result: TaskResult) -> bool:
    """A rate limit, or an overload that said when to come back: the provider is up."""
    meta = result.metadata
    return meta["error_type"] == "LLMRateLimitError" or bool(meta.get("retry_after_s"))


def not_attempted(
    task: AgentTask,
    agent: AgentConfig,
    status: TaskStatus,
    error: str | BaseException,
    *,
    error_type: str | None = None,
) -> TaskResult:
    """A task outcome that no attempt produced (the ledger records no attempt for it)."""
    if isinstance(error, BaseException):
        error_type, error = type(error).__name__, f"{type(error).__name__}: {error}"
    return TaskResult(
        task_id=task.task_id,
        status=status,
        error=redact(error, agent_secrets(agent)),
        metadata={
            "execution_method": None,
            "attempted": False,
            "provider": agent.agent_type,
            "model": agent.model,
            "error_type": error_type or status.value,
        },
    )
