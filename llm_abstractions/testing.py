"""Test doubles: a scripted model and a function-backed model.

They are for tests and examples only. Neither is registered with ``LlmFactory``; a test that
wants one by name registers it itself::

    llm = ScriptedLlm(["first answer", LLMRateLimitError("slow down", retry_after=1.0)])
    LlmFactory.register_provider("scripted", lambda **_: llm)

Token counts are whitespace word counts, so tests can assert exact numbers.
"""

from __future__ import annotations

import inspect
import re
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from time import perf_counter
from typing import ClassVar

import anyio

from llm_abstractions.base import BaseLlm
from llm_abstractions.types import LlmRequest, LlmResponse, StreamChunk, Usage

__all__ = ["FunctionLlm", "ScriptExhaustedError", "ScriptedLlm", "word_usage"]

Scripted = str | LlmResponse | BaseException
Handler = Callable[[LlmRequest], "str | LlmResponse | Awaitable[str | LlmResponse]"]


class ScriptExhaustedError(AssertionError):
    """The scripted model was called more times than it has answers for."""


def word_usage(request: LlmRequest, text: str) -> Usage:
    """Usage counted in whitespace-separated words (deterministic, for assertions)."""
    return Usage(input_tokens=len(request.prompt_text().split()), output_tokens=len(text.split()))


class _DoubleLlm(BaseLlm):
    """Shared plumbing: call recording, latency, response building, word-chunk streaming."""

    provider: ClassVar[str] = "test"
    default_model: ClassVar[str | None] = "test-model"
    can_stream: ClassVar[bool] = True
    is_local: ClassVar[bool] = True
    # They answer what they are told to, so any request suits them; tests check what was asked.
    supports_output_schema: ClassVar[bool] = True
    supports_grammar: ClassVar[bool] = True
    supports_tools: ClassVar[bool] = True  # an LlmResponse with tool_calls asks for tools

    def __init__(self, *, model: str | None = None, latency: float = 0.0) -> None:
        super().__init__(model)
        self.latency = latency
        self.calls: list[LlmRequest] = []
        self.closed = False

    async def _answer(self, request: LlmRequest) -> str | LlmResponse:
        raise NotImplementedError

    async def generate(self, request: LlmRequest) -> LlmResponse:
        """Record the request, wait ``latency`` seconds, then answer from the script."""
        self.calls.append(request)
        started = perf_counter()
        if self.latency:
            await anyio.sleep(self.latency)
        answer = await self._answer(request)
        if isinstance(answer, LlmResponse):
            return answer
        return LlmResponse(
            text=answer,
            provider=self.provider,
            model=request.model or self.model,
            finish_reason="stop",
            usage=word_usage(request, answer),
            latency_s=perf_counter() - started,
        )

    async def stream(self, request: LlmRequest) -> AsyncIterator[StreamChunk]:
        """Yield the scripted answer word by word (a token each), then the full response."""
        response = await self.generate(request)
        for piece in re.findall(r"\s*\S+|\s+$", response.text):
            yield StreamChunk(delta=piece, tokens=1 if piece.strip() else 0)
        yield StreamChunk(done=True, response=response)

    async def aclose(self) -> None:
        """Remember that the double was closed, so tests can assert it."""
        self.closed = True


class ScriptedLlm(_DoubleLlm):
    """Answers from a queue: strings, full responses, or exceptions to raise.

    Attributes:
        calls: Every request received, in order.
        remaining: How many scripted answers are left.
    """

    provider: ClassVar[str] = "scripted"
    default_model: ClassVar[str | None] = "scripted-model"

    def __init__(
        self,
        script: Iterable[Scripted],
        *,
        model: str | None = None,
        latency: float = 0.0,
        repeat_last: bool = False,
    ) -> None:
        """Create the double.

        Args:
            script: Answers in order; an exception instance is raised instead of answered.
            model: Model name reported in responses.
            latency: Seconds each call waits before answering (an anyio sleep).
            repeat_last: Keep answering with the last item once the queue is down to one.
        """
        super().__init__(model=model, latency=latency)
        self._script: deque[Scripted] = deque(script)
        self._repeat_last = repeat_last

    @property
    def remaining(self) -> int:
        """Scripted answers not yet used."""
        return len(self._script)

    async def _answer(self, request: LlmRequest) -> str | LlmResponse:
        if not self._script:
            raise ScriptExhaustedError(
                f"ScriptedLlm got call {len(self.calls)} but its script is empty"
            )
        item = self._script[0] if self._repeat_last and len(self._script) == 1 else None
        item = item if item is not None else self._script.popleft()
        if isinstance(item, BaseException):
            raise item
        return item


class FunctionLlm(_DoubleLlm):
    """Answers by calling a function (sync or async) with the request."""

    provider: ClassVar[str] = "function"
    default_model: ClassVar[str | None] = "function-model"

    def __init__(self, handler: Handler, *, model: str | None = None, latency: float = 0.0):
        """Create the double.

        Args:
            handler: Called with each ``LlmRequest``; returns text or an ``LlmResponse``
                (or an awaitable of either), or raises.
            model: Model name reported in responses.
            latency: Seconds each call waits before answering.
        """
        super().__init__(model=model, latency=latency)
        self._handler = handler

    async def _answer(self, request: LlmRequest) -> str | LlmResponse:
        result = self._handler(request)
        if inspect.isawaitable(result):
            return await result
        return result
