"""The provider interface every LLM backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from time import perf_counter
from types import TracebackType
from typing import Any, ClassVar, Self

from llm_abstractions.errors import OrchestraError
from llm_abstractions.types import HealthStatus, LlmRequest, LlmResponse, MessagesInput, StreamChunk

__all__ = ["BaseLlm"]


class BaseLlm(ABC):
    """An LLM provider: one abstract ``generate``, everything else optional.

    Subclasses set the class attributes that describe them and implement ``generate``.
    Streaming is an optional ability: providers that can stream set ``can_stream`` and
    override ``stream``. A provider whose answer comes whole but whose work can be followed
    (a coding CLI: each of its model's answers as it passes) sets ``reports_progress`` and
    overrides ``generate_reporting``. Providers own their clients and release them in
    ``aclose``; use them as async context managers to make that automatic.

    Attributes:
        provider: The provider's registered name (``"local"``, ``"anthropic-claude"``...).
        default_model: Model used when none is given.
        can_stream: Whether ``stream`` is implemented.
        reports_progress: Whether ``generate_reporting`` reports tokens as they are made.
        is_local: Whether calls run on this machine (and so cost nothing).
        supports_output_schema: Whether it sends ``LlmRequest.output_schema`` as the
            provider's own structured output (a provider without it must not be given one).
        supports_grammar: Whether it can constrain decoding to ``LlmRequest.grammar``.
        supports_tools: Whether it sends ``LlmRequest.tools`` and tool turns in the vendor's
            format and reads tool calls back (one that cannot refuses such requests).
        model: The model this instance talks to.
    """

    provider: ClassVar[str] = "unknown"
    default_model: ClassVar[str | None] = None
    can_stream: ClassVar[bool] = False
    reports_progress: ClassVar[bool] = False
    is_local: ClassVar[bool] = False
    supports_output_schema: ClassVar[bool] = False
    supports_grammar: ClassVar[bool] = False
    supports_tools: ClassVar[bool] = False

    def __init__(self, model: str | None = None) -> None:
        self.model: str = model or self.default_model or "default"

    @abstractmethod
    async def generate(self, request: LlmRequest) -> LlmResponse:
        """Answer one request.

        Raises:
            LLMError: The provider failed (a subclass says how).
        """

    async def stream(self, request: LlmRequest) -> AsyncIterator[StreamChunk]:
        """Answer one request piece by piece; the last chunk carries the full response.

        Raises:
            NotImplementedError: This provider cannot stream (see ``can_stream``).
        """
        raise NotImplementedError(f"streaming is not supported by {type(self).__name__}")
        yield StreamChunk()  # pragma: no cover - makes this an async generator

    async def generate_reporting(
        self, request: LlmRequest, progress: Callable[[int], None]
    ) -> LlmResponse:
        """Answer one request whole, calling ``progress(tokens)`` as output tokens are made.

        Providers that set ``reports_progress`` override it; others answer as ``generate``,
        reporting nothing.
        """
        return await self.generate(request)

    async def health_check(self) -> HealthStatus:
        """Send a one-token request and report whether it was answered.

        Failures are reported, not raised: a provider error and a configuration problem
        found only at first use (a model file llama.cpp cannot load) both give ``ok=False``.
        """
        started = perf_counter()
        try:
            await self.generate(LlmRequest.build("ping", max_tokens=1, temperature=0.0))
        except OrchestraError as exc:
            return HealthStatus(ok=False, provider=self.provider, detail=str(exc))
        return HealthStatus(
            ok=True, provider=self.provider, detail=self.model, latency_s=perf_counter() - started
        )

    async def aclose(self) -> None:  # noqa: B027 - optional hook, nothing to close by default
        """Release clients and connections held by this provider."""

    async def generate_content_async(self, messages: MessagesInput, **params: Any) -> str:
        """Answer and return only the text (the API earlier orchestrators taught users).

        Args:
            messages: A prompt string or a list of ``{"role", "content"}`` dicts.
            **params: Request fields such as ``max_tokens``, ``temperature``, ``system``.
        """
        response = await self.generate(LlmRequest.build(messages, **params))
        return response.text

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(provider={self.provider!r}, model={self.model!r})"
