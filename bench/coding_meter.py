"""What the meter between a coding CLI and its API costs a request.

A coding CLI's requests go through ``orchestration.runtime.coding.meter.Meter``, a loopback
proxy that reads each answer's usage as it passes. This sends the same requests to the
Anthropic fake (``tests/fakes/anthropic_api.py``) directly and through a meter, with the
official SDK, one at a time as a CLI does: plain answers, and streamed answers of 200
words (201 server-sent events). The fake answers after ``--latency`` seconds, as a model
takes time to answer. Rounds alternate direct and metered so noise falls on both.

Reported per shape: median seconds a request direct and metered, the ratio, and the time
the meter adds to each request.

Run: ``.venv/bin/python bench/coding_meter.py [--requests 200] [--rounds 5] [--latency 0.02]``
(``--through direct`` or ``meter``: one way only, to time whole processes from outside).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import anthropic
import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llm_abstractions.types import Usage  # noqa: E402
from orchestration.runtime.coding.meter import Meter  # noqa: E402
from tests.fakes.anthropic_api import anthropic_app  # noqa: E402
from tests.fakes.server import LoopbackServer, Scripted  # noqa: E402

WORDS = " ".join(f"w{i}" for i in range(200))


def _free(model: str | None, usage: Usage) -> float | None:
    return 0.0


async def _requests(url: str, count: int, stream: bool) -> float:
    """Seconds a request, ``count`` sent one after another to ``url``."""
    client = anthropic.AsyncAnthropic(api_key="sk-bench", base_url=url, max_retries=0)
    model = "claude-sonnet-4-6"
    said: list[anthropic.types.MessageParam] = [{"role": "user", "content": "hi"}]
    started = time.perf_counter()
    for _ in range(count):
        if stream:
            async with client.messages.stream(model=model, max_tokens=400, messages=said) as events:
                await events.get_final_text()
        else:
            await client.messages.create(model=model, max_tokens=400, messages=said)
    elapsed = time.perf_counter() - started
    await client.close()
    return elapsed / count


async def _measure(server: LoopbackServer, count: int, stream: bool, metered: bool) -> float:
    server.script(*[Scripted(text=WORDS, delay=ARGS.latency)] * count)
    if not metered:
        return await _requests(server.url, count, stream)
    async with Meter(server.url, _free) as meter:
        took = await _requests(meter.url, count, stream)
    assert meter.answers == count, meter.answers  # noqa: S101 - every answer was read
    return took


def main() -> None:
    server = LoopbackServer(anthropic_app)
    if ARGS.through != "both":  # one way only, for a timer of whole processes
        for stream in (False, True):
            anyio.run(_measure, server, ARGS.requests, stream, ARGS.through == "meter")
        server.close()
        return
    print(f"{ARGS.requests} requests a round, {ARGS.rounds} rounds, latency {ARGS.latency}s")
    print(f"{'shape':<10}{'direct ms':>12}{'metered ms':>12}{'ratio':>8}{'added ms':>10}")
    for stream in (False, True):
        direct, metered = [], []
        for _ in range(ARGS.rounds):
            direct.append(anyio.run(_measure, server, ARGS.requests, stream, False))
            metered.append(anyio.run(_measure, server, ARGS.requests, stream, True))
        a, b = statistics.median(direct), statistics.median(metered)
        shape = "streamed" if stream else "plain"
        print(f"{shape:<10}{a * 1e3:>12.2f}{b * 1e3:>12.2f}{b / a:>8.3f}{(b - a) * 1e3:>10.2f}")
    server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument(
        "--through",
        choices=("both", "direct", "meter"),
        default="both",
        help="both, paired round by round (the default), or one way only",
    )
    ARGS = parser.parse_args()
    main()
