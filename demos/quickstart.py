"""Ask the default provider one question and stream the answer with its numbers.

Run it with ``make demo`` (or ``python demos/quickstart.py --help``). With no API key and
no local server it answers on the embedded SmolLM2 model, so it works on a fresh machine.
"""

from __future__ import annotations

import argparse
import sys
from time import perf_counter

import anyio

from llm_abstractions import ConfigurationError, LLMError, LlmFactory, LlmRequest, LlmResponse

QUESTION = (
    "In three sentences: what is a directed acyclic graph, and why do task schedulers use one?"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default=QUESTION)
    parser.add_argument("--provider", help="provider name (default: picked automatically)")
    parser.add_argument("--model", help="model name or, for 'local', a .gguf path")
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args(argv)


async def ask(args: argparse.Namespace) -> LlmResponse:
    choice = LlmFactory.resolve_default(args.provider, args.model)
    print(f"provider: {choice.name} ({choice.reason})")
    for note in choice.skipped:
        print(f"  passed over {note}")
    request = LlmRequest.build(
        args.question,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        seed=args.seed,
    )
    print(f"question: {args.question}\n")
    async with LlmFactory.get_provider(choice.name, model=choice.model) as llm:
        started = perf_counter()
        first_token_at: float | None = None
        response: LlmResponse | None = None
        async for chunk in llm.stream(request):
            if chunk.done:
                response = chunk.response
                continue
            first_token_at = first_token_at or perf_counter()
            print(chunk.delta, end="", flush=True)
        finished = perf_counter()
    if response is None:
        raise LLMError("the stream ended without a final response", provider=choice.name)
    print_stats(response, started, first_token_at or finished, finished)
    return response


def print_stats(response: LlmResponse, started: float, first: float, finished: float) -> None:
    usage = response.usage
    out = usage.output_tokens
    decode_s = finished - first
    # The first token's time is prompt processing; speed is measured over the rest.
    speed = (out - 1) / decode_s if out and out > 1 and decode_s > 0 else None
    print("\n")
    print(f"model:          {response.model}")
    print(f"finish reason:  {response.finish_reason}")
    print(f"input tokens:   {usage.input_tokens}")
    print(f"output tokens:  {out}")
    print(f"speed:          {f'{speed:.1f} tokens/s' if speed else 'n/a'}")
    print(f"first token:    {first - started:.2f} s")
    print(f"latency:        {finished - started:.2f} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        anyio.run(ask, args)
    except ConfigurationError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    except LLMError as exc:
        print(f"\nthe provider failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
