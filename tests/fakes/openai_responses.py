"""OpenAI's Responses API (``POST /v1/responses``), plain and as server-sent events.

What Codex (``codex exec``) speaks. A response's ``output`` holds the scripted text as a
``message`` item (``output_text`` content) and each scripted tool call as a
``function_call`` item (``call_id``, ``name``, ``arguments`` as a JSON string). Streamed, the
events are the API's: ``response.created``, ``response.in_progress``, per item
``response.output_item.added`` / ``response.output_text.delta`` (or
``response.function_call_arguments.delta``) / ``response.output_item.done``, then
``response.completed`` with the whole response and its ``usage``
(``input_tokens`` with ``input_tokens_details.cached_tokens``, ``output_tokens`` with
``output_tokens_details.reasoning_tokens``). Errors are ``{"error": {...}}`` with their
status. Usage defaults to a count of the request's characters (about four a token).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from tests.fakes.server import LoopbackServer, Scripted, answer_error

__all__ = ["responses_app"]


def responses_app(server: LoopbackServer) -> web.Application:
    """The application ``LoopbackServer`` serves."""

    async def responses(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        scripted = server.next_answer(body, dict(request.headers))
        await asyncio.sleep(scripted.delay)
        if scripted.status is not None:
            return await answer_error(scripted)
        output = _output(scripted)
        usage = _usage(body, scripted)
        response = {
            "id": f"resp_loopback_{len(server.requests)}",
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "model": body.get("model"),
            "output": output,
            "usage": usage,
        }
        if not body.get("stream"):
            return web.json_response(response)
        return await _stream(request, response)

    app = web.Application()
    app.router.add_post("/v1/responses", responses)
    return app


def _output(scripted: Scripted) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if scripted.text:
        items.append(
            {
                "id": "msg_loopback",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": scripted.text, "annotations": []}],
            }
        )
    for number, (name, arguments) in enumerate(scripted.tool_calls or ()):
        items.append(
            {
                "id": f"fc_{number:02d}",
                "type": "function_call",
                "status": "completed",
                "call_id": f"call_{number:02d}",
                "name": name,
                "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
            }
        )
    return items


def _usage(body: dict[str, Any], scripted: Scripted) -> dict[str, Any]:
    if scripted.usage is not None:
        given = dict(scripted.usage)
    else:
        given = {"input_tokens": max(1, len(json.dumps(body.get("input"))) // 4)}
        given["output_tokens"] = max(1, len(scripted.text) // 4)
    cached = given.pop("cached_tokens", 0)
    reasoning = given.pop("reasoning_tokens", 0)
    given["input_tokens_details"] = {"cached_tokens": cached}
    given["output_tokens_details"] = {"reasoning_tokens": reasoning}
    given["total_tokens"] = given["input_tokens"] + given["output_tokens"]
    return given


async def _stream(request: web.Request, response: dict[str, Any]) -> web.StreamResponse:
    stream = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await stream.prepare(request)
    number = 0

    async def send(kind: str, data: dict[str, Any]) -> None:
        nonlocal number
        payload = {"type": kind, "sequence_number": number, **data}
        number += 1
        await stream.write(f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode())

    started = {**response, "status": "in_progress", "output": [], "usage": None}
    await send("response.created", {"response": started})
    await send("response.in_progress", {"response": started})
    for index, item in enumerate(response["output"]):
        opened = {**item, "status": "in_progress"}
        if item["type"] == "message":
            opened["content"] = []
        else:
            opened["arguments"] = ""
        await send("response.output_item.added", {"output_index": index, "item": opened})
        if item["type"] == "message":
            text = item["content"][0]["text"]
            part = {"type": "output_text", "text": "", "annotations": []}
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            await send("response.content_part.added", {**where, "part": part})
            for word in text.split(" "):
                await send("response.output_text.delta", {**where, "delta": word + " "})
            await send("response.output_text.done", {**where, "text": text})
            await send("response.content_part.done", {**where, "part": item["content"][0]})
        else:
            where = {"item_id": item["id"], "output_index": index}
            await send(
                "response.function_call_arguments.delta", {**where, "delta": item["arguments"]}
            )
            await send(
                "response.function_call_arguments.done", {**where, "arguments": item["arguments"]}
            )
        await send("response.output_item.done", {"output_index": index, "item": item})
    await send("response.completed", {"response": response})
    await stream.write_eof()
    return stream
