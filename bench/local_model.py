"""Tokens/s of the embedded provider against bare llama-cpp-python, same GGUF, same run.

Both sides load the same GGUF with the same context size and thread count and answer the
same chat prompt greedily (temperature 0, no repeat penalty), so they compute the same
tokens; each round runs bare ``create_chat_completion``, our ``generate`` and our ``stream``
back to back, and the ratio of medians is reported. Time is wall time of the whole call
(prompt processing included), as a user waits for it.

Run: ``.venv/bin/python bench/local_model.py [--rounds 5] [--max-tokens 128]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import llama_cpp

from llm_abstractions import LlmRequest
from llm_abstractions.providers.local import LocalLlm

PROMPT = "Write a detailed, step by step guide to baking bread at home."


def bare_call(llama: llama_cpp.Llama, max_tokens: int) -> tuple[int, float]:
    started = time.perf_counter()
    result: Any = llama.create_chat_completion(
        [{"role": "user", "content": PROMPT}],
        max_tokens=max_tokens,
        temperature=0.0,
        repeat_penalty=1.0,
    )
    return int(result["usage"]["completion_tokens"]), time.perf_counter() - started


async def ours_generate(llm: LocalLlm, request: LlmRequest) -> tuple[int, float]:
    started = time.perf_counter()
    response = await llm.generate(request)
    return response.usage.output_tokens or 0, time.perf_counter() - started


async def ours_stream(llm: LocalLlm, request: LlmRequest) -> tuple[int, float]:
    started = time.perf_counter()
    tokens = 0
    async for chunk in llm.stream(request):
        if chunk.done and chunk.response is not None:
            tokens = chunk.response.usage.output_tokens or 0
    return tokens, time.perf_counter() - started


async def main(rounds: int, max_tokens: int) -> None:
    llm = LocalLlm()
    bare = llama_cpp.Llama(
        model_path=str(llm.path), n_ctx=llm.n_ctx, n_threads=llm.n_threads, verbose=False
    )
    request = LlmRequest.build(PROMPT, max_tokens=max_tokens, temperature=0.0)
    ours: dict[str, Callable[[], Awaitable[tuple[int, float]]]] = {
        "orchestra generate": lambda: ours_generate(llm, request),
        "orchestra stream": lambda: ours_stream(llm, request),
    }
    speeds: dict[str, list[float]] = {"bare llama-cpp-python": [], **{k: [] for k in ours}}
    bare_call(bare, 8)  # warm both sides: model pages, prompt cache
    await ours_generate(llm, request)
    for _ in range(rounds):
        tokens, seconds = bare_call(bare, max_tokens)
        speeds["bare llama-cpp-python"].append(tokens / seconds)
        for label, call in ours.items():
            tokens, seconds = await call()
            speeds[label].append(tokens / seconds)
    base = statistics.median(speeds["bare llama-cpp-python"])
    print(f"model {llm.path.name}, n_ctx {llm.n_ctx}, threads {llm.n_threads}, ")
    print(f"{max_tokens} tokens per call, median of {rounds} interleaved rounds")
    print(f"{'caller':<24} {'tokens/s':>9} {'vs bare':>8}")
    for label, values in speeds.items():
        median = statistics.median(values)
        print(f"{label:<24} {median:>9.1f} {median / base:>8.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    anyio.run(main, args.rounds, args.max_tokens)
