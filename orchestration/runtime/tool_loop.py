"""The tool loop of one attempt: ask, run the tools the model asks for, ask again.

Each turn is one model call. When the answer asks for tools, they run (concurrently when it
asks for several, each under its own timeout), the assistant's calls and every result join
the conversation, and the model is asked again; an answer without tool calls ends the loop.
A call the tools cannot serve (an unknown tool, arguments that are not JSON or not what the
schema asks for, a function that raises or does not answer in time) becomes an error result
the model reads (``is_error``), so it can correct itself: it never crashes the task. A model
still calling tools at its ``max_turns``-th call fails the attempt (``MaxTurnsExceeded``),
those last calls not run, with the tokens it spent counted.

Every call is reported as it ends (``ToolCallRecord``), for the ledger's ``tool_calls``.
Tokens add up over the turns: each turn is billed, its input included.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from time import perf_counter

import anyio

from llm_abstractions.errors import OrchestraError
from llm_abstractions.types import LlmRequest, LlmResponse, Message, ToolCall, Usage
from orchestration.model.tools import Tool, ToolArgumentsError, ToolCallRecord, replay_key

__all__ = [
    "MAX_RESULT_CHARS",
    "MaxTurnsExceeded",
    "Replays",
    "ToolCallRecord",
    "Turns",
    "add_usage",
    "tool_loop",
]

# Results a task's earlier attempts got, by (tool, arguments): what a later attempt replays.
Replays = dict[tuple[str, str], deque[str]]

MAX_RESULT_CHARS = 50_000  # of one result, as the model reads it (the ledger keeps as much)


class MaxTurnsExceeded(OrchestraError):
    """The model was still calling tools when the attempt's turns ran out."""


@dataclass
class Turns:
    """How far a loop got: turns answered and their usage (what a failure still cost)."""

    answered: int = 0
    usage: Usage = field(default_factory=Usage)


def add_usage(total: Usage, more: Usage) -> Usage:
    """Two turns' usage together; a count is unknown only when neither turn reported it."""
    fields = {}
    for name in Usage.model_fields:
        values = [v for v in (getattr(total, name), getattr(more, name)) if v is not None]
        fields[name] = sum(values) if values else None
    return Usage(**fields)


async def tool_loop(
    ask: Callable[[LlmRequest], Awaitable[LlmResponse]],
    request: LlmRequest,
    tools: Mapping[str, Tool],
    max_turns: int,
    on_call: Callable[[ToolCallRecord], None] | None = None,
    turns: Turns | None = None,
    replays: Replays | None = None,
) -> LlmResponse:
    """Ask until an answer calls no tool; that answer, with the usage of every turn.

    ``turns``, when given, follows the loop as it goes: a caller whose loop failed or was
    stopped reads there what the turns made so far cost. ``replays`` holds the results
    the task's earlier attempts got (in this run, or recorded before a resume): a call of a
    tool that is not idempotent, with the same arguments, gets such a result back instead
    of running the tool again.

    Raises:
        MaxTurnsExceeded: ``max_turns`` answers all called tools.
        OrchestraError: A model call failed (as ``ask`` raises it).
    """
    made = turns if turns is not None else Turns()
    for turn in range(1, max_turns + 1):
        response = await ask(request)
        made.answered, made.usage = turn, add_usage(made.usage, response.usage)
        if not response.tool_calls:
            return response.model_copy(
                update={"usage": made.usage, "metadata": {**response.metadata, "turns": turn}}
            )
        if turn == max_turns:  # its calls would run for results nobody reads
            break
        if request.tool_choice == "required":  # the first turn had to call; now it may answer
            request = request.model_copy(update={"tool_choice": "auto"})
        results = await _run_calls(response.tool_calls, tools, turn, on_call, replays)
        request = request.model_copy(
            update={
                "messages": (
                    *request.messages,
                    Message(
                        role="assistant", content=response.text, tool_calls=response.tool_calls
                    ),
                    *results,
                )
            }
        )
    raise MaxTurnsExceeded(
        f"the model was still calling tools after max_turns={max_turns} model calls; raise "
        "max_turns (on the agent or the task), or tell it in the prompt when to answer"
    )


async def _run_calls(
    calls: tuple[ToolCall, ...],
    tools: Mapping[str, Tool],
    turn: int,
    on_call: Callable[[ToolCallRecord], None] | None,
    replays: Replays | None,
) -> list[Message]:
    """Run one turn's calls concurrently; their results as tool messages, in call order."""
    results: list[Message | None] = [None] * len(calls)

    async def run(index: int, call: ToolCall) -> None:
        started, clock = time.time(), perf_counter()
        recorded = _replayed(call, tools, replays)
        result: str | None
        error: str | None
        if recorded is not None:
            result, error = recorded, None
        else:
            result, error = await _call(call, tools)
        record = ToolCallRecord(
            turn,
            call.id,
            call.name,
            call.arguments,
            result,
            error,
            started,
            perf_counter() - clock,
            replayed=recorded is not None,
        )
        if on_call is not None:
            on_call(record)
        text = result if error is None else f"error: {error}"
        results[index] = Message(
            role="tool",
            content=_bounded(text or ""),
            tool_call_id=call.id,
            name=call.name,
            is_error=error is not None,
        )

    async with anyio.create_task_group() as group:
        for index, call in enumerate(calls):
            group.start_soon(run, index, call)
    return [message for message in results if message is not None]


def _replayed(call: ToolCall, tools: Mapping[str, Tool], replays: Replays | None) -> str | None:
    """The recorded result of this very call, for a tool that must not run twice."""
    tool = tools.get(call.name)
    if replays is None or tool is None or tool.idempotent:
        return None
    waiting = replays.get(replay_key(call.name, call.arguments))
    return waiting.popleft() if waiting else None


async def _call(call: ToolCall, tools: Mapping[str, Tool]) -> tuple[str | None, str | None]:
    """The tool's result, or what went wrong (said so the model can act on it)."""
    tool = tools.get(call.name)
    if tool is None:
        return None, f"there is no tool {call.name!r}; the tools are {', '.join(sorted(tools))}"
    try:
        arguments = tool.arguments(call.arguments)
    except ToolArgumentsError as exc:
        return None, f"{exc}; the parameters' schema is {tool.parameters}"
    try:
        with anyio.move_on_after(tool.timeout_s) as waited:
            return await tool.call(arguments), None
    except Exception as exc:  # the tool's own failure (its own TimeoutError too)
        return None, f"{call.name} raised {type(exc).__name__}: {exc}"
    assert waited.cancelled_caught  # noqa: S101 - out of move_on_after only by its timeout
    # A sync tool's thread cannot be stopped: it may still finish what it was doing.
    return None, f"{call.name} did not answer within {tool.timeout_s:g} s (it may still complete)"


def _bounded(text: str) -> str:
    if len(text) <= MAX_RESULT_CHARS:
        return text
    rest = len(text) - MAX_RESULT_CHARS
    return f"{text[:MAX_RESULT_CHARS]}\n[cut: {rest} more characters]"
