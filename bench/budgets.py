"""Budgets against what runs really cost: recorded spend over a run's budget, by scenario.

The fault server (``tests/fakes/faults.py``) runs in a child process with ``--usage chars``:
it reports usage as a provider billing a token per character of the prompt would, and the
whole ``max_tokens`` out (4096 without one), so the recorded spend is what the run would
have cost. Every scenario runs at concurrency 64 on gpt-4o-mini through the real SDK, budget
$0.05 unless said otherwise (the scenarios of ``tests/test_budgets.py``):

* English: an ASCII prompt (1,800 characters, or a short one), ``max_tokens`` 100. The
  estimate counts four ASCII characters a token, as real tokenizers do for English; the
  server bills one token per character, so the long prompt's calls cost more than estimated.
* Japanese: 1,800 characters, ``max_tokens`` 100.
* No ``max_tokens``: the worst case is what the model's context leaves; at $0.05 nothing
  fits, at $1.00 some run.
* No usage in the answers (``[[nousage]]``): priced by estimate.
* A pricier fallback: every task's first call is a 500 on gpt-4o-mini, then gpt-4.1 (13
  times the price), with ``RetryPolicy.never()`` and breakers off.

Per scenario: the budget, the recorded spend (``SUM(cost_usd)`` of the attempts), how far
over it is (negative: under), tasks succeeded and ``budget_exceeded``, the largest single
call's cost (the goal allows overspending by one call's estimation error) and whether the
spend stayed within the budget plus that call.

Run: ``.venv/bin/python bench/budgets.py`` (from the repository root)
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from orchestration import AgentRegistry, AgentTask, RetryPolicy, TaskExecutor
from orchestration.ledger import Ledger
from orchestration.logs import configure_logging

ROOT = Path(__file__).resolve().parent.parent
CAP = 64
JAPANESE = "東京の天気を三行でまとめてください。" * 100  # 1,800 characters
ENGLISH = ("Summarise the weather in Tokyo in three lines. " * 40)[: len(JAPANESE)]


@dataclass(frozen=True)
class Scenario:
    """A run to measure: its tasks, the agent's settings, the budget, the server's faults."""

    label: str
    count: int
    text: str
    max_tokens: int | None = 100
    budget: float = 0.05
    fallback: bool = False  # first calls fail with a 500, then gpt-4.1
    faults: tuple[str, ...] = ()
    executor: dict[str, Any] = field(default_factory=dict)


SCENARIOS = [
    Scenario("English, 1,800 chars", 300, ENGLISH),
    Scenario("English, short", 1000, "go"),
    Scenario("Japanese", 300, JAPANESE),
    Scenario("no max_tokens", 100, "go", max_tokens=None),
    Scenario("no max_tokens, $1", 100, "go", max_tokens=None, budget=1.0),
    Scenario("no usage", 600, "[[nousage]] " + "word " * 2000),
    Scenario(
        "pricier fallback",
        200,
        JAPANESE,
        max_tokens=200,
        fallback=True,
        faults=("--rate", "1", "--kinds", "500", "--max-faults-per-key", "1"),
        executor={"retry": RetryPolicy.never(), "breakers": False},
    ),
]


@dataclass
class Spent:
    """What a scenario's run spent and how its tasks ended."""

    recorded: float
    largest: float
    statuses: Counter[str]
    seconds: float


def start_server(faults: tuple[str, ...]) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "tests.fakes.faults", "--usage", "chars", *faults]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)  # noqa: S603
    assert child.stdout is not None  # noqa: S101 - piped above
    port = int(child.stdout.readline())
    return child, f"http://127.0.0.1:{port}/v1"


def registry(scenario: Scenario) -> AgentRegistry:
    agents = AgentRegistry()
    metadata = {} if scenario.max_tokens is None else {"max_tokens": scenario.max_tokens}
    agents.register_agent(
        "gpt",
        "openai-gpt",
        model="gpt-4o-mini",
        api_key_env="FAULT_KEY",
        script_fallback=False,
        metadata=metadata,
        fallbacks=("openai-gpt:gpt-4.1",) if scenario.fallback else (),
    )
    return agents


async def measure(scenario: Scenario, db: Path) -> Spent:
    tasks = [
        AgentTask(task_id=f"t{i}", description=f"[[task:t{i}]] {scenario.text}", agent="gpt")
        for i in range(scenario.count)
    ]
    ledger = Ledger(f"sqlite:///{db}")
    try:
        executor = TaskExecutor(
            registry(scenario), ledger=ledger, max_concurrency=CAP, **scenario.executor
        )
        async with executor:
            started = time.perf_counter()
            run = await executor.run(tasks, budget_usd=scenario.budget)
            seconds = time.perf_counter() - started
    finally:
        ledger.close()
    with sqlite3.connect(db) as connection:
        spent, largest = connection.execute(
            "SELECT COALESCE(SUM(cost_usd), 0), COALESCE(MAX(cost_usd), 0) FROM attempts"
        ).fetchone()
    statuses = Counter(result.status.value for result in run.results.values())
    return Spent(spent, largest, statuses, seconds)


def print_table(results: list[tuple[Scenario, Spent]]) -> None:
    print(f"\nbudgets at concurrency {CAP}, gpt-4o-mini, usage billed a token a character")
    print(
        f"{'scenario':<21} {'tasks':>5} {'budget':>7} {'spent':>9} {'over':>8} "
        f"{'succeeded':>9} {'budget_exc':>10} {'other':>5} {'largest call':>12} "
        f"{'within':>6} {'time':>7}"
    )
    for scenario, r in results:
        over = (r.recorded - scenario.budget) / scenario.budget * 100
        other = r.statuses.total() - r.statuses["succeeded"] - r.statuses["budget_exceeded"]
        within = r.recorded <= scenario.budget + r.largest
        print(
            f"{scenario.label:<21} {scenario.count:>5} {scenario.budget:>7.2f} "
            f"{r.recorded:>9.5f} {over:>+7.1f}% {r.statuses['succeeded']:>9} "
            f"{r.statuses['budget_exceeded']:>10} {other:>5} {r.largest:>12.6f} "
            f"{'yes' if within else 'NO':>6} {r.seconds:>5.1f} s"
        )
    print("over: recorded spend against the budget; within: spend <= budget + the largest call")


async def main() -> None:
    configure_logging(verbose=False)
    os.environ["FAULT_KEY"] = "k"
    results: list[tuple[Scenario, Spent]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for number, scenario in enumerate(SCENARIOS):
            server, url = start_server(scenario.faults)
            os.environ["OPENAI_BASE_URL"] = url
            print(f"{scenario.label}: started", file=sys.stderr)
            try:
                results.append((scenario, await measure(scenario, Path(tmp) / f"{number}.db")))
            finally:
                server.send_signal(signal.SIGTERM)
                server.wait()
    print_table(results)


if __name__ == "__main__":
    anyio.run(main)
