"""OpenAI chat completions through the official SDK (``AsyncOpenAI``), and its dialects.

The client runs over aiohttp (the SDK's ``DefaultAioHttpClient``: 1,179 calls/s against
767 for its default transport at concurrency 64, measured for this project) and never
retries: the executor owns retries, and an SDK retrying underneath it would multiply them.
Its connections belong to the event loop that opened them, so each loop gets a client of
its own, closed when that loop shuts down (``LoopBound``): a provider built once works
from any number of ``asyncio.run`` calls.

Usage follows the OpenTelemetry GenAI rules, which OpenAI already obeys: ``prompt_tokens``
include cached ones (reported again as ``cache_read_tokens``) and ``completion_tokens``
include reasoning ones. A stream asks for usage in its last chunk
(``stream_options={"include_usage": True}``); a stream that ends before a finish reason
arrived is an error, never a short success.

Structured output: ``output_schema`` goes out as ``response_format={"type": "json_schema",
"json_schema": {"name", "schema", "strict"}}``, streamed or not. OpenAI accepts
``strict: true`` only for a subset of JSON Schema, which pydantic's schemas miss, so the
schema is first rewritten into it (``json_schema.strict_json_schema``); a schema that cannot
be (a ``dict[str, int]`` field, a value of any type, a tuple) is sent as written with
``strict: false``, which OpenAI follows as guidance rather than a guarantee; the answer is
validated against the original either way. OpenAI also refuses a schema whose top level is
not an object (``list[Todo]``), even without ``strict``: such a schema is sent as the one
property ``value`` of an object, and the answer unwrapped, so ``text`` is the JSON value
the schema describes. A stream of such an answer yields that text as one piece at the end,
since the wrapped document only becomes the value once it is complete. A GBNF ``grammar``
is refused (``InvalidRequestError``) before anything is sent.

``OpenAICompatibleLlm`` is the same client for servers that speak this API without being
OpenAI (LM Studio, llama.cpp's server, vLLM): ``max_tokens`` instead of
``max_completion_tokens``, no key required, and no price. These servers turn the schema
into a grammar and enforce all of it, so they get it as written, with its top level as it
is. Most take OpenAI's ``json_schema`` shape; llama-cpp-python's server (0.3) takes only
``{"type": "json_object", "schema": ...}`` and answers the other with HTTP 500, hence
``schema_format="json_object"``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from time import perf_counter
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from llm_abstractions.base import BaseLlm
from llm_abstractions.errors import (
    ConfigurationError,
    LLMBadResponseError,
    LLMContentFilterError,
    OrchestraError,
)
from llm_abstractions.providers._loop_bound import LoopBound
from llm_abstractions.providers.http_errors import error_from_status, sdk_transport_error
from llm_abstractions.providers.json_schema import (
    is_object_schema,
    refuse_grammar,
    strict_where_possible,
    unwrap_object,
    wrap_in_object,
)
from llm_abstractions.providers.tool_wire import (
    OpenAIToolCalls,
    openai_messages,
    openai_tool_calls,
    openai_tools,
)
from llm_abstractions.types import (
    FinishReason,
    LlmRequest,
    LlmResponse,
    OutputSchema,
    StreamChunk,
    Usage,
)

if TYPE_CHECKING:
    from openai import AsyncOpenAI

__all__ = ["WRAPPED_KEY", "ChatStream", "OpenAICompatibleLlm", "OpenAILlm"]

WRAPPED_KEY = "value"  # the property a non-object answer travels in (module docstring)

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
}


class OpenAILlm(BaseLlm):
    """OpenAI's chat completions API.

    Args:
        model: The model; ``gpt-4o-mini`` when None.
        api_key: The key; ``OPENAI_API_KEY`` when None.
        base_url: The API root; ``OPENAI_BASE_URL`` or OpenAI's own when None.
        timeout: Seconds one call may take.
    """

    provider: ClassVar[str] = "openai-gpt"
    default_model: ClassVar[str | None] = "gpt-4o-mini"
    can_stream: ClassVar[bool] = True
    supports_output_schema: ClassVar[bool] = True
    supports_tools: ClassVar[bool] = True
    base_url_env: ClassVar[str] = "OPENAI_BASE_URL"
    max_tokens_field: ClassVar[str] = "max_completion_tokens"

    def __init__(
        self,
        model: str | None = None,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 120.0,
    ) -> None:
        super().__init__(model)
        from openai import AsyncOpenAI, DefaultAioHttpClient

        self.base_url = base_url or os.environ.get(self.base_url_env) or self._default_base_url()
        key = api_key or self._default_key()

        def client() -> AsyncOpenAI:
            return AsyncOpenAI(
                api_key=key,
                base_url=self.base_url,
                timeout=timeout,
                max_retries=0,
                http_client=DefaultAioHttpClient(timeout=timeout),
            )

        # The first client is built now, so that a missing key fails here, not at first use.
        self._clients = LoopBound(client, AsyncOpenAI.close, first=client())

    def _default_key(self) -> str | None:
        return os.environ.get("OPENAI_API_KEY")

    def _default_base_url(self) -> str | None:
        return None

    async def generate(self, request: LlmRequest) -> LlmResponse:
        """Answer one request (see the module docstring for usage and errors)."""
        started = perf_counter()
        params, wrapped = self._params(request)
        try:
            client = await self._clients.get()
            completion = await client.chat.completions.create(**params)
        except Exception as exc:
            raise self._error(exc) from exc
        if not completion.choices:
            raise LLMBadResponseError(f"{self.provider}: the answer has no choices")
        choice = completion.choices[0]
        if getattr(choice.message, "refusal", None):
            raise LLMContentFilterError(
                f"{self.provider}: the model refused: {choice.message.refusal}",
                provider=self.provider,
            )
        finish = _finish(choice.finish_reason)
        _refuse_filtered(self.provider, finish)
        text = choice.message.content or ""
        calls = openai_tool_calls(choice.message.tool_calls, self.provider)
        return LlmResponse(
            text=unwrap_object(text, WRAPPED_KEY) if wrapped and not calls else text,
            provider=self.provider,
            model=completion.model or self.model,
            finish_reason=finish,
            usage=_usage(completion.usage),
            latency_s=perf_counter() - started,
            response_id=completion.id,
            tool_calls=calls,
        )

    async def stream(self, request: LlmRequest) -> AsyncIterator[StreamChunk]:
        """Stream one answer; the last chunk carries the whole response and its usage."""
        started = perf_counter()
        params, wrapped = self._params(request)
        answer = ChatStream(self.provider, self.model, _finish, _usage)
        try:
            client = await self._clients.get()
            events = await client.chat.completions.create(
                **params, stream=True, stream_options={"include_usage": True}
            )
            async for event in events:
                for delta in answer.add(event):
                    if not wrapped:  # a wrapped answer is unwrapped whole, at the end
                        yield StreamChunk(delta=delta)
        except OrchestraError:
            raise
        except Exception as exc:
            raise self._error(exc) from exc
        _refuse_filtered(self.provider, answer.complete())
        response = answer.response(started)
        if wrapped:
            response = response.model_copy(
                update={"text": unwrap_object(response.text, WRAPPED_KEY)}
            )
            yield StreamChunk(delta=response.text)
        yield StreamChunk(done=True, response=response)

    async def aclose(self) -> None:
        """Close the HTTP clients."""
        await self._clients.aclose()

    def _params(self, request: LlmRequest) -> tuple[dict[str, Any], bool]:
        """The SDK's arguments, and whether the answer comes wrapped (module docstring).

        Raises:
            InvalidRequestError: The request carries a grammar.
        """
        refuse_grammar(self.provider, request)
        params: dict[str, Any] = {
            "model": request.model or self.model,
            "messages": openai_messages(request),
            **openai_tools(request),
        }
        if request.max_tokens is not None:
            params[self.max_tokens_field] = request.max_tokens
        for name in ("temperature", "top_p", "seed"):
            if getattr(request, name) is not None:
                params[name] = getattr(request, name)
        if request.stop:
            params["stop"] = list(request.stop)
        wrapped = False
        if request.output_schema is not None:
            params["response_format"], wrapped = self._schema_format(request.output_schema)
        elif request.response_format == "json":
            params["response_format"] = {"type": "json_object"}
        return params, wrapped

    def _schema_format(self, output: OutputSchema) -> tuple[dict[str, Any], bool]:
        """OpenAI's ``response_format`` for a schema, and whether it wraps the answer."""
        schema, wrapped = output.json_schema, not is_object_schema(output.json_schema)
        if wrapped:
            schema = wrap_in_object(schema, WRAPPED_KEY)
        schema, strict = strict_where_possible(schema, output.strict)
        body = {"name": output.name, "schema": schema, "strict": strict}
        return {"type": "json_schema", "json_schema": body}, wrapped

    def _error(self, exc: Exception) -> OrchestraError:
        """The error tree's class for an SDK exception, most specific first."""
        import openai

        transport = sdk_transport_error(
            exc, openai, self.provider, self.base_url, self.base_url_env
        )
        if transport is not None:
            return transport
        if isinstance(exc, openai.APIStatusError):
            return error_from_status(
                exc.status_code,
                _message(exc),
                provider=self.provider,
                headers=exc.response.headers,
                code=exc.code,
            )
        if isinstance(exc, openai.APIResponseValidationError | openai.APIError | ValueError):
            return LLMBadResponseError(
                f"{self.provider}: malformed answer: {exc}", provider=self.provider
            )
        return LLMBadResponseError(
            f"{self.provider}: {type(exc).__name__}: {exc}", provider=self.provider
        )


class OpenAICompatibleLlm(OpenAILlm):
    """A server speaking OpenAI's API (LM Studio, llama.cpp's server, vLLM); no key needed.

    Args:
        model: The model the server should use (servers with one model ignore it).
        api_key: A key, for a server that wants one.
        base_url: The API root, ending in ``/v1``.
        timeout: Seconds one call may take.
        schema_format: How ``output_schema`` is sent: ``"json_schema"``, OpenAI's shape
            (LM Studio, llama.cpp's ``llama-server``, vLLM), or ``"json_object"``, the
            ``{"type": "json_object", "schema": ...}`` that llama-cpp-python's server takes.
    """

    provider: ClassVar[str] = "openai-compatible"
    default_model: ClassVar[str | None] = None
    max_tokens_field: ClassVar[str] = "max_tokens"
    is_local: ClassVar[bool] = True

    def __init__(
        self,
        model: str | None = None,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 120.0,
        schema_format: Literal["json_schema", "json_object"] = "json_schema",
    ) -> None:
        if schema_format not in ("json_schema", "json_object"):
            raise ConfigurationError(
                f"schema_format must be 'json_schema' or 'json_object', not {schema_format!r}."
            )
        self.schema_format = schema_format
        super().__init__(model, api_key=api_key, base_url=base_url, timeout=timeout)

    def _default_key(self) -> str | None:
        return "not-needed"  # the SDK insists on a key; local servers ignore it

    def _schema_format(self, output: OutputSchema) -> tuple[dict[str, Any], bool]:
        """The schema as written: these servers compile all of it into a grammar."""
        if self.schema_format == "json_object":
            return {"type": "json_object", "schema": output.json_schema}, False
        body = {"name": output.name, "schema": output.json_schema, "strict": output.strict}
        return {"type": "json_schema", "json_schema": body}, False


class ChatStream:
    """An answer streamed as OpenAI-format chunks, put together (OpenAI, HF, compatible servers).

    Args:
        provider: Named in errors and in the response.
        model: The model until a chunk names it.
        finish_of: The provider's finish-reason mapping.
        usage_of: The provider's usage mapping.
    """

    def __init__(
        self,
        provider: str,
        model: str,
        finish_of: Callable[[str | None], FinishReason | None],
        usage_of: Callable[[Any], Usage],
    ) -> None:
        self.provider, self.model = provider, model
        self.parts: list[str] = []
        self.finish: FinishReason | None = None
        self.usage = Usage()
        self.response_id: str | None = None
        self.tool_calls = OpenAIToolCalls(provider)
        self._finish_of, self._usage_of = finish_of, usage_of

    def add(self, event: Any) -> Iterator[str]:
        """Take one chunk; yield its text deltas."""
        self.model, self.response_id = event.model or self.model, event.id or self.response_id
        if event.usage is not None:
            self.usage = self._usage_of(event.usage)
        for choice in event.choices:
            if choice.delta.content:
                self.parts.append(choice.delta.content)
                yield choice.delta.content
            self.tool_calls.add(getattr(choice.delta, "tool_calls", None))
            if choice.finish_reason:
                self.finish = self._finish_of(choice.finish_reason)

    def complete(self) -> FinishReason:
        """The finish reason, once the stream has ended.

        Raises:
            LLMBadResponseError: The stream ended before one arrived (it was cut).
        """
        if self.finish is None:
            raise LLMBadResponseError(
                f"{self.provider}: the stream ended before the answer was complete",
                provider=self.provider,
            )
        return self.finish

    def response(self, started: float) -> LlmResponse:
        """The whole answer, with the usage of the last chunk that carried one."""
        return LlmResponse(
            text="".join(self.parts),
            provider=self.provider,
            model=self.model,
            finish_reason=self.finish,
            usage=self.usage,
            latency_s=perf_counter() - started,
            response_id=self.response_id,
            tool_calls=self.tool_calls.calls(),
        )


def _finish(reason: str | None) -> FinishReason | None:
    return _FINISH.get(reason or "", "stop" if reason else None)


def _refuse_filtered(provider: str, finish: FinishReason | None) -> None:
    if finish == "content_filter":
        raise LLMContentFilterError(
            f"{provider}: the answer was withheld by the content filter", provider=provider
        )


def _usage(usage: Any) -> Usage:
    if usage is None:
        return Usage()
    prompt = getattr(usage, "prompt_tokens_details", None)
    completion = getattr(usage, "completion_tokens_details", None)
    return Usage(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        cache_read_tokens=getattr(prompt, "cached_tokens", None),
        reasoning_tokens=getattr(completion, "reasoning_tokens", None),
    )


def _message(exc: Any) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(exc.message)
