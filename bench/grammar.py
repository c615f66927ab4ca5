"""Tokens/s of the embedded provider under a grammar, against no grammar in the same run.

Three sides answer the same chat prompt through ``LocalLlm.generate`` with the same settings
(greedy, seed 0, the same ``max_tokens``, the provider's default thread count): no
constraint, a JSON schema (a guide: a title and a list of steps, converted by
llama-cpp-python), and the file-contract grammar of ``agents.grammar`` for one path. The
prompt asks for a long answer so that every side runs to ``max_tokens`` or near it; the
report gives the tokens a call each side produced, since a side that stops early spends a
larger share of its time outside decoding.

As in ``bench/local_model.py``, each side runs in a process of its own (llama.cpp's OpenMP
backend slows down when a second thread of a process calls it) and the rounds interleave
the sides. A process warms up with one call (which also compiles its grammar), then times
``--calls`` calls; the report gives the median over rounds and the ratio to no grammar.

Compile time is measured apart, on the llama thread: a fresh ``GrammarCache`` asked for each
grammar (JSON-schema conversion plus llama.cpp's parse), a cached one asked again, and
llama.cpp's own parse, which llama-cpp-python repeats inside every ``Llama.generate`` call.

Run: ``.venv/bin/python bench/grammar.py [--rounds 5] [--calls 3] [--max-tokens 128]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

PROMPT = "Write a detailed, step by step guide to baking bread at home."
GUIDE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "steps": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["title", "steps"],
}
PATHS = ("docs/bread.md",)
SIDES = ("no grammar", "JSON schema", "file contract")
COMPILE = "compile"
T = TypeVar("T")


def request_for(side: str, max_tokens: int) -> Any:
    from agents.grammar import file_contract_grammar
    from llm_abstractions import LlmRequest
    from llm_abstractions.types import OutputSchema

    params: dict[str, Any] = {"max_tokens": max_tokens, "temperature": 0.0, "seed": 0}
    if side == SIDES[1]:
        params["output_schema"] = OutputSchema(name="guide", json_schema=GUIDE_SCHEMA)
    elif side == SIDES[2]:
        params["grammar"] = file_contract_grammar(PATHS)
    return LlmRequest.build(PROMPT, **params)


def measure(side: str, calls: int, max_tokens: int) -> dict[str, float]:
    import anyio

    from llm_abstractions.providers.local import LocalLlm

    llm = LocalLlm()
    request = request_for(side, max_tokens)

    async def once() -> tuple[float, int]:
        started = time.perf_counter()
        tokens = (await llm.generate(request)).usage.output_tokens or 0
        return tokens / (time.perf_counter() - started), tokens

    async def run() -> list[tuple[float, int]]:
        return [await once() for _ in range(calls + 1)][1:]

    timed = anyio.run(run)
    return {
        "tokens_per_s": statistics.median(speed for speed, _ in timed),
        "tokens": statistics.mean(tokens for _, tokens in timed),
    }


def on_llama_thread(job: Callable[[], T]) -> T:
    from llm_abstractions.providers.llama_engine import LLAMA_THREAD

    done: Future[T] = Future()

    def wrapper() -> None:
        try:
            done.set_result(job())
        except BaseException as exc:  # handed to the caller
            done.set_exception(exc)

    LLAMA_THREAD.submit(wrapper)
    return done.result(timeout=600)


def measure_compile(repeats: int) -> dict[str, float]:
    """Median milliseconds: a cache miss per grammar, a hit, and llama.cpp's own parse."""
    import llama_cpp
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    from agents.grammar import file_contract_grammar
    from llm_abstractions.providers.llama_engine import GrammarCache, get_engine
    from llm_abstractions.providers.local import LocalLlm

    llm = LocalLlm()
    engine = on_llama_thread(lambda: get_engine(llm.path, llm.n_ctx, llm.n_threads))
    vocab = engine.llama._model.vocab
    schema = json.dumps(GUIDE_SCHEMA)
    schema_gbnf: str = json_schema_to_gbnf(schema)
    contract = file_contract_grammar(PATHS)
    warm = GrammarCache(vocab)
    on_llama_thread(lambda: warm.get("schema", schema))

    def median_ms(action: Callable[[], object]) -> float:
        def timed() -> float:
            started = time.perf_counter()
            action()
            return (time.perf_counter() - started) * 1000

        return statistics.median(on_llama_thread(timed) for _ in range(repeats))

    def parse_only(text: str) -> None:
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, text.encode(), b"root")
        llama_cpp.llama_sampler_free(sampler)

    return {
        "JSON schema: convert and parse (cache miss)": median_ms(
            lambda: GrammarCache(vocab).get("schema", schema)
        ),
        "file contract: build the text": median_ms(lambda: file_contract_grammar(PATHS)),
        "file contract: parse (cache miss)": median_ms(
            lambda: GrammarCache(vocab).get("gbnf", contract)
        ),
        "cache hit": median_ms(lambda: warm.get("schema", schema)),
        "llama.cpp's parse in every generate, JSON schema": median_ms(
            lambda: parse_only(schema_gbnf)
        ),
        "llama.cpp's parse in every generate, file contract": median_ms(
            lambda: parse_only(contract)
        ),
    }


def child(side: str, calls: int, max_tokens: int) -> None:
    result = measure_compile(calls * 20) if side == COMPILE else measure(side, calls, max_tokens)
    print(json.dumps(result))


def run_child(side: str, calls: int, max_tokens: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--side", side, "--calls", str(calls)]
    command += ["--max-tokens", str(max_tokens)]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--side", choices=(*SIDES, COMPILE), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        child(args.side, args.calls, args.max_tokens)
        return
    speeds: dict[str, list[float]] = {side: [] for side in SIDES}
    tokens: dict[str, list[float]] = {side: [] for side in SIDES}
    for _ in range(args.rounds):
        for side in SIDES:
            result = run_child(side, args.calls, args.max_tokens)
            speeds[side].append(result["tokens_per_s"])
            tokens[side].append(result["tokens"])
    compile_ms = run_child(COMPILE, args.calls, args.max_tokens)
    base = statistics.median(speeds[SIDES[0]])
    print(f"{args.max_tokens} max tokens a call, greedy; median over {args.rounds} interleaved")
    print(f"rounds of the median of {args.calls} warm calls per process")
    print(f"{'constraint':<16} {'tokens/s':>9} {'vs none':>8} {'tokens':>7}  (min-max tokens/s)")
    for side in SIDES:
        median = statistics.median(speeds[side])
        spread = f"{min(speeds[side]):.0f}-{max(speeds[side]):.0f}"
        produced = statistics.mean(tokens[side])
        print(f"{side:<16} {median:>9.1f} {median / base:>8.2f} {produced:>7.0f}  ({spread})")
    print("grammar compile, median ms:")
    for what, ms in compile_ms.items():
        print(f"  {what:<50} {ms:8.3f}")


if __name__ == "__main__":
    main()
