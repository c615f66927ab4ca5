"""Tokens/s of the embedded provider against bare llama-cpp-python, same GGUF, same run.

Both sides load the same GGUF with the same context size and thread count and answer the
same chat prompt greedily (temperature 0, no repeat penalty), so they compute the same
tokens. Time is the wall time of the whole call (prompt processing included), as a user
waits for it.

Each side runs in a process of its own, and the rounds interleave them (bare, generate,
stream, bare, ...): llama.cpp's OpenMP backend slows down badly when a second thread of
the same process starts calling it, so two sides sharing a process would measure that
interference instead of themselves. Each process warms up with one call, then times
``--calls`` calls; the report gives the median over rounds and the ratio to bare.

Run: ``.venv/bin/python bench/local_model.py [--rounds 5] [--calls 3] [--max-tokens 128]``
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from typing import Any

PROMPT = "Write a detailed, step by step guide to baking bread at home."
SIDES = ("bare llama-cpp-python", "orchestra generate", "orchestra stream")


def measure_bare(calls: int, max_tokens: int) -> list[float]:
    import llama_cpp

    from llm_abstractions.providers.local import LocalLlm

    settings = LocalLlm()  # same file, context size and threads as ours
    llama = llama_cpp.Llama(
        model_path=str(settings.path),
        n_ctx=settings.n_ctx,
        n_threads=settings.n_threads,
        verbose=False,
    )
    speeds = []
    for _ in range(calls + 1):
        started = time.perf_counter()
        result: Any = llama.create_chat_completion(
            [{"role": "user", "content": PROMPT}],
            max_tokens=max_tokens,
            temperature=0.0,
            repeat_penalty=1.0,
        )
        speeds.append(result["usage"]["completion_tokens"] / (time.perf_counter() - started))
    return speeds[1:]


def measure_ours(calls: int, max_tokens: int, stream: bool) -> list[float]:
    import anyio

    from llm_abstractions import LlmRequest
    from llm_abstractions.providers.local import LocalLlm

    llm = LocalLlm()
    request = LlmRequest.build(PROMPT, max_tokens=max_tokens, temperature=0.0)

    async def once() -> float:
        started = time.perf_counter()
        tokens = 0
        if stream:
            async for chunk in llm.stream(request):
                if chunk.response is not None:
                    tokens = chunk.response.usage.output_tokens or 0
        else:
            tokens = (await llm.generate(request)).usage.output_tokens or 0
        return tokens / (time.perf_counter() - started)

    async def run() -> list[float]:
        return [await once() for _ in range(calls + 1)][1:]

    return anyio.run(run)


def child(side: str, calls: int, max_tokens: int) -> None:
    if side == SIDES[0]:
        speeds = measure_bare(calls, max_tokens)
    else:
        speeds = measure_ours(calls, max_tokens, stream=side == SIDES[2])
    print(statistics.median(speeds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        child(args.side, args.calls, args.max_tokens)
        return
    results: dict[str, list[float]] = {side: [] for side in SIDES}
    for _ in range(args.rounds):
        for side in SIDES:
            command = [sys.executable, __file__, "--side", side, "--calls", str(args.calls)]
            command += ["--max-tokens", str(args.max_tokens)]
            out = subprocess.run(command, check=True, capture_output=True, text=True)
            results[side].append(float(out.stdout.strip().splitlines()[-1]))
    base = statistics.median(results[SIDES[0]])
    print(f"{args.max_tokens} tokens a call; median over {args.rounds} interleaved rounds")
    print(f"of the median of {args.calls} warm calls per process")
    print(f"{'caller':<24} {'tokens/s':>9} {'vs bare':>8}  (min-max tokens/s)")
    for side, values in results.items():
        median = statistics.median(values)
        spread = f"{min(values):.0f}-{max(values):.0f}"
        print(f"{side:<24} {median:>9.1f} {median / base:>8.2f}  ({spread})")


if __name__ == "__main__":
    main()
