"""Google Gemini through the official ``google-genai`` SDK (``genai.Client``, its async API).

The SDK's async calls run over aiohttp (an Orchestra dependency) and never retry: the
executor owns retries. The SDK keeps an aiohttp session per event loop but closes none of
them when their loop ends, so each loop gets a client of its own here, closed when that
loop shuts down (``LoopBound``). Retry options are set explicitly (one attempt) because without them
the SDK's aiohttp transport quietly retries a refused or dropped connection after sleeping
one to ten seconds. The API version is ``v1beta`` (Google's REST reference and the bundled
script use it; the SDK's own default moved to ``v1`` in later releases) unless ``base_url``
(or ``ORCHESTRA_GEMINI_BASE_URL``, shared with the script) ends in another one.

Usage follows the OpenTelemetry GenAI rules: ``promptTokenCount`` already includes cached
content (reported again as ``cache_read_tokens``), but Gemini counts thinking apart from
the answer, so ``output_tokens`` is ``candidatesTokenCount + thoughtsTokenCount``. A stream
takes its usage from the last event that carries some, and a stream that ends before a
finish reason arrived is an error, never a short success. Answers withheld for safety,
recitation or blocklists, and prompts blocked outright, raise ``LLMContentFilterError``.

Structured output: ``output_schema`` is sent as ``response_mime_type="application/json"``
with the schema as written in ``response_json_schema`` (google-genai 3.6's
``GenerateContentConfig``; ``responseJsonSchema`` on the wire), which takes JSON Schema
itself, unlike ``response_schema`` and its OpenAPI subset. Gemini documents the keywords it
follows and leaves the others out of its constraint; the caller validates the answer. A
GBNF ``grammar`` is refused (``InvalidRequestError``) before anything is sent.

Tools go out as ``functionDeclarations`` with ``parametersJsonSchema`` (the schema without
``additionalProperties``, which Gemini refuses), ``tool_choice`` as the function-calling
mode (``AUTO``, ``ANY``, ``NONE``), and the SDK's automatic function calling off. Gemini's
``functionCall`` parts carry no id: calls get ``call_0``, ``call_1``... in their order; a
call's ``thoughtSignature`` is kept and sent back with it (Gemini 3 requires it); results go
back as ``functionResponse`` parts (``{"result": ...}``, or ``{"error": ...}``
for a failed call) matched by name and order, all of one turn's in one user turn.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import AsyncIterator, Mapping
from time import perf_counter
from typing import TYPE_CHECKING, Any, ClassVar

import aiohttp

from llm_abstractions.base import BaseLlm
from llm_abstractions.errors import (
    LLMAuthenticationError,
    LLMBadResponseError,
    LLMContentFilterError,
    LLMContextLengthError,
    LLMRateLimitError,
    LLMTimeoutError,
    MissingCredentialsError,
    OrchestraError,
)
from llm_abstractions.providers._loop_bound import LoopBound
from llm_abstractions.providers.http_errors import caused_by, connection_error, error_from_status
from llm_abstractions.providers.json_schema import refuse_grammar, rewrite_keywords
from llm_abstractions.types import (
    FinishReason,
    LlmRequest,
    LlmResponse,
    StreamChunk,
    ToolCall,
    Usage,
)

if TYPE_CHECKING:
    from google.genai import Client
    from google.genai import types as gt

__all__ = ["GEMINI_API_URL", "GeminiLlm"]

GEMINI_API_URL = "https://generativelanguage.googleapis.com"  # the SDK's, when none is set

_KEY_ENV = ("GOOGLE_API_KEY", "GEMINI_API_KEY")  # the SDK's own order of precedence
_FINISH: dict[str, FinishReason] = {"STOP": "stop", "MAX_TOKENS": "length"}  # others: "error"
_FILTERED = {"SAFETY", "RECITATION", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "IMAGE_SAFETY"}
_VERSIONED = re.compile(r"^(?P<root>.+?)/(?P<version>v\d+(?:alpha|beta)?\d*)/?$")
_TOKEN_LIMIT = re.compile(r"token count|number of tokens|too many tokens", re.IGNORECASE)
_BAD_KEY = re.compile(r"API key not valid|API_KEY_INVALID", re.IGNORECASE)
_SECONDS = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


class GeminiLlm(BaseLlm):
    """Google's Gemini API (``generateContent``), the Gemini Developer API with a key.

    Args:
        model: The model; ``gemini-2.5-flash`` when None.
        api_key: The key; ``GOOGLE_API_KEY``, then ``GEMINI_API_KEY`` when None.
        base_url: The API root, optionally ending in its version; ``ORCHESTRA_GEMINI_BASE_URL``
            or Google's own when None.
        timeout: Seconds one call may take.

    Raises:
        MissingCredentialsError: No key was given or found in the environment.
    """

    provider: ClassVar[str] = "google-gemini"
    default_model: ClassVar[str | None] = "gemini-2.5-flash"
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
        from google import genai
        from google.genai import types

        key = api_key or next((os.environ[v] for v in _KEY_ENV if os.environ.get(v)), None)
        if not key:
            raise MissingCredentialsError(self.provider, _KEY_ENV)
        self.base_url = base_url or os.environ.get("ORCHESTRA_GEMINI_BASE_URL")
        versioned = _VERSIONED.match(self.base_url or "")

        def client() -> Client:
            options = types.HttpOptions(
                base_url=versioned["root"] if versioned else self.base_url,
                api_version=versioned["version"] if versioned else "v1beta",
                timeout=max(1, round(timeout * 1000)),  # milliseconds
                retry_options=types.HttpRetryOptions(attempts=1),
            )
            return genai.Client(api_key=key, vertexai=False, http_options=options)

        self._clients = LoopBound(client, _close, first=client())

    async def generate(self, request: LlmRequest) -> LlmResponse:
        """Answer one request (see the module docstring for usage and errors)."""
        started = perf_counter()
        params = self._params(request)
        try:
            client = await self._clients.get()
            answer = await client.aio.models.generate_content(**params)
        except Exception as exc:
            raise self._error(exc) from exc
        self._refuse_blocked_prompt(answer)
        if not answer.candidates:
            raise LLMBadResponseError(
                f"{self.provider}: the answer has no candidates", provider=self.provider
            )
        candidate = answer.candidates[0]
        calls = _calls(candidate, 0)
        return LlmResponse(
            text=_text(candidate),
            provider=self.provider,
            model=answer.model_version or self.model,
            finish_reason="tool_calls" if calls else self._finish(candidate.finish_reason),
            usage=_usage(answer.usage_metadata),
            latency_s=perf_counter() - started,
            response_id=answer.response_id,
            tool_calls=calls,
        )

    async def stream(self, request: LlmRequest) -> AsyncIterator[StreamChunk]:
        """Stream one answer; the last chunk carries the whole response and its usage."""
        started = perf_counter()
        parts: list[str] = []
        calls: tuple[ToolCall, ...] = ()  # each arrives whole, in the event that carries it
        reason: object = None
        usage = Usage()
        model, response_id = self.model, None
        params = self._params(request)
        try:
            client = await self._clients.get()
            events = await client.aio.models.generate_content_stream(**params)
            async for event in events:
                model, response_id = event.model_version or model, event.response_id or response_id
                if event.usage_metadata is not None:
                    usage = _usage(event.usage_metadata)
                self._refuse_blocked_prompt(event)
                for candidate in (event.candidates or [])[:1]:
                    if delta := _text(candidate):
                        parts.append(delta)
                        yield StreamChunk(delta=delta)
                    calls += _calls(candidate, len(calls))
                    reason = candidate.finish_reason or reason
        except OrchestraError:
            raise
        except Exception as exc:
            raise self._error(exc) from exc
        if reason is None:
            raise LLMBadResponseError(
                f"{self.provider}: the stream ended before the answer was complete",
                provider=self.provider,
            )
        response = LlmResponse(
            text="".join(parts),
            provider=self.provider,
            model=model,
            finish_reason="tool_calls" if calls else self._finish(reason),
            usage=usage,
            latency_s=perf_counter() - started,
            response_id=response_id,
            tool_calls=calls,
        )
        yield StreamChunk(done=True, response=response)

    async def aclose(self) -> None:
        """Close the clients' aiohttp sessions and HTTP clients."""
        await self._clients.aclose()

    def _params(self, request: LlmRequest) -> dict[str, Any]:
        """The SDK's arguments for a request.

        Raises:
            InvalidRequestError: The request carries a grammar.
        """
        from google.genai import types

        refuse_grammar(self.provider, request)
        schema = request.output_schema.json_schema if request.output_schema else None
        json_out = schema is not None or request.response_format == "json"
        config = types.GenerateContentConfig(
            **_tool_config(request),
            system_instruction=request.system,
            max_output_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop_sequences=list(request.stop) if request.stop else None,
            seed=request.seed,
            response_mime_type="application/json" if json_out else None,
            response_json_schema=schema,
        )
        contents = _contents(request)
        return {"model": request.model or self.model, "contents": contents, "config": config}

    def _finish(self, reason: object) -> FinishReason | None:
        """The finish reason in our terms; an answer withheld by a filter raises."""
        if reason is None:
            return None
        name = str(getattr(reason, "value", reason))
        if name in _FILTERED:
            raise LLMContentFilterError(
                f"{self.provider}: the answer was withheld ({name})", provider=self.provider
            )
        return _FINISH.get(name, "error")

    def _refuse_blocked_prompt(self, answer: gt.GenerateContentResponse) -> None:
        feedback = answer.prompt_feedback
        if feedback is not None and feedback.block_reason is not None:
            reason = getattr(feedback.block_reason, "value", feedback.block_reason)
            raise LLMContentFilterError(
                f"{self.provider}: the prompt was blocked ({reason})", provider=self.provider
            )

    def _error(self, exc: Exception) -> OrchestraError:
        """The error tree's class for an SDK or transport exception, most specific first."""
        from google.genai import errors

        if isinstance(exc, errors.APIError):
            code = exc.code if isinstance(exc.code, int) else 500  # an error event without one
            message = exc.message or str(exc)
            text = f"{self.provider}: HTTP {code} {exc.status}: {message}"
            if code == 400 and _BAD_KEY.search(f"{message} {exc.details}"):
                return LLMAuthenticationError(f"{text} (check the API key)", provider=self.provider)
            if code == 400 and _TOKEN_LIMIT.search(message):
                return LLMContextLengthError(text, provider=self.provider)
            headers = getattr(exc.response, "headers", None)  # aiohttp's, or the SDK's own
            error = error_from_status(
                code,
                message,
                provider=self.provider,
                headers=headers if isinstance(headers, Mapping) else None,
                code=exc.status,
            )
            if isinstance(error, LLMRateLimitError) and error.retry_after is None:
                error.retry_after = _retry_delay(exc.details)
            return error
        # aiohttp's read and connect timeouts are TimeoutErrors (and connection errors).
        if isinstance(exc, TimeoutError) and not caused_by(exc, ConnectionError):
            return LLMTimeoutError(f"{self.provider}: timed out", provider=self.provider)
        if isinstance(exc, aiohttp.ClientConnectionError | OSError):
            return connection_error(
                exc,
                provider=self.provider,
                url=self.base_url or GEMINI_API_URL,
                remedy="Is the server running, and the address right? Check "
                "ORCHESTRA_GEMINI_BASE_URL or base_url=.",
            )
        # Unparsable JSON, a body that fails validation, a payload cut mid-chunk.
        return LLMBadResponseError(
            f"{self.provider}: malformed answer: {type(exc).__name__}: {exc}",
            provider=self.provider,
        )


async def _close(client: Client) -> None:
    await client.aio.aclose()
    client.close()


_MODES = {"auto": "AUTO", "required": "ANY", "none": "NONE"}


def _tool_config(request: LlmRequest) -> dict[str, Any]:
    """``GenerateContentConfig``'s tool fields (none when the request has no tools)."""
    from google.genai import types

    if not request.tools:
        return {}
    declarations = [
        types.FunctionDeclaration(
            name=tool.name,
            description=tool.description,
            parameters_json_schema=_without_additional_properties(tool.parameters),
        )
        for tool in request.tools
    ]
    fields: dict[str, Any] = {
        "tools": [types.Tool(function_declarations=declarations)],
        # Only declarations are given, but say it: the SDK must never call anything itself.
        "automatic_function_calling": types.AutomaticFunctionCallingConfig(disable=True),
    }
    if request.tool_choice is not None:
        mode = types.FunctionCallingConfig(mode=_MODES[request.tool_choice])  # type: ignore[arg-type]
        fields["tool_config"] = types.ToolConfig(function_calling_config=mode)
    return fields


def _without_additional_properties(schema: Any) -> Any:
    """``schema`` without ``additionalProperties`` anywhere (Gemini refuses the keyword)."""
    return rewrite_keywords(
        schema, lambda key, value: None if key == "additionalProperties" else (key, value)
    )


def _contents(request: LlmRequest) -> list[gt.Content]:
    """The conversation as Gemini's contents; one turn's tool results in one user turn."""
    from google.genai import types

    contents: list[types.Content] = []
    for message in request.messages:
        if message.role == "tool":
            outcome = "error" if message.is_error else "result"
            part = types.Part(
                function_response=types.FunctionResponse(
                    name=message.name, response={outcome: message.content}
                )
            )
            last = contents[-1] if contents else None
            if last is not None and last.role == "user" and _only_results(last):
                (last.parts or []).append(part)
            else:
                contents.append(types.Content(role="user", parts=[part]))
            continue
        parts = [types.Part(text=message.content)] if message.content else []
        parts += [
            types.Part(
                function_call=types.FunctionCall(name=c.name, args=_args(c.arguments)),
                # Gemini 3 refuses a call sent back without the signature it came with.
                thought_signature=base64.b64decode(c.signature) if c.signature else None,
            )
            for c in message.tool_calls
        ]
        role = "model" if message.role == "assistant" else "user"
        contents.append(types.Content(role=role, parts=parts or [types.Part(text="")]))
    return contents


def _only_results(content: gt.Content) -> bool:
    return all(part.function_response is not None for part in content.parts or [])


def _args(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": value}


def _calls(candidate: gt.Candidate, first: int) -> tuple[ToolCall, ...]:
    """The ``functionCall`` parts of a candidate, numbered on from ``first`` when id-less."""
    parts = candidate.content.parts if candidate.content else None
    found = [p for p in parts or [] if p.function_call is not None]
    return tuple(
        ToolCall(
            id=part.function_call.id or f"call_{first + number}",
            name=part.function_call.name or "",
            arguments=json.dumps(part.function_call.args or {}, ensure_ascii=False),
            signature=base64.b64encode(part.thought_signature).decode()
            if part.thought_signature
            else None,
        )
        for number, part in enumerate(found)
        if part.function_call is not None
    )


def _text(candidate: gt.Candidate) -> str:
    """The answer's text, without thought summaries."""
    parts = candidate.content.parts if candidate.content else None
    return "".join(p.text for p in parts or [] if p.text and not p.thought)


def _usage(meta: gt.GenerateContentResponseUsageMetadata | None) -> Usage:
    if meta is None:
        return Usage()
    answer, thoughts = meta.candidates_token_count, meta.thoughts_token_count
    both = (answer or 0) + (thoughts or 0)
    return Usage(
        input_tokens=meta.prompt_token_count,
        output_tokens=None if answer is None and thoughts is None else both,
        cache_read_tokens=meta.cached_content_token_count,
        reasoning_tokens=thoughts,
    )


def _retry_delay(body: Any) -> float | None:
    """Seconds from the ``google.rpc.RetryInfo`` detail (``"retryDelay": "7s"``), if any."""
    error = body.get("error", body) if isinstance(body, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("rpc.RetryInfo"):
            seconds = _SECONDS.match(str(detail.get("retryDelay", "")))
            if seconds:
                return float(seconds[1])
    return None
