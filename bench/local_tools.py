"""A two-tool task on the embedded coder model, seed by seed: does it call both, and answer?

The task: add two numbers with ``add``, look a city's population up with ``population``,
and answer with both results. A seed passes when both tools were called with the right
arguments and the final answer holds both numbers (the sum, and the population with or
without thousands separators). The model is Qwen2.5-Coder-1.5B-Instruct (``orchestra models
pull qwen2.5-coder-1.5b``), decoding under the tool-call grammar, its first turn required to
call a tool (``tool_choice="required"``; ``--auto`` leaves it to the model), at temperature
0.2; one llama.cpp thread.

Run: ``ORCHESTRA_LOCAL_THREADS=1 .venv/bin/python bench/local_tools.py [--seeds 1 2 3 4 5]``
"""

from __future__ import annotations

import argparse
import re
import time

import anyio

from orchestration import AgentRegistry, AgentTask, RetryPolicy, TaskExecutor

MODEL = "qwen2.5-coder-1.5b"
CHOICE = "required"  # --auto: the model decides from its first turn
PROMPT = (
    "Use the tools: add 17 and 25 with the add tool, and look up the population of Lyon with "
    "the population tool. Then answer in one sentence with the sum and the population."
)


async def one(seed: int) -> tuple[bool, str]:
    calls: list[tuple[object, ...]] = []

    def add(a: int, b: int) -> int:
        """Add two integers.

        Args:
            a: The first integer.
            b: The second integer.
        """
        calls.append(("add", a, b))
        return a + b

    def population(city: str) -> int:
        """How many people live in a city.

        Args:
            city: The city's English name.
        """
        calls.append(("population", city.lower()))
        return {"lyon": 522250, "paris": 2102650}.get(city.lower(), 0)

    registry = AgentRegistry()
    registry.register_agent(
        "assistant",
        "local",
        model=MODEL,
        tools=[add, population],
        max_tokens=200,
        temperature=0.2,
        seed=seed,
        max_turns=4,
    )
    task = AgentTask(
        task_id="two-tools",
        agent="assistant",
        description=PROMPT,
        metadata={"tool_choice": CHOICE},
    )
    started = time.perf_counter()
    async with TaskExecutor(registry, retry=RetryPolicy.never(), record=False) as executor:
        result = await executor.execute(task)
    answer = re.sub(r"(?<=\d)[,\s](?=\d{3})", "", result.output or "")
    passed = (
        result.succeeded
        and ("add", 17, 25) in calls
        and ("population", "lyon") in calls
        and "42" in answer
        and "522250" in answer
    )
    said = (
        f"seed {seed}: {'pass' if passed else 'FAIL'} in {time.perf_counter() - started:.0f} s, "
        f"{result.metadata.get('turns')} turns, calls {calls}, answer {result.output!r}"
    )
    return passed, said if result.succeeded else f"{said}, error {result.error}"


async def main(seeds: list[int]) -> None:
    passed = 0
    for seed in seeds:
        ok, said = await one(seed)
        passed += ok
        print(said, flush=True)
    print(f"{passed} of {len(seeds)} seeds passed")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--auto", action="store_true", help="tool_choice auto, not required")
    args = parser.parse_args()
    if args.auto:
        CHOICE = "auto"
    anyio.run(main, args.seeds)
