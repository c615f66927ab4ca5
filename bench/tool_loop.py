"""The tool loop's own cost per turn, against the bare provider call it wraps.

A turn of the loop is one model call plus what the loop adds: reading the calls, checking
the arguments against the tool's schema, running the tool (a trivial async function here),
and growing the conversation by the assistant's calls and the results. Two providers:

- ``function``: the in-process test double (``FunctionLlm``, no latency), so the figure is
  the loop's own overhead in microseconds;
- ``openai``: the real ``openai`` SDK against the loopback OpenAI server (real HTTP), so the
  figure says how much a turn costs beyond the call a user would make anyway.

Each round times one loop of ``TURNS`` turns (the last answers without a call) and, as the
baseline, the same ``TURNS`` requests the loop sends (its conversation as it grows) sent
straight to the provider, which answers them alike; the ratio is taken round by round (the
machine's speed drifts during a run): per-turn loop time over per-call bare time, and their
difference, the loop's own work per turn. Reported: medians and ranges.

Run: ``.venv/bin/python bench/tool_loop.py [--rounds 15] [--turns 20]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the loopback server's package

from llm_abstractions import LlmRequest  # noqa: E402
from llm_abstractions.base import BaseLlm  # noqa: E402
from llm_abstractions.providers.openai import OpenAILlm  # noqa: E402
from llm_abstractions.testing import FunctionLlm  # noqa: E402
from llm_abstractions.types import LlmResponse, ToolCall  # noqa: E402
from orchestration.model.tools import Tool  # noqa: E402
from orchestration.runtime.tool_loop import tool_loop  # noqa: E402
from tests.fakes.openai_api import openai_app  # noqa: E402
from tests.fakes.server import LoopbackServer, Scripted  # noqa: E402


async def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first.
        b: The second.
    """
    return a + b


TOOL = Tool.of(add)
CALL = ToolCall(id="call_0", name="add", arguments='{"a": 2, "b": 40}')


def function_model(turns: int) -> FunctionLlm:
    """A double that asks for ``add`` until the conversation holds ``turns - 1`` results."""

    def answer(request: LlmRequest) -> LlmResponse | str:
        done = sum(1 for m in request.messages if m.role == "tool")
        if done < turns - 1:
            return LlmResponse(text="", provider="function", model="m", tool_calls=(CALL,))
        return "42"

    return FunctionLlm(answer)


async def timed(body: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await body()
    return time.perf_counter() - started


async def measure(
    llm: BaseLlm, turns: int, rounds: int, script: Callable[[], None] | None = None
) -> tuple[list[float], list[float]]:
    """Seconds per bare call and per loop turn, one of each per round.

    The bare calls are the very requests the loop sends (its conversation as it grows, the
    tools offered) sent straight to the provider, which answers them as it answers the loop:
    what is left is the loop's own work.
    """
    request = LlmRequest.build("Add 2 and 40.", tools=(TOOL.spec(),))
    tools = {TOOL.name: TOOL}
    sent: list[LlmRequest] = []

    async def recording(asked: LlmRequest) -> LlmResponse:
        sent.append(asked)
        return await llm.generate(asked)

    if script is not None:
        script()
    await tool_loop(recording, request, tools, turns)
    assert len(sent) == turns  # noqa: S101 - the loop made one call a turn
    bare, looped = [], []
    for _ in range(rounds):

        async def calls() -> None:
            for asked in sent:
                await llm.generate(asked)

        async def loop() -> None:
            await tool_loop(llm.generate, request, tools, turns)

        if script is not None:
            script()
        bare.append(await timed(calls) / turns)
        if script is not None:
            script()
        looped.append(await timed(loop) / turns)
    return bare, looped


def summary(name: str, bare: list[float], looped: list[float]) -> str:
    ratios = sorted(t / b for b, t in zip(bare, looped, strict=True))
    extra = sorted((t - b) * 1e6 for b, t in zip(bare, looped, strict=True))
    return (
        f"{name:8} bare call {statistics.median(bare) * 1e6:8.0f} us   loop turn "
        f"{statistics.median(looped) * 1e6:8.0f} us   per turn: ratio "
        f"{statistics.median(ratios):.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f}), "
        f"+{statistics.median(extra):.0f} us ({extra[0]:.0f}-{extra[-1]:.0f})"
    )


async def main(rounds: int, turns: int) -> None:
    bare, looped = await measure(function_model(turns), turns, rounds)
    print(summary("function", bare, looped))
    server = LoopbackServer(openai_app)
    try:

        def script() -> None:  # the answers of one loop: calls, then the answer
            server.reset()
            asking = [Scripted(text="", tool_calls=[("add", {"a": 2, "b": 40})])]
            server.script(*asking * (turns - 1), Scripted(text="42"))

        os.environ.setdefault("OPENAI_API_KEY", "sk-bench")
        async with OpenAILlm("gpt-4o-mini", base_url=f"{server.url}/v1") as llm:
            bare, looped = await measure(llm, turns, rounds, script)
        print(summary("openai", bare, looped))
    finally:
        server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--turns", type=int, default=20)
    args = parser.parse_args()
    anyio.run(main, args.rounds, args.turns)
