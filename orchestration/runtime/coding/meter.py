"""A meter between a coding CLI and its vendor's API: what each answer used, as it comes.

A coding CLI says what it spent when it ends, if at all: Codex and the Gemini CLI have no
budget flag and print their tokens only at the end, and a CLI killed at its timeout prints
nothing. So each attempt talks to its API through a ``Meter``: a reverse proxy on a loopback
port that forwards every request as it is (the CLI's own headers and key; the meter adds
no credential, so it gives a caller nothing it did not bring) to the real endpoint, streams
each answer back unchanged, and reads the usage every answer carries on the way:

- Anthropic Messages: ``message_start``'s usage, then ``message_delta``'s (a count the delta
  gives replaces the start's), or a whole ``message``'s;
- OpenAI Responses: ``response.completed`` (or ``.incomplete``, ``.failed``), or a whole
  ``response``; OpenAI chat completions: a completion's (or a stream's last chunk's) usage;
- Gemini: each answer's (or stream event's) ``usageMetadata``, the last one whole;
- Ollama: ``prompt_eval_count`` and ``eval_count`` (its stream's last line has them).

Counts follow OpenTelemetry's rules (input includes cached and cache-written tokens;
Gemini's thoughts are output). Each answer is priced when it ends (``price``), and when the
total passes ``budget_usd`` the meter says so (``over_budget``): the CLI is then stopped.
What it read is the attempt's usage when the CLI reports none (killed, or failed).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import anyio
from aiohttp import ClientError, ClientSession, ClientTimeout, web

from llm_abstractions.types import Usage
from orchestration.runtime.tool_loop import add_usage

__all__ = ["Meter"]

# Not forwarded: they describe one hop, not the request (aiohttp sets its own).
_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",  # the answer must reach the meter readable
        "content-encoding",  # the client decompresses what it forwards
    }
)
_BODY_LIMIT = 64 << 20  # a whole (non-streamed) answer read for its usage, at most


class Meter:
    """A loopback proxy to ``upstream`` counting what each answer used.

    Use as ``async with Meter(upstream, price) as meter``: give the CLI ``meter.url``
    (``upstream``'s path on the meter's port) instead of ``upstream``. ``on_answer`` is told
    each answer's usage as it is counted (the attempt's progress).
    """

    def __init__(
        self,
        upstream: str,
        price: Callable[[str | None, Usage], float | None],
        budget_usd: float | None = None,
        on_answer: Callable[[Usage], None] | None = None,
    ) -> None:
        parts = urlsplit(upstream.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not an http(s) endpoint: {upstream!r}")
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._path = parts.path
        self._price = price
        self._on_answer = on_answer  # told each answer's usage once it is counted
        self.budget_usd = budget_usd
        self.usage: dict[str | None, Usage] = {}  # by model (None: the answer named none)
        self.spent_usd = 0.0
        self.unpriced: set[str | None] = set()  # models no price was found for
        self.answers = 0
        self.over_budget = anyio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._client: ClientSession | None = None

    async def __aenter__(self) -> Meter:
        app = web.Application(client_max_size=_BODY_LIMIT)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._client = ClientSession(
            timeout=ClientTimeout(total=None, sock_connect=30), auto_decompress=True
        )
        # Closed when the CLI is done: an answer still coming then is not waited for.
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}{self._path}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        with anyio.CancelScope(shield=True):
            if self._runner is not None:
                await self._runner.cleanup()
            if self._client is not None:
                await self._client.close()

    @property
    def total(self) -> Usage:
        """Every answer's usage together."""
        total = Usage()
        for usage in self.usage.values():
            total = add_usage(total, usage)
        return total

    @property
    def cost_usd(self) -> float | None:
        """What the answers cost (None: a model's price is unknown, or nothing was read)."""
        return None if self.unpriced or not self.answers else self.spent_usd

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if self._client is None:
            raise RuntimeError("a Meter forwards only inside `async with`")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        body = await request.read()
        try:
            upstream = await self._client.request(
                request.method,
                self._origin + request.rel_url.raw_path_qs,
                headers=headers,
                data=body,
                allow_redirects=False,
            )
        except (ClientError, OSError) as exc:
            said = {"error": {"type": "meter", "message": f"cannot reach the API: {exc}"}}
            return web.json_response(said, status=502)
        reading = _Reading(upstream.headers.get("Content-Type", ""), _model_asked(body))
        answer = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers={k: v for k, v in upstream.headers.items() if k.lower() not in _HOP},
        )
        try:
            async with upstream:
                await answer.prepare(request)
                async for chunk in upstream.content.iter_any():
                    reading.feed(chunk)
                    await answer.write(chunk)
                await answer.write_eof()
        except (ClientError, OSError):  # the CLI hung up (killed), or the API did
            # Cut off, not ended: the CLI must see the answer was not whole.
            if request.transport is not None:
                request.transport.abort()
        finally:  # what was read of it was used, and counts
            self._count(*reading.done())
        return answer

    def _count(self, model: str | None, usage: Usage | None) -> None:
        if usage is None:
            return
        self.answers += 1
        self.usage[model] = add_usage(self.usage.get(model, Usage()), usage)
        cost = self._price(model, usage)
        if cost is None:
            self.unpriced.add(model)
        else:
            self.spent_usd += cost
        if self.budget_usd is not None and self.spent_usd > self.budget_usd:
            self.over_budget.set()
        if self._on_answer is not None:
            self._on_answer(usage)


class _Reading:
    """One answer's usage, read from its body or its server-sent events as they pass."""

    def __init__(self, content_type: str, model: str | None) -> None:
        self.events = content_type.startswith("text/event-stream")
        self.model = model
        self.counts: dict[str, int] = {}
        self.seen = False
        self.buffer = bytearray()

    def feed(self, chunk: bytes) -> None:
        if not self.events:
            if len(self.buffer) + len(chunk) <= _BODY_LIMIT:
                self.buffer.extend(chunk)
            return
        self.buffer.extend(chunk)
        *lines, rest = self.buffer.split(b"\n")
        self.buffer = bytearray(rest)
        for line in lines:
            if line.startswith(b"data:"):
                self._read(line[5:])

    def done(self) -> tuple[str | None, Usage | None]:
        """The answer's model and usage (None: it reported no tokens)."""
        if self.events:  # a last event without its line end
            if self.buffer.startswith(b"data:"):
                self._read(self.buffer[5:])
        elif not self._read(self.buffer):  # else lines of JSON (Ollama's stream)
            for line in self.buffer.split(b"\n"):
                self._read(line)
        get = self.counts.get
        if not self.seen or (get("input") is None and get("output") is None):
            return self.model, None
        # A vendor may leave out a count that is zero (Gemini, for a prompt it blocked).
        return self.model, Usage(
            input_tokens=get("input", 0),
            output_tokens=get("output", 0),
            cache_read_tokens=get("cache_read"),
            cache_write_tokens=get("cache_write"),
            reasoning_tokens=get("reasoning"),
        )

    def _read(self, data: bytes | bytearray) -> bool:
        """Take one JSON object's counts; whether it was one."""
        try:
            found = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return False
        if isinstance(found, dict):
            self._take(found)
        return isinstance(found, dict)

    def _take(self, event: dict[str, Any]) -> None:
        """Counts from one JSON object of the answer, in whichever vendor's shape."""
        kind = event.get("type")
        if kind == "message_start" and isinstance(event.get("message"), dict):
            self._anthropic(event["message"], event["message"].get("usage"))
        elif kind == "message_delta" or kind == "message":
            self._anthropic(event, event.get("usage"))
        elif isinstance(kind, str) and kind.startswith("response."):
            response = event.get("response")
            if isinstance(response, dict) and response.get("usage"):
                self._openai(response, response["usage"])
        elif event.get("object") in ("response", "chat.completion", "chat.completion.chunk"):
            if event.get("usage"):
                self._openai(event, event["usage"])
        elif isinstance(event.get("usageMetadata"), dict):
            self._gemini(event, event["usageMetadata"])
        elif "prompt_eval_count" in event or "eval_count" in event:  # Ollama's own API
            self._name(event.get("model"))
            self._set(
                input=_int(event.get("prompt_eval_count")), output=_int(event.get("eval_count"))
            )

    def _anthropic(self, message: dict[str, Any], usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        self._name(message.get("model"))
        fresh = _int(usage.get("input_tokens"))
        read = _int(usage.get("cache_read_input_tokens"))
        written = _int(usage.get("cache_creation_input_tokens"))
        self._set(output=_int(usage.get("output_tokens")), cache_read=read, cache_write=written)
        if fresh is not None:
            self.counts["fresh"] = fresh
        if "fresh" in self.counts:
            get = self.counts.get
            self.counts["input"] = get("fresh", 0) + get("cache_read", 0) + get("cache_write", 0)

    def _openai(self, answer: dict[str, Any], usage: dict[str, Any]) -> None:
        self._name(answer.get("model"))
        details_in = usage.get("input_tokens_details") or usage.get("prompt_tokens_details")
        details_out = usage.get("output_tokens_details") or usage.get("completion_tokens_details")
        self._set(
            input=_int(usage.get("input_tokens", usage.get("prompt_tokens"))),
            output=_int(usage.get("output_tokens", usage.get("completion_tokens"))),
            cache_read=_int((details_in or {}).get("cached_tokens")),
            reasoning=_int((details_out or {}).get("reasoning_tokens")),
        )

    def _gemini(self, answer: dict[str, Any], usage: dict[str, Any]) -> None:
        self._name(answer.get("modelVersion"))
        prompt = _int(usage.get("promptTokenCount"))
        tool = _int(usage.get("toolUsePromptTokenCount"))
        said, thoughts = (
            _int(usage.get("candidatesTokenCount")),
            _int(usage.get("thoughtsTokenCount")),
        )
        self._set(
            input=None if prompt is None else prompt + (tool or 0),
            output=None if said is None and thoughts is None else (said or 0) + (thoughts or 0),
            cache_read=_int(usage.get("cachedContentTokenCount")),
            reasoning=thoughts,
        )

    def _name(self, model: object) -> None:
        if isinstance(model, str) and model:
            self.model = model

    def _set(self, **counts: int | None) -> None:
        """A count given replaces the one before (streams give running totals)."""
        self.seen = True
        for name, count in counts.items():
            if count is not None:
                self.counts[name] = count


def _model_asked(body: bytes) -> str | None:
    try:
        asked = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    model = asked.get("model") if isinstance(asked, dict) else None
    return model if isinstance(model, str) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
