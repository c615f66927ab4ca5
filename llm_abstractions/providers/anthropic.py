"""Anthropic's Messages API through the official SDK (``AsyncAnthropic``).

The client runs over aiohttp (the SDK's ``DefaultAioHttpClient``) and never retries
(``max_retries=0``): the executor owns retries, and an SDK retrying underneath it would
multiply them, and hide 429s and 529s the executor must see to back off. Its connections
belong to the event loop that opened them, so each loop gets a client of its own, closed
when that loop shuts down (``LoopBound``).

The request maps onto the Messages API: ``system`` goes in its top-level field,
``max_tokens`` is required there and defaults to ``DEFAULT_MAX_TOKENS``, ``stop`` becomes
``stop_sequences``. ``temperature``, ``top_p`` and ``seed`` are not sent: SDK 2 removed the
sampling parameters from ``messages.create`` and current models reject them (400), so sending
them (``health_check`` asks for ``temperature=0``) would break every such call. The API has
no JSON mode, so ``response_format="json"`` adds an instruction to the system prompt asking
for a single JSON object (``JSON_INSTRUCTION``); the answer is not validated here.

Structured output uses the Messages API's own JSON outputs, which SDK 2.17 documents on
``messages.create`` and ``messages.stream`` as ``output_config={"format": {"type":
"json_schema", "schema": ...}}`` (generally available: no beta header). The API then
constrains decoding, and the answer's text block, streamed as ordinary text deltas, is the
JSON document itself; forced tool use (a tool whose ``input_schema`` is the schema) would
need the answer read back from a ``tool_use`` block and its input re-serialised, and tool
schemas are not enforced unless marked strict. The API accepts a subset of JSON Schema
(every object closed, no numeric or length bounds...), so the schema goes through the
SDK's public ``transform_schema``, as ``messages.parse`` does: it closes objects and moves
unsupported constraints into descriptions; the caller validates the answer against the
original. Where that subset cannot express the schema at all (a mapping with free keys,
which ``transform_schema`` would close to an empty object; a value of any type), the
schema is put in the system prompt instead (``SCHEMA_INSTRUCTION``): asked for, not
enforced. A GBNF ``grammar`` is refused (``InvalidRequestError``) before anything is sent.

Tools go out as the API's ``tools`` (``input_schema``) and ``tool_choice``; the model's
``tool_use`` blocks come back as ``LlmResponse.tool_calls`` (their input serialized as JSON
text), streamed or not, and tool turns are sent as ``tool_use`` and ``tool_result`` blocks
(``tool_wire``).

Usage follows the OpenTelemetry GenAI rules, which Anthropic does not: its
``input_tokens`` exclude the tokens read from and written to the prompt cache, so ours are
``input_tokens + cache_read_input_tokens + cache_creation_input_tokens``, with the two
parts again in ``cache_read_tokens`` and ``cache_write_tokens``. A stream reports input and
cache counts in ``message_start`` and cumulative counts (at least ``output_tokens``) in
``message_delta``; a stream that ends before ``message_stop`` is an error, never a short
success, and an ``error`` event is mapped like the HTTP status it stands for. An answer
without usage (some gateways and proxies drop it) is still an answer, its usage unknown
(``None``, never 0): refusing it would have the executor pay for the same answer again.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping
from time import perf_counter
from typing import TYPE_CHECKING, Any, ClassVar

from llm_abstractions.base import BaseLlm
from llm_abstractions.errors import (
    LLMBadResponseError,
    LLMContentFilterError,
    MissingCredentialsError,
    OrchestraError,
)
from llm_abstractions.providers._loop_bound import LoopBound
from llm_abstractions.providers.http_errors import error_from_status, sdk_transport_error
from llm_abstractions.providers.json_schema import free_form_part, refuse_grammar
from llm_abstractions.providers.tool_wire import (
    AnthropicToolCalls,
    anthropic_messages,
    anthropic_tool_call,
    anthropic_tools,
)
from llm_abstractions.types import FinishReason, LlmRequest, LlmResponse, StreamChunk, Usage

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic

__all__ = ["DEFAULT_MAX_TOKENS", "JSON_INSTRUCTION", "SCHEMA_INSTRUCTION", "AnthropicLlm"]

DEFAULT_MAX_TOKENS = 4096
JSON_INSTRUCTION = (
    "Answer with a single JSON object and nothing else: no prose, no Markdown code fences."
)
SCHEMA_INSTRUCTION = (
    "Answer with a single JSON value matching this JSON schema and nothing else: no prose, "
    "no Markdown code fences.\n{schema}"
)

_STOP: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# The HTTP status each error type of Anthropic's stands for, for ``error`` events that
# arrive mid-stream (on a response whose status was 200).
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


class AnthropicLlm(BaseLlm):
    """Anthropic's Messages API (Claude).

    Args:
        model: The model; ``claude-sonnet-4-6`` when None.
        api_key: The key; ``ANTHROPIC_API_KEY`` when None.
        base_url: The API root; ``ANTHROPIC_BASE_URL`` or Anthropic's own when None.
        timeout: Seconds one call may take.
    """

    provider: ClassVar[str] = "anthropic-claude"
    default_model: ClassVar[str | None] = "claude-sonnet-4-6"
    can_stream: ClassVar[bool] = True
    supports_output_schema: ClassVar[bool] = True
    supports_tools: ClassVar[bool] = True

    def __init__(
        self,
        model: str | None = None,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 120.0,
    ) -> None:
        super().__init__(model)
        from anthropic import AsyncAnthropic, DefaultAioHttpClient

        key = api_key or os.environ.get("ANTHROPIC_API_KEY")
        if not key:  # the SDK would only fail at the first call, with a TypeError
            raise MissingCredentialsError(self.provider, ("ANTHROPIC_API_KEY",))
        self.base_url = base_url or os.environ.get("ANTHROPIC_BASE_URL")

        def client() -> AsyncAnthropic:
            return AsyncAnthropic(
                api_key=key,
                base_url=self.base_url,
                timeout=timeout,
                max_retries=0,
                http_client=DefaultAioHttpClient(timeout=timeout),
            )

        self._clients = LoopBound(client, AsyncAnthropic.close, first=client())

    async def generate(self, request: LlmRequest) -> LlmResponse:
        """Answer one request (see the module docstring for usage and errors)."""
        started = perf_counter()
        params = self._params(request)
        try:
            client = await self._clients.get()
            message = await client.messages.create(**params)
        except Warning:
            raise  # the SDK's model deprecation warning, made an error by -W error
        except Exception as exc:
            raise self._error(exc) from exc
        finish = self._finish(message.stop_reason)
        try:  # the SDK does not validate a 200's body: a malformed one fails here
            return LlmResponse(
                text="".join(block.text for block in message.content if block.type == "text"),
                provider=self.provider,
                model=message.model or self.model,
                finish_reason=finish,
                usage=_usage(_counts(message.usage)),
                latency_s=perf_counter() - started,
                response_id=message.id,
                tool_calls=tuple(
                    anthropic_tool_call(block)
                    for block in message.content
                    if block.type == "tool_use"
                ),
            )
        except (AttributeError, TypeError, ValueError) as exc:
            raise LLMBadResponseError(
                f"{self.provider}: malformed answer ({type(exc).__name__})", provider=self.provider
            ) from exc

    async def stream(self, request: LlmRequest) -> AsyncIterator[StreamChunk]:
        """Stream one answer; the last chunk carries the whole response and its usage."""
        started = perf_counter()
        parts: list[str] = []
        counts: dict[str, Any] = {}
        stop_reason: str | None = None
        calls = AnthropicToolCalls()
        model, response_id, complete = self.model, None, False
        params = self._params(request)
        try:
            client = await self._clients.get()
            events = await client.messages.create(**params, stream=True)
            async with events:  # closes the response when the consumer stops early
                async for event in events:
                    if event.type == "message_start":
                        model, response_id = event.message.model or model, event.message.id
                        counts = _counts(event.message.usage)
                    elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                        parts.append(event.delta.text)
                        yield StreamChunk(delta=event.delta.text)
                    elif event.type == "content_block_start":
                        if event.content_block.type == "tool_use":
                            calls.start(event.index, event.content_block)
                    elif event.type == "content_block_delta":
                        if event.delta.type == "input_json_delta":
                            calls.add(event.index, event.delta.partial_json)
                    elif event.type == "message_delta":
                        stop_reason = event.delta.stop_reason or stop_reason
                        delta = _counts(event.usage)
                        counts |= {k: v for k, v in delta.items() if v is not None}
                    elif event.type == "message_stop":
                        complete = True
        except (OrchestraError, Warning):
            raise
        except Exception as exc:
            raise self._error(exc) from exc
        if not complete:
            raise LLMBadResponseError(
                f"{self.provider}: the stream ended before the answer was complete",
                provider=self.provider,
            )
        response = LlmResponse(
            text="".join(parts),
            provider=self.provider,
            model=model,
            finish_reason=self._finish(stop_reason),
            usage=_usage(counts),
            latency_s=perf_counter() - started,
            response_id=response_id,
            tool_calls=calls.calls(),
        )
        yield StreamChunk(done=True, response=response)

    async def aclose(self) -> None:
        """Close the HTTP clients."""
        await self._clients.aclose()

    def _params(self, request: LlmRequest) -> dict[str, Any]:
        """The SDK's arguments for a request.

        Raises:
            InvalidRequestError: The request carries a grammar.
        """
        refuse_grammar(self.provider, request)
        system, instruction = request.system, None
        params: dict[str, Any] = {
            "model": request.model or self.model,
            "messages": anthropic_messages(request),
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
            **anthropic_tools(request),
        }
        if request.output_schema is not None:
            schema = request.output_schema.json_schema
            output_format = _output_format(schema)
            if output_format is not None:
                params["output_config"] = {"format": output_format}
            else:
                instruction = SCHEMA_INSTRUCTION.format(schema=json.dumps(schema))
        elif request.response_format == "json":
            instruction = JSON_INSTRUCTION
        if instruction:
            system = f"{system}\n\n{instruction}" if system else instruction
        if system:
            params["system"] = system
        if request.stop:
            params["stop_sequences"] = list(request.stop)
        return params

    def _finish(self, stop_reason: str | None) -> FinishReason | None:
        """Our finish reason for Anthropic's ``stop_reason``; a refusal is raised."""
        finish = _STOP.get(stop_reason or "", "stop" if stop_reason else None)
        if finish == "content_filter":
            raise LLMContentFilterError(
                f"{self.provider}: the model refused to answer", provider=self.provider
            )
        return finish

    def _error(self, exc: Exception) -> OrchestraError:
        """The error tree's class for an SDK exception, most specific first."""
        import anthropic

        transport = sdk_transport_error(
            exc, anthropic, self.provider, self.base_url, "ANTHROPIC_BASE_URL"
        )
        if transport is not None:
            return transport
        if isinstance(exc, anthropic.APIStatusError):
            status, message = exc.status_code, exc.api_message or exc.message
            if status < 400:  # an ``error`` event inside a stream that began with 200
                status = _ERROR_STATUS.get(str(exc.type), 500)
                message = f"{message} (an {exc.type} event in the stream)"
            return error_from_status(
                status,
                message,
                provider=self.provider,
                headers=exc.response.headers,
                code=exc.error_code or exc.type,
            )
        return LLMBadResponseError(
            f"{self.provider}: malformed answer: {type(exc).__name__}: {exc}",
            provider=self.provider,
        )


def _output_format(schema: Mapping[str, Any]) -> dict[str, Any] | None:
    """``output_config.format`` for a schema, or None when the API cannot express it."""
    from anthropic import transform_schema

    if free_form_part(schema) is not None:
        return None
    try:
        return {"type": "json_schema", "schema": transform_schema(dict(schema))}
    except ValueError:  # a part the SDK cannot translate (it names what is missing)
        return None


def _counts(usage: Any) -> dict[str, Any]:
    """The counts of a usage block, or none when the answer came without one."""
    return {} if usage is None else dict(usage.model_dump())


def _usage(counts: Mapping[str, Any]) -> Usage:
    """OpenTelemetry usage from Anthropic's counts, whose input excludes the cache."""
    read, write = counts.get("cache_read_input_tokens"), counts.get("cache_creation_input_tokens")
    reported = counts.get("input_tokens")
    details = counts.get("output_tokens_details") or {}
    return Usage(
        input_tokens=None if reported is None else reported + (read or 0) + (write or 0),
        output_tokens=counts.get("output_tokens"),
        cache_read_tokens=read,
        cache_write_tokens=write,
        reasoning_tokens=details.get("thinking_tokens"),
    )
