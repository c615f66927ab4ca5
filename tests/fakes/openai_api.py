"""OpenAI's chat completions (``POST /v1/chat/completions``), plain and as server-sent events.

Faithful to what the ``openai`` SDK reads: the completion object, ``chat.completion.chunk``
events, a usage-only last event when ``stream_options.include_usage`` is set, ``[DONE]``,
and errors as ``{"error": {"message", "type", "code"}}`` with their HTTP status.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from tests.fakes.server import LoopbackServer, Scripted, answer_error


def openai_app(server: LoopbackServer) -> web.Application:
    """The application ``LoopbackServer`` serves."""

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        scripted = server.next_answer(body, dict(request.headers))
        await asyncio.sleep(scripted.delay)
        if scripted.status is not None:
            return await answer_error(scripted)
        if isinstance(scripted.body, bytes):
            return web.Response(body=scripted.body, content_type="application/json")
        usage = scripted.usage or _usage(body, scripted.text)
        if body.get("stream"):
            return await _stream(request, body, scripted, usage)
        return web.json_response(
            {
                "id": "chatcmpl-loopback",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": scripted.text},
                        "finish_reason": scripted.finish or "stop",
                    }
                ],
                "usage": usage,
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    return app


async def _stream(
    request: web.Request, body: dict[str, Any], scripted: Scripted, usage: dict[str, Any]
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    words = scripted.text.split(" ")
    deltas = [word if i == 0 else f" {word}" for i, word in enumerate(words)]
    events = [{"role": "assistant", "content": ""}] + [{"content": d} for d in deltas]
    for count, delta in enumerate(events):
        if scripted.cut is not None and count >= scripted.cut:
            return response  # the connection ends here: no finish reason, no usage
        await _event(response, body, [{"index": 0, "delta": delta, "finish_reason": None}])
    finish = [{"index": 0, "delta": {}, "finish_reason": scripted.finish or "stop"}]
    await _event(response, body, finish)
    if (body.get("stream_options") or {}).get("include_usage"):
        await _event(response, body, [], usage)
    await response.write(b"data: [DONE]\n\n")
    return response


async def _event(
    response: web.StreamResponse,
    body: dict[str, Any],
    choices: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
) -> None:
    chunk = {
        "id": "chatcmpl-loopback",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body["model"],
        "choices": choices,
        "usage": usage,
    }
    await response.write(f"data: {json.dumps(chunk)}\n\n".encode())


def _usage(body: dict[str, Any], text: str) -> dict[str, Any]:
    prompt = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
    completion = len(text.split())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
