"""Ollama's native API: ``POST /api/chat`` (JSON, or NDJSON when streaming) and ``GET /api/tags``.

Faithful to what Ollama sends: a chat answer is ``{"model", "created_at", "message",
"done": true, "done_reason", "prompt_eval_count", "eval_count", ...durations}``; a stream is
one such object per line, ``done: false`` with a message delta until the last line, which
carries ``done_reason`` and the counts. ``stream`` defaults to true when the body omits it,
as in Ollama. Errors are ``{"error": "..."}`` with their HTTP status.

Scripting: ``usage`` holds Ollama's own fields (``prompt_eval_count``, ``eval_count``);
``cut`` ends a stream after that many lines; a dict ``body`` without a ``status`` is sent as
one more stream line where the stream stops (an ``{"error": ...}`` line mid-stream), or, for
``/api/tags``, as the whole answer.

``format`` is checked as Ollama checks it: ``"json"``, or a JSON schema (an object); any
other value is a 400 before anything is answered.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tests.fakes.server import LoopbackServer, Scripted, answer_error

PULLED = ("llama3.2:latest", "qwen2.5:0.5b")


def ollama_app(server: LoopbackServer) -> web.Application:
    """The application ``LoopbackServer`` serves."""

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        scripted = server.next_answer(body, dict(request.headers))
        await asyncio.sleep(scripted.delay)
        fmt = body.get("format")
        if fmt not in (None, "", "json") and not isinstance(fmt, dict):
            error = 'invalid format: expected "json" or a valid JSON schema'
            return web.json_response({"error": error}, status=400)
        if scripted.status is not None:
            return await answer_error(scripted)
        if isinstance(scripted.body, bytes):
            return web.Response(body=scripted.body, content_type="application/json")
        counts = scripted.usage or _counts(body, scripted)
        if body.get("stream", True):
            return await _stream(request, body, scripted, counts)
        answer = _line(body, scripted.text, done=True) | _final(scripted, counts)
        if scripted.tool_calls:
            answer["message"]["tool_calls"] = _calls(scripted)
        return web.json_response(answer)

    async def tags(request: web.Request) -> web.Response:
        scripted = server.next_answer({"GET": "/api/tags"}, dict(request.headers))
        if scripted.status is not None:
            return await answer_error(scripted)
        if isinstance(scripted.body, dict):
            return web.json_response(scripted.body)
        models = [
            {"name": name, "model": name, "size": 1_000_000, "digest": "0" * 64} for name in PULLED
        ]
        return web.json_response({"models": models})

    app = web.Application()
    app.router.add_post("/api/chat", chat)
    app.router.add_get("/api/tags", tags)
    return app


async def _stream(
    request: web.Request, body: dict[str, Any], scripted: Scripted, counts: dict[str, Any]
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    words = scripted.text.split(" ") if scripted.text or not scripted.tool_calls else []
    deltas = [word if i == 0 else f" {word}" for i, word in enumerate(words)]
    for count, delta in enumerate(deltas):
        if scripted.cut is not None and count >= scripted.cut:
            break
        await _write(response, _line(body, delta, done=False))
    if scripted.tool_calls:  # each call whole, in one line, as Ollama streams them
        line = _line(body, "", done=False)
        line["message"]["tool_calls"] = _calls(scripted)
        await _write(response, line)
    if isinstance(scripted.body, dict):
        await _write(response, scripted.body)  # an error line where the stream stops
    elif scripted.cut is None:
        await _write(response, _line(body, "", done=True) | _final(scripted, counts))
    return response  # when cut, the connection ends without the ``done`` line


async def _write(response: web.StreamResponse, line: dict[str, Any]) -> None:
    await response.write(json.dumps(line).encode() + b"\n")


def _line(body: dict[str, Any], content: str, *, done: bool) -> dict[str, Any]:
    return {
        "model": body["model"],
        "created_at": datetime.now(UTC).isoformat(),
        "message": {"role": "assistant", "content": content},
        "done": done,
    }


def _final(scripted: Scripted, counts: dict[str, Any]) -> dict[str, Any]:
    return {
        "done_reason": scripted.finish or "stop",
        "total_duration": 5_000_000,
        "load_duration": 1_000_000,
        "prompt_eval_duration": 1_000_000,
        "eval_duration": 3_000_000,
        **counts,
    }


def _calls(scripted: Scripted) -> list[dict[str, Any]]:
    """The scripted calls as Ollama sends them: arguments an object, no id."""
    return [
        {"function": {"index": n, "name": name, "arguments": arguments}}
        for n, (name, arguments) in enumerate(scripted.tool_calls or ())
    ]


def _counts(body: dict[str, Any], scripted: Scripted) -> dict[str, Any]:
    prompt = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
    said = " ".join([scripted.text, *(json.dumps(c[1]) for c in scripted.tool_calls or ())])
    return {"prompt_eval_count": prompt, "eval_count": len(said.split())}
