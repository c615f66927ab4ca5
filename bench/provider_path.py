"""Calls per second through each layer of the OpenAI path, against a loopback server.

A minimal OpenAI-compatible server runs in a child process (so that it does not share this
process's GIL) and answers every chat completion after 0 or 20 ms. In the same run, 2000
calls at concurrency 64 go through: raw aiohttp, the openai SDK with its default transport,
the openai SDK over aiohttp, our ``OpenAILlm``, and our ``TaskExecutor`` with the ledger on
(one task per call). Concurrency is 64 long-lived workers in every case.

It also times one call through the script fallback (a ``python -I scripts/llm_call.py``
subprocess) against one direct call on a warm client.

Run: ``.venv/bin/python bench/provider_path.py [--calls 2000] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

CONCURRENCY = 64
ANSWER = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 0,
    "model": "gpt-4o-mini",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}


def serve(port: int, latency: float) -> None:
    """The loopback server (run in the child process)."""
    from aiohttp import web

    body = json.dumps(ANSWER).encode()

    async def completions(request: web.Request) -> web.Response:
        await request.read()
        if latency:
            await asyncio.sleep(latency)
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def pool(calls: int, one: Callable[[], Awaitable[object]]) -> float:
    """Seconds for ``calls`` calls of ``one`` by CONCURRENCY workers."""
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one()

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(CONCURRENCY):
            tg.start_soon(worker)
    return time.perf_counter() - started


async def raw_aiohttp(url: str, calls: int) -> float:
    import aiohttp

    payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> object:
            async with session.post(f"{url}/chat/completions", json=payload) as response:
                return await response.json()

        return await pool(calls, one)


async def openai_sdk(url: str, calls: int, over_aiohttp: bool) -> float:
    from openai import AsyncOpenAI, DefaultAioHttpClient

    extra = {"http_client": DefaultAioHttpClient()} if over_aiohttp else {}
    client = AsyncOpenAI(api_key="k", base_url=url, max_retries=0, **extra)  # type: ignore[arg-type]
    messages = [{"role": "user", "content": "hi"}]
    try:
        return await pool(
            calls,
            lambda: client.chat.completions.create(model="gpt-4o-mini", messages=messages),  # type: ignore[arg-type]
        )
    finally:
        await client.close()


async def our_provider(url: str, calls: int) -> float:
    from llm_abstractions import LlmRequest
    from llm_abstractions.providers.openai import OpenAILlm

    request = LlmRequest.build("hi")
    async with OpenAILlm("gpt-4o-mini", api_key="k", base_url=url) as llm:
        return await pool(calls, lambda: llm.generate(request))


async def our_executor(url: str, calls: int, workdir: Path) -> float:
    from orchestration import AgentRegistry, AgentTask, TaskExecutor
    from orchestration.ledger import Ledger

    os.environ["OPENAI_BASE_URL"] = url
    registry = AgentRegistry()
    registry.register_agent("gpt", "openai-gpt", model="gpt-4o-mini", api_key="k")
    tasks = [AgentTask(task_id=f"t{i}", description="hi", agent="gpt") for i in range(calls)]
    ledger = Ledger(f"sqlite:///{workdir / f'{time.monotonic_ns()}.db'}")
    try:
        async with TaskExecutor(registry, max_concurrency=CONCURRENCY, ledger=ledger) as executor:
            started = time.perf_counter()
            run = await executor.run(tasks)
            elapsed = time.perf_counter() - started
    finally:
        ledger.close()
    if not run.ok:
        raise RuntimeError(f"benchmark run failed: {run.status}")
    return elapsed


async def fallback_versus_direct(url: str, repeat: int) -> tuple[float, float]:
    """Median seconds of one call: direct on a warm client, and through the script."""
    from llm_abstractions import LlmRequest
    from llm_abstractions.providers.openai import OpenAILlm
    from orchestration import AgentRegistry, AgentTask
    from orchestration.runtime.attempts import script_attempt

    os.environ["OPENAI_BASE_URL"] = url
    registry = AgentRegistry()
    registry.register_agent("gpt", "openai-gpt", model="gpt-4o-mini", api_key="k")
    agent, task = registry.get("gpt"), AgentTask(task_id="t", description="hi")
    request = LlmRequest.build("hi")
    direct, script = [], []
    async with OpenAILlm("gpt-4o-mini", api_key="k", base_url=url) as llm:
        await llm.generate(request)  # warm
        for _ in range(repeat):
            started = time.perf_counter()
            await llm.generate(request)
            direct.append(time.perf_counter() - started)
            started = time.perf_counter()
            result = await script_attempt(task, agent, request)
            script.append(time.perf_counter() - started)
            if not result.succeeded:
                raise RuntimeError(f"script fallback failed: {result.error}")
    return statistics.median(direct), statistics.median(script)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_server(latency: float) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    child = subprocess.Popen(  # noqa: S603 - this file, our interpreter
        [sys.executable, __file__, "--serve", str(port), "--latency", str(latency)]
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return child, f"http://127.0.0.1:{port}/v1"
        except OSError:
            if time.monotonic() > deadline:
                child.kill()
                raise
            time.sleep(0.1)


async def main(calls: int, repeat: int) -> None:
    from orchestration.logs import configure_logging

    configure_logging(verbose=False)
    modes: dict[str, Callable[[str, Path], Awaitable[float]]] = {
        "raw aiohttp": lambda url, _: raw_aiohttp(url, calls),
        "openai SDK, default transport": lambda url, _: openai_sdk(url, calls, False),
        "openai SDK over aiohttp": lambda url, _: openai_sdk(url, calls, True),
        "OpenAILlm (ours)": lambda url, _: our_provider(url, calls),
        "TaskExecutor, ledger on": lambda url, workdir: our_executor(url, calls, workdir),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for latency in (0.0, 0.02):
            child, url = _start_server(latency)
            try:
                samples: dict[str, list[float]] = {mode: [] for mode in modes}
                for _ in range(repeat):
                    for mode, run in modes.items():  # interleaved: noise hits all alike
                        samples[mode].append(calls / await run(url, Path(tmp)))
                print(f"\nlatency {latency * 1000:.0f} ms, {calls} calls, concurrency 64")
                print(f"(median of {repeat}; in brackets the ratio to the openai SDK over aiohttp)")
                base = statistics.median(samples["openai SDK over aiohttp"])
                for mode in modes:
                    value = statistics.median(samples[mode])
                    print(f"  {mode:<32} {value:>8.0f} calls/s ({value / base:.2f})")
                if latency == 0.0:
                    direct, script = await fallback_versus_direct(url, 5)
                    print(
                        f"  one call: direct {direct * 1000:.1f} ms, through the script "
                        f"fallback {script * 1000:.1f} ms (+{(script - direct) * 1000:.0f} ms)"
                    )
            finally:
                child.terminate()
                child.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--latency", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.latency)
    else:
        anyio.run(main, args.calls, args.repeat)
