"""One task through its fallback chain: cache, rate limits, breakers, retries, budgets.

An agent's chain is the agent itself, then its ``fallbacks`` in order (other agents' names,
or ``"provider"`` / ``"provider:model"`` run with the agent's own settings), then, as the
last resort, the bundled script fallback for the agent's own provider when that provider
could not serve (not for a rate limit, nor past an open circuit). For each link:

1. An open circuit for the link's provider skips the link (the reason is recorded).
2. With the cache on, a stored answer ends the task (method ``cache``, cost 0).
3. Attempts, up to ``RetryPolicy.max_attempts``: each waits for its backoff and for room
   under the provider's rate limit (the wait is recorded with the attempt). A failure that
   retrying can fix is retried; one that this provider cannot get past (a rejected key, a
   prompt too long for the model) moves on to the next link; a failure of the request
   itself (invalid, refused) ends the task, as does the task's ``max_total_s``.
4. An answer its task's output contract refuses is asked for again, the reason added to the
   conversation, up to ``RetryPolicy.max_output_retries`` times (not counted in
   ``max_attempts``); then the task fails with that reason.

The attempt that follows a move carries ``fallback_reason``. A run's budget reserves a
task's worst case (``runtime.spending``) before its first attempt, and again before an
attempt on a link at a higher price; a task's own ``budget_usd`` is checked before each
attempt.

``TaskRunner`` keeps what outlives a task (chains, breakers, rate limiters) and applies the
run's budget; ``runtime.links.TaskAttempts`` makes one task's attempts.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from llm_abstractions.errors import ConfigurationError
from orchestration.ledger.cache import ResponseCache
from orchestration.model.agent_registry import AgentConfig, AgentInterface
from orchestration.model.tasks import AgentTask, TaskProgress, TaskResult, TaskStatus
from orchestration.model.tools import ToolCallRecord
from orchestration.runtime.backend import Backend, LocalBackend
from orchestration.runtime.links import OnAttempt, TaskAttempts, not_attempted
from orchestration.runtime.prompts import build_request
from orchestration.runtime.resilience import (
    BreakerPolicy,
    Budget,
    CircuitBreaker,
    Clock,
    RateLimit,
    RateLimiter,
    RetryPolicy,
    Waiting,
)
from orchestration.runtime.spending import BudgetHold
from orchestration.runtime.tool_loop import Replays

if TYPE_CHECKING:
    from llm_abstractions.base import BaseLlm
    from orchestration.model.agent_registry import AgentRegistry

__all__ = ["OnAttempt", "TaskRunner"]


class TaskRunner:
    """Applies an executor's policies to its tasks; its breakers and limits outlive runs."""

    def __init__(
        self,
        registry: AgentRegistry,
        provider: Callable[[AgentConfig], BaseLlm],
        *,
        retry: RetryPolicy,
        clock: Clock,
        rate_limits: Mapping[str, RateLimit],
        breaker: BreakerPolicy | None,
        cache: bool,
        backend: Backend | None = None,
    ) -> None:
        self.registry = registry
        self.provider = provider
        self.backend = backend or LocalBackend()
        self.retry = retry
        self.clock = clock
        self.limiters = {name: RateLimiter(limit, clock) for name, limit in rate_limits.items()}
        self.breaker_policy = breaker
        self.breakers: dict[str, CircuitBreaker] = {}
        self.on_breaker_change: Callable[[CircuitBreaker], None] | None = None
        self.cache_default = cache
        self.rng = random.Random()  # noqa: S311 - jitter, not secrets
        # Per agent name: the registry's version it was built from, and the links.
        self._chains: dict[str, tuple[int, list[tuple[str, AgentConfig]]]] = {}

    def chain(self, agent: AgentConfig) -> list[tuple[str, AgentConfig]]:
        """The agent's links as (label, agent settings), the agent first.

        Raises:
            ConfigurationError: A fallback names no agent and no provider, or a script
                agent is part of a chain.
        """
        cached = self._chains.get(agent.name)
        if cached is not None and cached[0] == self.registry.version and cached[1][0][1] is agent:
            return cached[1]
        from llm_abstractions.factory import LlmFactory

        if agent.fallbacks and agent.interface is not AgentInterface.API:
            raise ConfigurationError(
                f"Agent {agent.name!r} runs a script ({agent.interface.value}): it cannot have "
                "fallbacks. Give them to an API agent instead."
            )
        links = [(agent.name, agent)]
        for entry in agent.fallbacks:
            if entry in self.registry:
                fallback = self.registry.get(entry)
                if fallback.interface is not AgentInterface.API:
                    raise ConfigurationError(
                        f"Agent {agent.name!r} has fallback {entry!r}, a "
                        f"{fallback.interface.value} agent: fallbacks must be API agents (the "
                        "script fallback comes last on its own)."
                    )
                links.append((entry, fallback))
                continue
            provider, _, model = entry.partition(":")
            try:
                spec = LlmFactory.spec(provider)
            except ConfigurationError:
                raise ConfigurationError(
                    f"Agent {agent.name!r} has fallback {entry!r}, which is neither a registered "
                    f"agent ({', '.join(self.registry.names())}) nor 'provider' or "
                    "'provider:model' with a known provider."
                ) from None
            same = spec.name == agent.agent_type  # then the agent's own key still applies
            derived = agent.model_copy(
                update={
                    "agent_type": spec.name,
                    "model": model or None,
                    "api_key": agent.api_key if same else None,
                    "api_key_env": agent.api_key_env if same else None,
                    "fallbacks": (),
                }
            )
            links.append((entry, derived))
        self._chains[agent.name] = (self.registry.version, links)
        return links

    def breaker(self, provider: str) -> CircuitBreaker | None:
        """The provider's breaker (None when breakers are off)."""
        if self.breaker_policy is None:
            return None
        breaker = self.breakers.get(provider)
        if breaker is None:
            breaker = self.breakers[provider] = CircuitBreaker(
                provider, self.breaker_policy, self.clock, self._breaker_changed
            )
        return breaker

    def _breaker_changed(self, breaker: CircuitBreaker) -> None:
        if self.on_breaker_change is not None:
            self.on_breaker_change(breaker)

    async def run(
        self,
        task: AgentTask,
        agent: AgentConfig,
        upstream: dict[str, str],
        *,
        budget: Budget | None = None,
        cache: ResponseCache | None = None,
        on_attempt: OnAttempt | None = None,
        waiting: Waiting = contextlib.nullcontext,
        on_progress: Callable[[TaskProgress], None] | None = None,
        on_tool_call: Callable[[ToolCallRecord], None] | None = None,
        replays: Replays | None = None,
    ) -> list[TaskResult]:
        """Every attempt at ``task``, in order; the last one is the task's outcome.

        ``on_attempt`` is called with each attempt made (not with outcomes no attempt
        produced, such as a budget refusal) as soon as it ends. Every wait (backoff, rate
        limit, budget) happens inside ``waiting()``. An answer the task's output contract
        refuses is asked for again, with the reason, up to ``max_output_retries`` times.
        ``on_tool_call`` hears of each tool call of an attempt's tool loop as it ends;
        ``replays`` are tool results an earlier run of the task recorded (see ``tool_loop``).
        """
        attempts = TaskAttempts(self, task, agent, upstream, cache, on_attempt, waiting, budget)
        attempts.on_progress = on_progress
        attempts.on_tool_call = on_tool_call
        attempts.recorded = {key: list(results) for key, results in (replays or {}).items()}
        try:
            request = build_request(task, agent, upstream, attempts.contract)
        except ConfigurationError as exc:  # bad settings: nothing to try
            return [not_attempted(task, agent, TaskStatus.FAILED, exc)]
        if agent.interface is not AgentInterface.API:
            attempts.hold = BudgetHold(None)  # a script agent's own command is not priced
            await attempts.run_script(request)
            return attempts.tries
        refused = await attempts.hold.reserve(agent, request, ())
        if refused is not None:
            why = attempts.hold.refusal(refused, "not run: its")
            return [not_attempted(task, agent, TaskStatus.BUDGET_EXCEEDED, why)]
        try:
            await attempts.run(request)
        finally:
            attempts.settle()
        return attempts.tries
