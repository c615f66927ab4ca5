"""A loopback server that fails on purpose, for retry, fallback and resume tests and benchmarks.

It speaks OpenAI's chat completions (``POST /v1/chat/completions``) and Anthropic's Messages
(``POST /v1/messages``), plain and streamed, in the wire format of the sibling fakes
``openai_api`` and ``anthropic_api``, so the real SDKs accept its answers and its faults.

Which call fails, and how:

* Every call has a *key*: the ``ID`` of a ``[[task:ID]]`` marker in the last user message, or
  else that whole message. Its *attempt* is 1 + the calls with the same key before it.
* ``FaultPlan.pick`` hashes (seed, key, attempt) into two numbers: the first decides whether
  the call faults (a ``rate`` share of calls do), the second which kind (by ``kinds`` weight).
  Other keys' traffic and arrival order change nothing, and ``max_faults_per_key`` caps a
  key's faults, so a retry policy with enough attempts always gets through.
* A ``[[KIND]]`` marker (``[[401]]``, ``[[context]]``, ``[[429]]``...) in the last user
  message forces that kind on every call that carries it, whatever the plan says.

Kinds, on both routes (HTTP status; OpenAI's error ``code`` / Anthropic's error ``type``):

* ``429``: 429 with ``Retry-After`` (and ``retry-after-ms`` if asked);
  ``rate_limit_exceeded`` / ``rate_limit_error``.
* ``500``: 500; ``server_error`` / ``api_error``.
* ``529``: 529; ``overloaded`` / ``overloaded_error``. ``Retry-After`` too when the plan's
  ``retry_after_kinds`` names it, as real Anthropic 529s do; not by default, since tests
  count on a 529 being left to the client's own backoff.
* ``reset``: the connection is reset (RST) before any answer.
* ``timeout``: no answer for ``hang`` seconds (cut short by shutdown), then a reset.
* ``cut``: a stream sends its first text piece and ends, without finish, usage or stop
  events; a plain answer announces its full length, sends half the body, then resets.
* ``malformed``: a 200 with JSON that is no answer: OpenAI ``{"id", "object"}`` without
  ``choices``, Anthropic ``{"type": "message"}`` without content; a stream sends one such
  chunk (``message_start`` without its message) and ends properly.
* ``badjson``: a 200 ``application/json`` whose body is cut mid-JSON
  (``{"id": "chatcmpl-faults", "cho``); in a stream, the first event's data is.
* ``502``: 502 from a proxy: ``text/html``, nginx's "502 Bad Gateway" page.
* ``401`` (marker only): 401; ``invalid_api_key`` / ``authentication_error``.
* ``context`` (marker only): 400; ``context_length_exceeded`` / ``invalid_request_error``
  with "prompt is too long".
* ``surrogate`` (marker only): a good answer whose text ends in a lone surrogate, sent as
  the JSON escape ``\\ud800`` (``done:KEY \\ud800``; streamed, in the last text delta).
* ``nousage`` (marker only): a good answer without any usage: no ``usage`` key, no usage
  chunk even when asked for, ``message_start`` and ``message_delta`` without usage.

The default ``kinds`` weighs only the first six (``DEFAULT_KINDS``), so a seed picks what it
always did; ``malformed``, ``badjson`` and ``502`` are opt-in through ``kinds`` (``--kinds``)
or a marker. ``surrogate`` and ``nousage`` are logged under their kind, not ``ok``.

A good answer's text is ``done:KEY``, streamed as ``done:`` then ``KEY``. Its usage is
``INPUT_TOKENS`` in and ``OUTPUT_TOKENS`` out, or with ``usage="chars"`` one input token per
character of the messages' and system prompt's text (a non-English prompt is not cheaper
than it looks) and as many output tokens as the request's ``max_tokens`` (OpenAI:
``max_completion_tokens`` or ``max_tokens``) allows, ``CHARS_OUTPUT_TOKENS`` without one;
``answer_tokens`` sets the output count instead, capped by ``max_tokens``. The text is the
same either way. Every call lands in a thread-safe ``CallLog``, optionally appended to a
file as JSON lines, flushed line by line.

Run it in-process (``with FaultServer(FaultPlan(rate=0.3, seed=1)) as server: server.url``)
or as a child process: ``python -m tests.fakes.faults --port 0 --rate 0.3 --log calls.jsonl``
prints the bound port on its first line and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import re
import signal
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TextIO

from aiohttp import web

from tests.fakes.anthropic_api import MESSAGE_ID, error_body
from tests.fakes.server import LoopbackServer

__all__ = [
    "CHARS_OUTPUT_TOKENS",
    "DEFAULT_KINDS",
    "INPUT_TOKENS",
    "KINDS",
    "MARKER_KINDS",
    "OK",
    "OUTPUT_TOKENS",
    "RANDOM_KINDS",
    "Call",
    "CallLog",
    "FaultPlan",
    "FaultServer",
    "Faults",
    "fault_app",
    "main",
]

OK = "ok"
DEFAULT_KINDS = ("429", "500", "529", "reset", "timeout", "cut")  # weighed 1 by default
RANDOM_KINDS = (*DEFAULT_KINDS, "malformed", "badjson", "502")
MARKER_KINDS = ("401", "context", "surrogate", "nousage")
KINDS = RANDOM_KINDS + MARKER_KINDS
INPUT_TOKENS = 10
OUTPUT_TOKENS = 5
CHARS_OUTPUT_TOKENS = 4096  # output tokens with usage="chars" when the request sets no limit

_STATUS_KINDS = frozenset({"429", "500", "529", "502", "401", "context"})  # an HTTP error
_TASK = re.compile(r"\[\[task:([^\]]+)\]\]")
_MARKER = re.compile(r"\[\[([\w-]+)\]\]")


@dataclass(frozen=True)
class FaultPlan:
    """Which calls fault, with what, and how the server behaves.

    Attributes:
        rate: The share of calls that get a random fault, 0 to 1.
        kinds: Relative weights of the random kinds (keys from ``RANDOM_KINDS``).
        seed: Seeds the per-call hash; the same seed gives the same faults per key.
        max_faults_per_key: After this many faults for a key, its calls succeed (None: no cap).
        retry_after: Seconds in the ``Retry-After`` header of ``retry_after_kinds`` (None:
            no header).
        retry_after_ms: Also send ``retry-after-ms`` with them.
        retry_after_kinds: The error kinds that say when to come back; add ``"529"`` to
            answer like Anthropic's overload, ``"502"`` or ``"500"`` like some gateways.
        hang: Seconds a ``timeout`` call is held before its connection is reset.
        latency: Seconds every call waits before it is answered.
        usage: ``"fixed"``: ``INPUT_TOKENS`` and ``OUTPUT_TOKENS``; ``"chars"``: a token per
            character of the prompt, and the request's ``max_tokens`` (module docstring).
        answer_tokens: Output tokens to report instead, capped by the request's
            ``max_tokens`` (None: as ``usage`` says).
    """

    rate: float = 0.0
    kinds: Mapping[str, float] = field(default_factory=lambda: dict.fromkeys(DEFAULT_KINDS, 1.0))
    seed: int = 0
    max_faults_per_key: int | None = None
    retry_after: float | None = 1.0
    retry_after_ms: bool = False
    retry_after_kinds: Sequence[str] = ("429",)
    hang: float = 30.0
    latency: float = 0.0
    usage: Literal["fixed", "chars"] = "fixed"
    answer_tokens: int | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kinds) - set(RANDOM_KINDS))
        if unknown:
            markers = ", ".join(f"[[{kind}]]" for kind in MARKER_KINDS)
            raise ValueError(
                f"unknown fault kinds {unknown}: use {list(RANDOM_KINDS)} "
                f"({', '.join(MARKER_KINDS)} come only from the prompt markers {markers})"
            )
        if not set(self.retry_after_kinds) <= _STATUS_KINDS:
            raise ValueError(
                f"retry_after_kinds must be among {sorted(_STATUS_KINDS)}, "
                f"not {list(self.retry_after_kinds)}"
            )
        if self.usage not in ("fixed", "chars"):
            raise ValueError(f"usage must be 'fixed' or 'chars', not {self.usage!r}")
        if self.answer_tokens is not None and self.answer_tokens < 0:
            raise ValueError("answer_tokens cannot be negative")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate must be between 0 and 1, not {self.rate}")
        if any(weight < 0 for weight in self.kinds.values()):
            raise ValueError("fault kind weights cannot be negative")
        if self.rate > 0 and not any(weight > 0 for weight in self.kinds.values()):
            raise ValueError("a fault rate above 0 needs a kind with a positive weight")
        if min(self.hang, self.latency) < 0:
            raise ValueError("hang and latency cannot be negative")

    def pick(self, key: str, attempt: int, faults: int) -> str:
        """What attempt number ``attempt`` (from 1) for ``key`` gets, after ``faults`` faults."""
        if self.max_faults_per_key is not None and faults >= self.max_faults_per_key:
            return OK
        seed = f"{self.seed}\x00{key}\x00{attempt}".encode()
        digest = hashlib.blake2b(seed, digest_size=16).digest()
        if int.from_bytes(digest[:8]) / 2**64 >= self.rate:
            return OK
        weighted = [(kind, self.kinds[kind]) for kind in sorted(self.kinds) if self.kinds[kind]]
        point = int.from_bytes(digest[8:]) / 2**64 * sum(weight for _, weight in weighted)
        for kind, weight in weighted:
            point -= weight
            if point < 0:
                return kind
        return weighted[-1][0]  # rounding at the very top of the range


@dataclass(frozen=True)
class Call:
    """One request as the server saw it, and what it got.

    Attributes:
        seq: Order of arrival at this log, from 0.
        key: The task key (``[[task:ID]]``'s ID, or the last user message).
        attempt: 1 + the earlier calls with the same key.
        route: ``"openai"`` or ``"anthropic"``.
        stream: Whether the request asked for a stream.
        kind: ``"ok"`` or the fault kind it got.
        at: Arrival time, seconds since the epoch (``time.time()``).
    """

    seq: int
    key: str
    attempt: int
    route: str
    stream: bool
    kind: str
    at: float


class CallLog:
    """Every call, in arrival order; thread-safe, optionally appended to a JSON-lines file.

    Args:
        path: A file each call is appended to as one JSON object a line, flushed at once.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self._lock = threading.Lock()
        self._calls: list[Call] = []
        self._by_key: dict[str, list[Call]] = {}
        self._file: TextIO | None = None
        if path is not None:
            self._file = Path(path).open("a", encoding="utf-8")  # closed by close()

    @classmethod
    def load(cls, path: str | Path) -> CallLog:
        """The calls another process appended to ``path`` (a half-written last line skipped)."""
        log = cls()
        for line in Path(path).read_text(encoding="utf-8").splitlines(keepends=True):
            if line.endswith("\n"):
                log._add(Call(**json.loads(line)))
        return log

    def admit(self, key: str, route: str, stream: bool, decide: Callable[[int, int], str]) -> Call:
        """Record the next call for ``key``; ``decide(attempt, faults so far)`` names its kind."""
        with self._lock:
            earlier = self._by_key.get(key, [])
            faults = sum(call.kind != OK for call in earlier)
            kind = decide(len(earlier) + 1, faults)
            call = Call(len(self._calls), key, len(earlier) + 1, route, stream, kind, time.time())
            self._add(call)
            if self._file is not None:
                self._file.write(json.dumps(asdict(call)) + "\n")
                self._file.flush()
        return call

    def _add(self, call: Call) -> None:
        self._calls.append(call)
        self._by_key.setdefault(call.key, []).append(call)

    @property
    def calls(self) -> list[Call]:
        """All calls so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._calls)

    def calls_for(self, key: str) -> list[Call]:
        """The calls with ``key``, in order."""
        with self._lock:
            return list(self._by_key.get(key, []))

    def kinds_for(self, key: str) -> list[str]:
        """What each call with ``key`` got, in order: ``["429", "reset", "ok"]``."""
        return [call.kind for call in self.calls_for(key)]

    def ok_keys(self) -> set[str]:
        """The keys that got at least one plain good answer (``"ok"``)."""
        return {call.key for call in self.calls if call.kind == OK}

    def counts(self) -> Counter[str]:
        """How many calls got each kind, ``"ok"`` included."""
        return Counter(call.kind for call in self.calls)

    def clear(self) -> None:
        """Forget every call, so attempts count from 1 again (the file is kept)."""
        with self._lock:
            self._calls.clear()
            self._by_key.clear()

    def close(self) -> None:
        """Close the file, if there is one."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._calls)


class Faults:
    """What ``fault_app`` reads on every request: the plan (replace it any time) and the log."""

    def __init__(self, plan: FaultPlan | None = None, log: CallLog | None = None) -> None:
        self.plan = plan if plan is not None else FaultPlan()
        self.log = log if log is not None else CallLog()  # an empty log is falsy

    def reset(self, plan: FaultPlan | None = None) -> None:
        """Start afresh: a new plan (the default one when None) and an empty log."""
        self.plan = plan if plan is not None else FaultPlan()
        self.log.clear()


def fault_app(faults: Faults) -> web.Application:
    """The application: both vendors' routes, answering as ``faults.plan`` says."""
    closing = asyncio.Event()  # set on shutdown, so that no hanging call holds it up

    async def on_shutdown(_: web.Application) -> None:
        closing.set()

    def route(name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.json()
            text = _last_user_text(body)
            key, forced, plan = _key(text), _forced(text), faults.plan
            call = faults.log.admit(
                key, name, bool(body.get("stream")), lambda n, f: forced or plan.pick(key, n, f)
            )
            await asyncio.sleep(plan.latency)
            return await _answer(request, body, call, plan, closing)

        return handle

    app = web.Application()
    app.on_shutdown.append(on_shutdown)
    app.router.add_post("/v1/chat/completions", route("openai"))
    app.router.add_post("/v1/messages", route("anthropic"))
    return app


def _last_user_text(body: dict[str, Any]) -> str:
    users = [m for m in body.get("messages") or [] if m.get("role") == "user"]
    return _text(users[-1].get("content")) if users else ""


def _text(content: Any) -> str:
    """The text of a message's content or of a system prompt: a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _key(text: str) -> str:
    task = _TASK.search(text)
    return task.group(1) if task else text


def _forced(text: str) -> str | None:
    return next((m for m in _MARKER.findall(text) if m in KINDS), None)


async def _answer(
    request: web.Request, body: dict[str, Any], call: Call, plan: FaultPlan, closing: asyncio.Event
) -> web.StreamResponse:
    if call.kind == "timeout":
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(closing.wait(), plan.hang)
        return _reset(request)
    if call.kind == "reset":
        return _reset(request)
    headers = _retry_headers(call, plan)
    if call.kind == "502":
        return web.Response(
            status=502, body=_BAD_GATEWAY, content_type="text/html", headers=headers
        )
    if call.kind in _STATUS_KINDS:
        status, error = _error(call.route, call.kind)
        return web.json_response(error, status=status, headers=headers)
    if call.kind in ("malformed", "badjson"):
        content_type = "text/event-stream" if call.stream else "application/json"
        data = _NOT_ANSWERS[call.kind, call.route, call.stream]
        return web.Response(body=data, content_type=content_type)
    return await _good(request, body, call, plan)


async def _good(
    request: web.Request, body: dict[str, Any], call: Call, plan: FaultPlan
) -> web.StreamResponse:
    """An answer (``ok``, ``surrogate``, ``nousage``), or half of one (``cut``)."""
    text = f"done:{call.key} \ud800" if call.kind == "surrogate" else f"done:{call.key}"
    usage = None if call.kind == "nousage" else _tokens(body, plan)
    openai, cut = call.route == "openai", call.kind == "cut"
    if call.stream:
        stream = _openai_frames if openai else _anthropic_frames
        frames, keep = stream(body, text, usage)
        return await _send_stream(request, frames[:keep] if cut else frames)
    answer = (_openai_answer if openai else _anthropic_answer)(body, text, usage)
    data = json.dumps(answer).encode()  # ASCII: a lone surrogate goes out as its escape
    if not cut:
        return web.Response(body=data, content_type="application/json")
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = len(data)
    await response.prepare(request)
    await response.write(data[: len(data) // 2])
    _reset(request)
    return response


def _reset(request: web.Request) -> web.Response:
    """Reset the connection (RST, not a polite close); aiohttp ignores what is returned."""
    transport = request.transport
    if transport is None:  # the client has gone already
        return web.Response()
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # closed under us: the abort alone will do
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    return web.Response()


_OPENAI_ERRORS = {  # kind: (status, type, code, message)
    "429": (429, "requests", "rate_limit_exceeded", "Rate limit reached; try again later."),
    "500": (500, "server_error", None, "The server had an error processing your request."),
    "529": (529, "server_error", "overloaded", "The server is overloaded; try again later."),
    "401": (401, "invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    "context": (
        400,
        "invalid_request_error",
        "context_length_exceeded",
        "This model's maximum context length is 128000 tokens; your messages have 130000.",
    ),
}
_ANTHROPIC_ERRORS = {  # kind: (status, type, message)
    "429": (429, "rate_limit_error", "Rate limit exceeded; try again later."),
    "500": (500, "api_error", "Internal server error"),
    "529": (529, "overloaded_error", "Overloaded"),
    "401": (401, "authentication_error", "invalid x-api-key"),
    "context": (400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000"),
}
_BAD_GATEWAY = (  # what nginx answers when the upstream fails
    b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway"
    b"</h1></center><hr><center>nginx</center></body></html>"
)
_NOT_ANSWERS = {  # (kind, route, stream): the body of a 200 that is no answer
    ("malformed", "openai", False): b'{"id": "chatcmpl-faults", "object": "chat.completion"}',
    ("malformed", "anthropic", False): b'{"type": "message"}',
    ("badjson", "openai", False): b'{"id": "chatcmpl-faults", "cho',
    ("badjson", "anthropic", False): b'{"id": "msg_faults", "ty',
    ("malformed", "openai", True): (
        b'data: {"id": "chatcmpl-faults", "object": "chat.completion.chunk"}\n\ndata: [DONE]\n\n'
    ),
    ("malformed", "anthropic", True): (
        b'event: message_start\ndata: {"type": "message_start"}\n\n'
        b'event: message_stop\ndata: {"type": "message_stop"}\n\n'
    ),
    ("badjson", "openai", True): b'data: {"id": "chatcmpl-faults", "cho\n\n',
    ("badjson", "anthropic", True): b'event: message_start\ndata: {"type": "message_st\n\n',
}


def _error(route: str, kind: str) -> tuple[int, dict[str, Any]]:
    if route == "openai":
        status, kind_type, code, message = _OPENAI_ERRORS[kind]
        return status, {
            "error": {"message": message, "type": kind_type, "param": None, "code": code}
        }
    status, kind_type, message = _ANTHROPIC_ERRORS[kind]
    return status, error_body(kind_type, message)


def _retry_headers(call: Call, plan: FaultPlan) -> dict[str, str]:
    if call.kind not in plan.retry_after_kinds or plan.retry_after is None:
        return {}
    headers = {"Retry-After": f"{plan.retry_after:g}"}
    if plan.retry_after_ms:
        headers["retry-after-ms"] = f"{plan.retry_after * 1000:g}"
    return headers


def _tokens(body: dict[str, Any], plan: FaultPlan) -> tuple[int, int]:
    """The input and output tokens a good answer reports (module docstring)."""
    limits = (body.get(name) for name in ("max_completion_tokens", "max_tokens"))
    limit = next((int(value) for value in limits if value is not None), None)
    tokens_in, tokens_out = INPUT_TOKENS, OUTPUT_TOKENS
    if plan.usage == "chars":
        texts = [_text(body.get("system"))]
        texts += [_text(message.get("content")) for message in body.get("messages") or []]
        tokens_in = sum(map(len, texts))
        tokens_out = CHARS_OUTPUT_TOKENS if limit is None else limit
    if plan.answer_tokens is not None:
        tokens_out = plan.answer_tokens if limit is None else min(plan.answer_tokens, limit)
    return tokens_in, tokens_out


def _pieces(text: str) -> list[str]:
    head, _, tail = text.partition(":")
    return [f"{head}:", tail]


def _openai_usage(usage: tuple[int, int]) -> dict[str, int]:
    prompt, completion = usage
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _openai_answer(
    body: dict[str, Any], text: str, usage: tuple[int, int] | None
) -> dict[str, Any]:
    message = {"role": "assistant", "content": text}
    answer = {
        "id": "chatcmpl-faults",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", ""),
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }
    if usage is not None:
        answer["usage"] = _openai_usage(usage)
    return answer


def _openai_frames(
    body: dict[str, Any], text: str, usage: tuple[int, int] | None
) -> tuple[list[bytes], int]:
    """The SSE frames of a streamed answer, and how many of them a cut stream sends."""

    def chunk(choices: list[dict[str, Any]], **fields: Any) -> bytes:
        data = {
            "id": "chatcmpl-faults",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": choices,
            **fields,
        }
        return f"data: {json.dumps(data)}\n\n".encode()

    fields = {} if usage is None else {"usage": None}  # nousage: not even a null
    deltas = [{"role": "assistant", "content": ""}] + [{"content": p} for p in _pieces(text)]
    frames = [chunk([{"index": 0, "delta": d, "finish_reason": None}], **fields) for d in deltas]
    frames.append(chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}], **fields))
    if usage is not None and (body.get("stream_options") or {}).get("include_usage"):
        frames.append(chunk([], usage=_openai_usage(usage)))
    return [*frames, b"data: [DONE]\n\n"], 2


def _anthropic_answer(
    body: dict[str, Any], text: str, usage: tuple[int, int] | None
) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "id": MESSAGE_ID,
        "type": "message",
        "role": "assistant",
        "model": body.get("model", ""),
        "content": [{"type": "text", "text": text}] if text else [],
        "stop_reason": "end_turn" if text else None,
        "stop_sequence": None,
    }
    if usage is not None:
        answer["usage"] = {
            "input_tokens": usage[0],
            "output_tokens": usage[1],
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
    return answer


def _anthropic_frames(
    body: dict[str, Any], text: str, usage: tuple[int, int] | None
) -> tuple[list[bytes], int]:
    """The SSE frames of a streamed answer, and how many of them a cut stream sends."""
    block = {"type": "text", "text": ""}
    start = None if usage is None else (usage[0], 1)  # the output so far: one token
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": _anthropic_answer(body, "", start)},
        {"type": "content_block_start", "index": 0, "content_block": block},
        {"type": "ping"},
    ]
    events += [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}
        for p in _pieces(text)
    ]
    end: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
    }
    if usage is not None:
        end["usage"] = {"output_tokens": usage[1]}
    events += [{"type": "content_block_stop", "index": 0}, end, {"type": "message_stop"}]
    frames = [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events]
    return frames, 4


async def _send_stream(request: web.Request, frames: Sequence[bytes]) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for frame in frames:
        await response.write(frame)
    return response


class FaultServer(Faults):
    """``fault_app`` served in-process on a loopback port (``LoopbackServer``) until closed.

    Args:
        plan: The fault plan; replace ``server.plan`` to change it between tests.
        log_path: Also append the call log to this file as JSON lines.
    """

    def __init__(self, plan: FaultPlan | None = None, log_path: str | Path | None = None) -> None:
        super().__init__(plan, CallLog(log_path))
        self._loopback = LoopbackServer(lambda _: fault_app(self))
        self.url = self._loopback.url
        self.port: int = self._loopback.port

    def close(self) -> None:
        """Stop serving (a hanging call is reset, not waited for) and close the log file."""
        self._loopback.close()
        self.log.close()

    def __enter__(self) -> FaultServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _parse_kinds(value: str) -> dict[str, float]:
    pairs = (item.partition("=") for item in value.split(",") if item)
    return {kind.strip(): float(weight or 1) for kind, _, weight in pairs}


def _parse_names(value: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in value.split(",") if name.strip())


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.faults",
        description="A loopback OpenAI and Anthropic server that fails on purpose.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    parser.add_argument("--rate", type=float, default=0.0, help="share of calls that fault")
    parser.add_argument(
        "--kinds", type=_parse_kinds, help="weights: 429=2,reset=1 (default: the first six, 1)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-faults-per-key", type=int, default=None)
    parser.add_argument("--retry-after", type=float, default=1.0, help="seconds; <0: none")
    parser.add_argument("--retry-after-ms", action="store_true")
    parser.add_argument(
        "--retry-after-kinds", type=_parse_names, default=("429",), help="which send it: 429,529"
    )
    parser.add_argument("--hang", type=float, default=30.0, help="seconds a timeout holds")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before answers")
    parser.add_argument(
        "--usage", choices=("fixed", "chars"), default="fixed", help="chars: a token a character"
    )
    parser.add_argument("--answer-tokens", type=int, default=None, help="output tokens reported")
    parser.add_argument("--log", type=Path, default=None, help="append calls as JSON lines")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace, faults: Faults) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(fault_app(faults), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)  # type: ignore[union-attr]
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, printing the bound port on the first line of stdout."""
    args = _arguments(argv)
    plan = FaultPlan(
        rate=args.rate,
        kinds=args.kinds or dict.fromkeys(DEFAULT_KINDS, 1.0),
        seed=args.seed,
        max_faults_per_key=args.max_faults_per_key,
        retry_after=args.retry_after if args.retry_after >= 0 else None,
        retry_after_ms=args.retry_after_ms,
        retry_after_kinds=args.retry_after_kinds,
        hang=args.hang,
        latency=args.latency,
        usage=args.usage,
        answer_tokens=args.answer_tokens,
    )
    faults = Faults(plan, CallLog(args.log))
    try:
        asyncio.run(_serve(args, faults))
    finally:
        faults.log.close()


if __name__ == "__main__":
    main()
