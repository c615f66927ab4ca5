"""Ollama through its native API (``POST /api/chat``), over aiohttp directly.

Ollama has no SDK worth its weight: the API is one JSON route, so this module speaks it
with an ``aiohttp.ClientSession`` opened lazily inside the running event loop. A session
belongs to the loop that created it, so a provider called from two loops (two
``asyncio.run``) keeps one per loop, each closed when its loop shuts down (``LoopBound``),
and all of them in ``aclose``.

The host comes from ``host=``, else ``OLLAMA_HOST`` (``host``, ``host:port`` or a URL, as
Ollama itself accepts), else ``http://127.0.0.1:11434``: the factory's probe reads it the
same way, through the same function. Calls run on the user's machine and cost nothing.

Usage is Ollama's ``prompt_eval_count`` (input) and ``eval_count`` (output), as reported.
Ollama leaves ``prompt_eval_count`` out when it evaluated no prompt token (its Go struct
drops zero values), which older releases did whenever the whole prompt came from their
prompt cache. The prompt had tokens all the same, so such an answer has
``input_tokens=None``, not 0, and ``metadata["input_tokens_reported"] = False``; nothing is
estimated (Ollama's tokenizer is the model's, and not ours to guess). A count that is
there is taken as given, though it can fall short of the prompt: some releases counted
only the tokens evaluated, not those reused from the cache, and the answer does not say
which.

A stream is NDJSON, one message delta per line; the last line has ``done: true``, the finish
reason and the counts. A stream that ends without that line, or that carries an
``{"error": ...}`` line, fails: a short answer is never passed off as a whole one. Nothing
is retried here: the executor owns retries.

Structured output: ``output_schema`` goes as written in the body's ``format`` (Ollama
takes ``"json"`` or a JSON schema there, and turns a schema into a grammar for decoding),
streamed or not. Ollama's API has no field for a grammar of the caller's own, so a
``grammar`` is refused (``InvalidRequestError``) before anything is sent.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from time import perf_counter
from typing import Any, ClassVar

import aiohttp

from llm_abstractions.base import BaseLlm
from llm_abstractions.errors import (
    InvalidRequestError,
    LLMBadResponseError,
    LLMServerError,
    LLMTimeoutError,
    OrchestraError,
)
from llm_abstractions.providers._loop_bound import LoopBound
from llm_abstractions.providers.http_errors import caused_by, connection_error, error_from_status
from llm_abstractions.providers.json_schema import refuse_grammar
from llm_abstractions.providers.tool_wire import (
    ollama_messages,
    openai_tool_calls,
    openai_tools,
)
from llm_abstractions.specs import OLLAMA_DEFAULT_HOST, server_url
from llm_abstractions.types import (
    FinishReason,
    HealthStatus,
    LlmRequest,
    LlmResponse,
    StreamChunk,
    ToolCall,
    Usage,
)

__all__ = ["OllamaLlm"]

_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length"}


class OllamaLlm(BaseLlm):
    """A model served by a local (or LAN) Ollama server.

    Args:
        model: The model tag (``llama3.2``, ``qwen2.5:7b``); ``llama3.2`` when None.
        host: The server; ``OLLAMA_HOST`` or ``http://127.0.0.1:11434`` when None.
        timeout: Seconds one call may take, the whole stream included.
    """

    provider: ClassVar[str] = "ollama"
    default_model: ClassVar[str | None] = "llama3.2"
    can_stream: ClassVar[bool] = True
    is_local: ClassVar[bool] = True
    supports_output_schema: ClassVar[bool] = True
    supports_tools: ClassVar[bool] = True

    def __init__(
        self, model: str | None = None, *, host: str | None = None, timeout: float = 120.0
    ) -> None:
        super().__init__(model)
        self.host = server_url(host or os.environ.get("OLLAMA_HOST") or OLLAMA_DEFAULT_HOST, 11434)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._chat = f"{self.host}/api/chat"
        self._sessions = LoopBound(self._new_session, aiohttp.ClientSession.close)

    async def generate(self, request: LlmRequest) -> LlmResponse:
        """Answer one request (see the module docstring for usage and errors)."""
        started = perf_counter()
        model = request.model or self.model
        try:
            body = self._body(request, stream=False)
            async with (await self._sessions.get()).post(self._chat, json=body) as response:
                await self._raise_for_status(response, model)
                raw = await response.read()
        except OrchestraError:
            raise
        except Exception as exc:
            raise self._error(exc) from exc
        answer = _decode(raw)
        if not isinstance(answer.get("message"), dict):
            raise LLMBadResponseError("ollama: the answer has no message", provider=self.provider)
        message = answer["message"]
        calls = openai_tool_calls(message.get("tool_calls"), self.provider)
        return self._response(answer, str(message.get("content") or ""), started, calls)

    async def stream(self, request: LlmRequest) -> AsyncIterator[StreamChunk]:
        """Stream one answer; the last chunk carries the whole response and its usage."""
        started = perf_counter()
        model = request.model or self.model
        parts: list[str] = []
        calls: list[Any] = []  # a stream sends each tool call whole, in one line
        final: dict[str, Any] | None = None
        try:
            body = self._body(request, stream=True)
            async with (await self._sessions.get()).post(self._chat, json=body) as response:
                await self._raise_for_status(response, model)
                async for line in response.content:
                    if not line.strip():
                        continue
                    event = _decode(line)
                    if event.get("error"):
                        raise _stream_error(str(event["error"]), model)
                    message = event.get("message") or {}
                    calls += message.get("tool_calls") or []
                    delta = str(message.get("content") or "")
                    if delta:
                        parts.append(delta)
                        yield StreamChunk(delta=delta)
                    if event.get("done"):
                        final = event
                        break
        except OrchestraError:
            raise
        except Exception as exc:
            raise self._error(exc) from exc
        if final is None:
            raise LLMBadResponseError(
                "ollama: the stream ended before the answer was complete", provider=self.provider
            )
        made = openai_tool_calls(calls, self.provider)
        yield StreamChunk(done=True, response=self._response(final, "".join(parts), started, made))

    async def health_check(self) -> HealthStatus:
        """Ask ``GET /api/tags`` (cheap, loads no model) and say whether the model is pulled."""
        started = perf_counter()
        try:
            async with (await self._sessions.get()).get(f"{self.host}/api/tags") as response:
                await self._raise_for_status(response, self.model)
                tags = _decode(await response.read())
        except OrchestraError as exc:
            return HealthStatus(ok=False, provider=self.provider, detail=str(exc))
        except Exception as exc:
            return HealthStatus(ok=False, provider=self.provider, detail=str(self._error(exc)))
        names = [str(m.get("name")) for m in tags.get("models") or [] if isinstance(m, dict)]
        pulled = self.model in names or f"{self.model}:latest" in names
        if pulled:
            detail = f"model {self.model} is available"
        else:  # the server is up, but every call for this model would fail with a 404
            detail = f"model {self.model} is not pulled (run `ollama pull {self.model}`); "
            detail += f"pulled: {', '.join(names) or 'none'}"
        return HealthStatus(
            ok=pulled, provider=self.provider, detail=detail, latency_s=perf_counter() - started
        )

    async def aclose(self) -> None:
        """Close the HTTP sessions that were opened."""
        await self._sessions.aclose()

    def _new_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(timeout=self._timeout)

    def _body(self, request: LlmRequest, *, stream: bool) -> dict[str, Any]:
        """The ``/api/chat`` body for a request.

        Raises:
            InvalidRequestError: The request carries a grammar.
        """
        refuse_grammar(self.provider, request)
        if request.tool_choice == "required":
            raise InvalidRequestError(
                "ollama: Ollama cannot be made to call a tool (it has no tool_choice); "
                "leave tool_choice unset, or use a provider that can"
            )
        messages = ollama_messages(request)
        options: dict[str, Any] = {}
        if request.max_tokens is not None:
            options["num_predict"] = request.max_tokens
        for name in ("temperature", "top_p", "seed"):
            if getattr(request, name) is not None:
                options[name] = getattr(request, name)
        if request.stop:
            options["stop"] = list(request.stop)
        body: dict[str, Any] = {
            "model": request.model or self.model,
            "messages": messages,
            "stream": stream,
            "options": options,
        }
        tools = openai_tools(request)
        if tools and request.tool_choice != "none":  # Ollama has no tool_choice: not offered
            body["tools"] = tools["tools"]
        if request.output_schema is not None:
            body["format"] = request.output_schema.json_schema
        elif request.response_format == "json":
            body["format"] = "json"
        return body

    def _response(
        self,
        final: dict[str, Any],
        text: str,
        started: float,
        calls: tuple[ToolCall, ...] = (),
    ) -> LlmResponse:
        reason = final.get("done_reason")
        # Missing or 0: no prompt token was evaluated, not a prompt of none (module docstring).
        prompt = _count(final.get("prompt_eval_count")) or None
        return LlmResponse(
            text=text,
            provider=self.provider,
            model=str(final.get("model") or self.model),
            # Ollama says "stop" when the model asks for tools.
            finish_reason="tool_calls"
            if calls
            else (_FINISH.get(str(reason), "stop") if reason else None),
            usage=Usage(input_tokens=prompt, output_tokens=_count(final.get("eval_count"))),
            latency_s=perf_counter() - started,
            tool_calls=calls,
            metadata={} if prompt is not None else {"input_tokens_reported": False},
        )

    async def _raise_for_status(self, response: aiohttp.ClientResponse, model: str) -> None:
        if response.status < 400:
            return
        raw = await response.read()
        try:
            message = str(json.loads(raw).get("error") or raw.decode(errors="replace"))
        except (ValueError, AttributeError):
            message = raw.decode(errors="replace") or response.reason or "no message"
        if response.status == 404 and "not found" in message:
            message += f" (pull it first: `ollama pull {model}`)"
        raise error_from_status(
            response.status, message, provider=self.provider, headers=response.headers
        )

    def _error(self, exc: Exception) -> OrchestraError:
        """The error tree's class for a transport failure (timeouts first: some are both)."""
        if isinstance(exc, TimeoutError) and not caused_by(exc, ConnectionError):
            return LLMTimeoutError("ollama: timed out", provider=self.provider)
        if isinstance(exc, aiohttp.ClientConnectionError | OSError):
            return connection_error(
                exc,
                provider=self.provider,
                url=self.host,
                remedy="Is Ollama running? Start it with `ollama serve`, or set OLLAMA_HOST "
                "(or host=) to where it runs.",
            )
        return LLMBadResponseError(f"ollama: {type(exc).__name__}: {exc}", provider=self.provider)


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        decoded = json.loads(raw)
    except ValueError as exc:
        raise LLMBadResponseError(f"ollama: malformed answer: {exc}", provider="ollama") from exc
    if not isinstance(decoded, dict):
        raise LLMBadResponseError("ollama: the answer is not a JSON object", provider="ollama")
    return decoded


def _stream_error(message: str, model: str) -> OrchestraError:
    """An ``{"error": ...}`` line in a stream that had already answered 200."""
    if "not found" in message:
        return error_from_status(404, f"{message} (`ollama pull {model}`)", provider="ollama")
    return LLMServerError(f"ollama: the server failed mid-stream: {message}", provider="ollama")


def _count(value: object) -> int | None:
    """A token count as reported, or None when it is missing or not a count."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
