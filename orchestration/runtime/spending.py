"""What a call may cost before it is made, and what an answer that reports no usage cost.

A run's budget admits a call only once its worst case fits (``worst_case``): the input by
estimate (``resilience.estimate_tokens``, which errs high for text beyond ASCII) and the
output at its limit, at the price of the link that will be called. The output's limit is the
request's ``max_tokens``; else the ``max_tokens`` its provider sends by default (Anthropic's
API needs one); else what the model's context window leaves (genai-prices keeps no separate
output limit, and the window bounds input and output together). So the recorded spend can
pass the budget only by how far the input estimates of the calls in flight were low.

An answer that reports no usage is priced by estimate (``estimated_cost``: the input as
above, the output from its text) and marked so in ``price_source``: never counted as free.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestration.ledger.accounting import context_window, cost_of
from orchestration.runtime.resilience import Budget, Waiting, estimate_tokens, text_tokens

if TYPE_CHECKING:
    from llm_abstractions.types import LlmRequest
    from orchestration.model.agent_registry import AgentConfig
    from orchestration.model.tasks import TaskResult

__all__ = ["ESTIMATED", "BudgetHold", "WorstCase", "estimated_cost", "model_of", "worst_case"]

# The output bound of a priced model whose context window genai-prices does not know.
UNKNOWN_WINDOW = 200_000
ESTIMATED = "estimated: the provider reported no usage"


@dataclass(frozen=True, slots=True)
class WorstCase:
    """The most a call can cost (0.0 when its price is unknown), and what bounds its output."""

    cost: float
    output_tokens: int
    bound: str  # "max_tokens", "the provider's default max_tokens", or the context window

    def hint(self) -> str:
        """What to say when it does not fit: how to bound it, if ``max_tokens`` does not."""
        if self.bound == "max_tokens":
            return ""
        return (
            f" (no max_tokens: the answer may run to {self.output_tokens:,} tokens, "
            f"{self.bound}; set max_tokens to bound it)"
        )


def model_of(agent: AgentConfig) -> str | None:
    """The model the agent's calls go to: its own, else its provider's default."""
    if agent.model:
        return agent.model
    from llm_abstractions.factory import LlmFactory

    return LlmFactory.spec(agent.agent_type).default_model


def worst_case(agent: AgentConfig, request: LlmRequest) -> WorstCase:
    """The most ``request`` can cost through ``agent``'s provider.

    With tools, an attempt is a loop of up to ``max_turns`` calls (in the request's
    metadata): each is held at this request's worst case. Later turns also read the tool
    results, which no bound covers: an estimate, not a guarantee, for tool loops.
    """
    from llm_abstractions.factory import LlmFactory
    from llm_abstractions.types import Usage

    model = model_of(agent)
    tokens_in, _ = estimate_tokens(request)
    if request.max_tokens:
        tokens_out, bound = request.max_tokens, "max_tokens"
    elif (default := LlmFactory.spec(agent.agent_type).default_max_tokens) is not None:
        tokens_out, bound = default, "the provider's default max_tokens"
    else:
        window = context_window(agent.agent_type, model)
        tokens_out = max(1, (window or UNKNOWN_WINDOW) - tokens_in)
        bound = f"what the model's {window:,}-token context leaves" if window else "unknown"
    cost, _ = cost_of(
        agent.agent_type, model, Usage(input_tokens=tokens_in, output_tokens=tokens_out)
    )
    turns = int(request.metadata.get("max_turns") or 1) if request.tools else 1
    return WorstCase((cost or 0.0) * turns, tokens_out * turns, bound)


def estimated_cost(
    provider: str, model: str | None, request: LlmRequest, answer: str
) -> float | None:
    """What an answer that reported no usage cost, by estimate (None: no price known)."""
    from llm_abstractions.types import Usage

    tokens_in, _ = estimate_tokens(request)
    usage = Usage(input_tokens=tokens_in, output_tokens=text_tokens(answer))
    cost, _ = cost_of(provider, model, usage)
    return cost


class BudgetHold:
    """What one task holds of its run's budget, attempt after attempt (no budget: nothing).

    What it holds covers its next attempt unless that attempt may cost more than what is
    left of it (the first attempt, a fallback link at a higher price, a longer conversation,
    an earlier attempt that cost something): then what was spent is settled and the worst
    case must fit the budget again.
    """

    def __init__(self, budget: Budget | None, waiting: Waiting = contextlib.nullcontext) -> None:
        self.budget = budget
        self.waiting = waiting
        self.reserved = 0.0  # of the run's budget, for the attempt to come
        self.settled = 0.0  # of what the attempts cost, already settled with the budget

    def settle(self, tries: Sequence[TaskResult]) -> None:
        """Give back what is held and count what ``tries`` (all so far) spent."""
        if self.budget is not None:
            spent = sum(t.cost_usd or 0.0 for t in tries) - self.settled
            self.budget.settle(self.reserved, spent)
            self.reserved, self.settled = 0.0, self.settled + spent

    async def reserve(
        self, agent: AgentConfig, request: LlmRequest, tries: Sequence[TaskResult]
    ) -> WorstCase | None:
        """Hold the worst case of ``request`` through ``agent`` (waiting, slot given back).

        Returns:
            None once it is held; else the worst case that cannot fit.
        """
        if self.budget is None:
            return None
        worst = worst_case(agent, request)
        unsettled = sum(t.cost_usd or 0.0 for t in tries) - self.settled
        if worst.cost <= self.reserved - unsettled:
            return None
        self.settle(tries)
        if await self.budget.admit(worst.cost, self.waiting):
            self.reserved = worst.cost
            return None
        return worst

    def refusal(self, worst: WorstCase, what: str, after: str = "") -> str:
        """Why ``worst`` was refused: ``what`` estimated ... would exceed the budget."""
        budget = self.budget
        assert budget is not None  # noqa: S101 - only refused with a budget
        return (
            f"{what} estimated ${worst.cost:.4f} would exceed the run's budget of "
            f"${budget.limit:.4f} (${budget.spent:.4f} spent, ${budget.reserved:.4f} in "
            f"flight){worst.hint()}{after}"
        )
