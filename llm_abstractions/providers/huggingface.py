"""Hugging Face chat models through ``huggingface_hub.AsyncInferenceClient.chat_completion``.

The client is built with ``base_url`` only (its ``model`` argument is an alias of
``base_url`` and the two are mutually exclusive): the model travels in each request's
payload. With a base URL ending in ``/v1`` the client posts to ``{base_url}/chat/completions``
(``/v1/chat/completions`` is appended to a bare host), so the default base URL is Hugging
Face's OpenAI-compatible router, ``https://router.huggingface.co/v1``, the same URL shape
``ORCHESTRA_HF_BASE_URL`` has for the bundled script fallback. The token is ``api_key=``,
else ``HF_TOKEN``, else the one ``hf auth login`` saved; with none, requests go without
``Authorization`` (a self-hosted TGI server needs none, the router answers 401).

Retries: huggingface_hub 1.x sends every request once (its inference client does not go
through ``http_backoff``; the tests check it for 429 and 5xx), and a 503 "model is loading"
becomes ``LLMOverloadedError`` at once. Releases before 1.0 (aiohttp-based) looped on that
503 inside the client until its ``timeout`` and raised aiohttp's own errors: this module is
written and tested against 1.x.

Usage is the answer's ``prompt_tokens`` and ``completion_tokens``; a stream asks for it in a
last chunk (``stream_options.include_usage``). A stream that ends before a finish reason
arrived is an error, never a short success.

Clients: the client's httpx connections belong to the event loop that opened them, so
``generate`` uses one client per loop, closed when that loop shuts down (``LoopBound``).
Each stream gets a client of its own, closed when the stream ends, fails or is abandoned:
the SDK keeps every streamed response on its client's exit stack until that client is
closed, so a shared client would hold on to every stream it ever served (and to the
connection of each stream given up early). The price is a new connection per stream.
``aclose`` closes the clients that are left.

Structured output: ``output_schema`` is handed to the client in the OpenAI shape that
huggingface_hub 2.4 types as ``ChatCompletionInputResponseFormatJSONSchema`` (``{"type":
"json_schema", "json_schema": {"name", "schema", "strict"}}``), streamed or not. The client
rewrites it for the route it takes: with a base URL (always, here) that is its
``hf-inference`` helper, which sends TGI's grammar shape, ``{"type": "json_object",
"value": <schema>}``. TGI compiles the whole schema into a grammar, so it goes as written.
A GBNF ``grammar`` is refused (``InvalidRequestError``) before anything is sent: TGI's own
grammar type takes JSON schemas and regular expressions, not GBNF.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from time import perf_counter
from typing import TYPE_CHECKING, Any, ClassVar

from llm_abstractions.base import BaseLlm
from llm_abstractions.errors import (
    InvalidRequestError,
    LLMBadResponseError,
    LLMContentFilterError,
    LLMOverloadedError,
    LLMServerError,
    LLMTimeoutError,
    OrchestraError,
)
from llm_abstractions.providers._loop_bound import LoopBound
from llm_abstractions.providers.http_errors import caused_by, connection_error, error_from_status
from llm_abstractions.providers.json_schema import refuse_grammar
from llm_abstractions.providers.openai import ChatStream
from llm_abstractions.providers.tool_wire import (
    openai_messages,
    openai_tool_calls,
    openai_tools,
)
from llm_abstractions.types import FinishReason, LlmRequest, LlmResponse, StreamChunk, Usage

if TYPE_CHECKING:
    from huggingface_hub import AsyncInferenceClient, ChatCompletionInputGrammarType

__all__ = ["HF_ROUTER_URL", "HuggingFaceLlm"]

HF_ROUTER_URL = "https://router.huggingface.co/v1"
# OpenAI's finish reasons, and TGI's own (``eos_token``, ``stop_sequence``).
_FINISH: dict[str, FinishReason] = {k: k for k in ("length", "content_filter", "tool_calls")}


class HuggingFaceLlm(BaseLlm):
    """A chat model on Hugging Face's router, an Inference Endpoint or a TGI server.

    Args:
        model: The Hub model id; ``Qwen/Qwen2.5-7B-Instruct`` when None.
        api_key: The token; ``HF_TOKEN`` (or the saved login) when None.
        base_url: The API root; ``ORCHESTRA_HF_BASE_URL`` or the router's when None.
        timeout: Seconds to wait for the server (to connect, and between bytes read).
    """

    provider: ClassVar[str] = "huggingface"
    default_model: ClassVar[str | None] = "Qwen/Qwen2.5-7B-Instruct"
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
        from huggingface_hub import AsyncInferenceClient

        self.base_url = base_url or os.environ.get("ORCHESTRA_HF_BASE_URL") or HF_ROUTER_URL
        # A token read from a file often ends in a newline; sent as is, the HTTP library
        # rejects the header and quotes it, key included, in its error.
        token = (api_key or os.environ.get("HF_TOKEN") or "").strip() or None

        def client() -> AsyncInferenceClient:
            return AsyncInferenceClient(base_url=self.base_url, token=token, timeout=timeout)

        self._new_client = client
        self._clients = LoopBound(client, _close, first=client())

    async def generate(self, request: LlmRequest) -> LlmResponse:
        """Answer one request (see the module docstring for usage and errors)."""
        started = perf_counter()
        params = self._params(request)
        try:
            client = await self._clients.get()
            completion = await client.chat_completion(**params)
        except Exception as exc:
            raise self._error(exc) from exc
        if not completion.choices:
            raise LLMBadResponseError(
                "huggingface: the answer has no choices", provider=self.provider
            )
        choice = completion.choices[0]
        finish = _finish(choice.finish_reason)
        _refuse_filtered(finish)
        try:  # a malformed body fails here, not in the client
            return LlmResponse(
                text=choice.message.content or "",
                provider=self.provider,
                model=completion.model or request.model or self.model,
                finish_reason=finish,
                usage=_usage(completion.usage),
                latency_s=perf_counter() - started,
                response_id=completion.id,
                tool_calls=openai_tool_calls(choice.message.tool_calls, self.provider),
            )
        except (AttributeError, TypeError, ValueError) as exc:
            raise LLMBadResponseError(
                f"huggingface: malformed answer ({type(exc).__name__})", provider=self.provider
            ) from exc

    async def stream(self, request: LlmRequest) -> AsyncIterator[StreamChunk]:
        """Stream one answer; the last chunk carries the whole response and its usage."""
        from huggingface_hub import ChatCompletionInputStreamOptions

        started = perf_counter()
        params = self._params(request)
        answer = ChatStream(self.provider, request.model or self.model, _finish, _usage)
        client = self._new_client()  # this stream's alone (see the module docstring)
        try:
            events = await client.chat_completion(
                **params,
                stream=True,
                stream_options=ChatCompletionInputStreamOptions(include_usage=True),
            )
            async for event in events:
                for delta in answer.add(event):
                    yield StreamChunk(delta=delta)
        except OrchestraError:
            raise
        except Exception as exc:
            raise self._error(exc) from exc
        finally:  # also when the consumer stops early and the stream is closed
            await _close(client)
        _refuse_filtered(answer.complete())
        yield StreamChunk(done=True, response=answer.response(started))

    async def aclose(self) -> None:
        """Close the clients' HTTP sessions (a no-op for those that never opened one)."""
        await self._clients.aclose()

    def _params(self, request: LlmRequest) -> dict[str, Any]:
        """The client's arguments for a request.

        Raises:
            InvalidRequestError: The request carries a grammar.
        """
        refuse_grammar(self.provider, request)
        # None values are dropped by the client before sending.
        return {
            **openai_tools(request),
            "messages": openai_messages(request),
            "model": request.model or self.model,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "seed": request.seed,
            "stop": list(request.stop) if request.stop else None,
            "response_format": _response_format(request),
        }

    def _error(self, exc: Exception) -> OrchestraError:
        """The error tree's class for a client exception, most specific first."""
        from huggingface_hub.errors import (
            HfHubHTTPError,
            IncompleteGenerationError,
            OverloadedError,
            TextGenerationError,
            ValidationError,
        )

        if isinstance(exc, HfHubHTTPError):
            return _status_error(exc.response)
        if isinstance(exc, TextGenerationError):  # an error event inside a stream
            text = f"huggingface: the server failed mid-stream: {exc}"
            if isinstance(exc, OverloadedError):
                return LLMOverloadedError(text, provider=self.provider)
            if isinstance(exc, ValidationError):
                return InvalidRequestError(text)
            if isinstance(exc, IncompleteGenerationError):
                return LLMBadResponseError(text, provider=self.provider)
            return LLMServerError(text, provider=self.provider)
        # Transport errors differ between releases (aiohttp, httpx, httpx2): read the causes.
        if _caused_by(exc, TimeoutError) and not _caused_by(exc, ConnectionError):
            return LLMTimeoutError("huggingface: timed out", provider=self.provider)
        if _caused_by(exc, OSError):
            return connection_error(
                exc,
                provider=self.provider,
                url=self.base_url,
                remedy="Is the server running, and the address right? Check "
                "ORCHESTRA_HF_BASE_URL or base_url=.",
            )
        return LLMBadResponseError(
            f"huggingface: malformed answer: {type(exc).__name__}", provider=self.provider
        )


def _response_format(request: LlmRequest) -> ChatCompletionInputGrammarType | None:
    from huggingface_hub import (
        ChatCompletionInputJSONSchema,
        ChatCompletionInputResponseFormatJSONObject,
        ChatCompletionInputResponseFormatJSONSchema,
    )

    output = request.output_schema
    if output is not None:
        spec = ChatCompletionInputJSONSchema(
            name=output.name, schema=output.json_schema, strict=output.strict
        )
        return ChatCompletionInputResponseFormatJSONSchema(type="json_schema", json_schema=spec)
    if request.response_format == "json":
        return ChatCompletionInputResponseFormatJSONObject(type="json_object")
    return None


async def _close(client: AsyncInferenceClient) -> None:
    await client.close()  # type: ignore[no-untyped-call]


def _status_error(response: Any) -> OrchestraError:
    """An HTTP failure; HF's body is ``{"error": "..."}`` or OpenAI's ``{"error": {...}}``."""
    try:
        body = response.json()
    except Exception:  # not JSON, or a stream whose body was not read
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    code = None
    if isinstance(error, dict):
        code = error.get("code")
        error = error.get("message")
    message = str(error or getattr(response, "reason_phrase", "") or "no message")
    status = int(response.status_code)
    if status == 503 and "loading" in message.lower():
        estimate = body.get("estimated_time") if isinstance(body, dict) else None
        wait = f" (ready in about {estimate:.0f} s)" if isinstance(estimate, int | float) else ""
        return LLMOverloadedError(
            f"huggingface: HTTP 503: {message}{wait}", provider="huggingface", status_code=status
        )
    return error_from_status(
        status,
        message,
        provider="huggingface",
        headers=response.headers,
        code=str(code) if code is not None else None,
    )


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    from huggingface_hub.errors import HfHubHTTPError  # an OSError that is no transport failure

    return caused_by(exc, kind, unless=(HfHubHTTPError,))


def _finish(reason: str | None) -> FinishReason | None:
    return _FINISH.get(reason or "", "stop" if reason else None)


def _refuse_filtered(finish: FinishReason | None) -> None:
    if finish == "content_filter":
        raise LLMContentFilterError(
            "huggingface: the answer was withheld by the content filter", provider="huggingface"
        )


def _usage(usage: Any) -> Usage:
    if usage is None:
        return Usage()
    return Usage(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens)
