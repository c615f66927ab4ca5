"""A run's budget holds where estimates used to be wrong: text beyond ASCII, no max_tokens,
answers without usage, a pricier fallback.

The fault server reports usage as a real provider would bill it (``usage="chars"``: a token
per character of the prompt, the whole ``max_tokens`` out, 4096 without one), so the
recorded spend is what the run would have cost. Budget $0.05, concurrency 64, as in the
report that found these.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from orchestration import AgentRegistry, AgentTask, RetryPolicy, TaskExecutor
from orchestration.ledger import Ledger
from orchestration.runtime.resilience import text_tokens
from orchestration.runtime.spending import ESTIMATED
from tests.fakes.faults import FaultPlan, FaultServer
from tests.support.ledger_rows import rows

pytestmark = pytest.mark.anyio

BUDGET = 0.05
JAPANESE = "東京の天気を三行でまとめてください。" * 100  # 1,800 characters


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultServer]:
    with FaultServer(FaultPlan(usage="chars")) as faults:
        monkeypatch.setenv("OPENAI_BASE_URL", f"{faults.url}/v1")
        yield faults


def registry(**settings: Any) -> AgentRegistry:
    agents = AgentRegistry()
    settings.setdefault("script_fallback", False)
    agents.register_agent("gpt", "openai-gpt", model="gpt-4o-mini", api_key="k", **settings)
    return agents


def tasks(count: int, text: str = "go") -> list[AgentTask]:
    return [
        AgentTask(task_id=f"t{i}", description=f"[[task:t{i}]] {text}", agent="gpt")
        for i in range(count)
    ]


async def spend(ledger: Ledger, agents: AgentRegistry, work: list[AgentTask], **kw: Any) -> float:
    """Run ``work`` under the budget; the spend the ledger recorded."""
    async with TaskExecutor(agents, ledger=ledger, max_concurrency=64, **kw) as executor:
        await executor.run(work, budget_usd=BUDGET)
    return float(rows(ledger, "SELECT COALESCE(SUM(cost_usd), 0) FROM attempts")[0][0])


def test_text_beyond_ascii_is_not_counted_at_four_characters_a_token() -> None:
    assert text_tokens("a" * 400) == 100
    assert text_tokens(JAPANESE) >= len(JAPANESE)  # a token a character, or more
    assert text_tokens("Привет, как дела?" * 10) >= 100


async def test_prompts_beyond_ascii_stay_within_the_budget(
    server: FaultServer, ledger: Ledger
) -> None:
    spent = await spend(ledger, registry(metadata={"max_tokens": 100}), tasks(300, JAPANESE))
    assert 0.8 * BUDGET < spent <= BUDGET  # most of it used, none of it overspent


async def test_without_max_tokens_the_worst_case_is_reserved_and_named(
    server: FaultServer, ledger: Ledger
) -> None:
    # The model may write what its 128,000-token context leaves: $0.077 at most, more than
    # the whole budget. Nothing is sent, and the reason says what to do.
    spent = await spend(ledger, registry(), tasks(100))
    assert spent == 0 and len(server.log) == 0
    refused = rows(ledger, "SELECT DISTINCT status, error FROM task_runs")
    assert len(refused) == 1 and refused[0][0] == "budget_exceeded"
    assert "no max_tokens: the answer may run to 127,9" in refused[0][1]
    assert "set max_tokens to bound it" in refused[0][1]


async def test_answers_without_usage_are_priced_by_estimate(
    server: FaultServer, ledger: Ledger
) -> None:
    agents = registry(metadata={"max_tokens": 100})
    spent = await spend(ledger, agents, tasks(600, "[[nousage]] " + "word " * 2000))
    priced = rows(ledger, "SELECT DISTINCT price_source FROM attempts")
    assert priced == [(ESTIMATED,)]
    assert 0.8 * BUDGET < spent <= BUDGET
    statuses = {s for (s,) in rows(ledger, "SELECT DISTINCT status FROM task_runs")}
    assert statuses == {"succeeded", "budget_exceeded"}  # the budget stopped the run


async def test_a_pricier_fallback_must_fit_the_budget_again(
    server: FaultServer, ledger: Ledger
) -> None:
    # Every task's first call fails (a 500 on the cheap model); its one try there spent,
    # it moves to gpt-4.1 at 13 times the price, whose worst case is reserved anew.
    server.plan = FaultPlan(usage="chars", rate=1.0, kinds={"500": 1}, max_faults_per_key=1)
    agents = registry(metadata={"max_tokens": 200}, fallbacks=("openai-gpt:gpt-4.1",))
    spent = await spend(
        ledger, agents, tasks(200, JAPANESE), retry=RetryPolicy.never(), breakers=False
    )
    assert 0.8 * BUDGET < spent <= BUDGET
    models = rows(ledger, "SELECT DISTINCT model FROM attempts WHERE status = 'succeeded'")
    assert models == [("gpt-4.1",)]
    ended = rows(ledger, "SELECT error FROM task_runs WHERE status = 'budget_exceeded'")
    assert ended and any("not tried on openai-gpt:gpt-4.1" in e for (e,) in ended)


def test_the_reserved_default_is_the_max_tokens_anthropic_is_sent() -> None:
    from llm_abstractions import LlmFactory
    from llm_abstractions.providers import anthropic

    assert LlmFactory.spec("anthropic-claude").default_max_tokens == anthropic.DEFAULT_MAX_TOKENS
