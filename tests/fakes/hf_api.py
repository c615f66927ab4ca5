"""Hugging Face's OpenAI-compatible chat route, as ``AsyncInferenceClient`` calls it.

With ``base_url="{url}/v1"`` the client posts to ``/v1/chat/completions`` (it appends
``/chat/completions`` to a base ending in ``/v1``, ``/v1/chat/completions`` to a bare host).
Answers are what the router and TGI send: a ``chat.completion`` object; as server-sent
events, ``chat.completion.chunk`` objects, a usage-only chunk when
``stream_options.include_usage`` is set, then ``data: [DONE]``. Errors carry their status
with ``{"error": "..."}`` (TGI, the serverless API: ``estimated_time`` on a 503 "loading")
or ``{"error": {"message", "type", "code"}}`` (the router's providers).

Scripting: ``cut`` ends a stream after that many events; a dict ``body`` without a
``status`` is sent as one more event where the stream stops (TGI's mid-stream
``{"error": ..., "error_type": ...}``).

``response_format`` is checked as TGI checks it before answering: ``text``; its grammar
types ``json_object`` (or ``json``) with an optional object ``value`` (the schema), and
``regex`` with a string ``value``; OpenAI's ``json_schema`` with a ``json_schema`` holding a
``name`` and an object ``schema``. Anything else is a 422 ``{"error", "error_type":
"validation"}``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from tests.fakes.openai_api import scripted_tool_calls, tool_call_fragments, tool_turns_error
from tests.fakes.server import LoopbackServer, Scripted, answer_error


def hf_app(server: LoopbackServer) -> web.Application:
    """The application ``LoopbackServer`` serves."""

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        scripted = server.next_answer(body, dict(request.headers))
        await asyncio.sleep(scripted.delay)
        refused = _response_format_error(body.get("response_format")) or tool_turns_error(body)
        if refused is not None:
            return web.json_response({"error": refused, "error_type": "validation"}, status=422)
        if scripted.status is not None:
            return await answer_error(scripted)
        if isinstance(scripted.body, bytes):
            return web.Response(body=scripted.body, content_type="application/json")
        said = [scripted.text, *(c["function"]["arguments"] for c in scripted_tool_calls(scripted))]
        usage = scripted.usage or _usage(body, " ".join(said))
        if body.get("stream"):
            return await _stream(request, body, scripted, usage)
        message: dict[str, Any] = {"role": "assistant", "content": scripted.text or None}
        if scripted.tool_calls:
            message["tool_calls"] = scripted_tool_calls(scripted)
        finish = scripted.finish or ("tool_calls" if scripted.tool_calls else "stop")
        choice = {"index": 0, "message": message, "finish_reason": finish}
        return web.json_response(
            _envelope(body, "chat.completion", [choice]) | {"usage": usage},
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    return app


def _response_format_error(fmt: Any) -> str | None:
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    value = fmt.get("value") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind in ("json_object", "json"):
        return None if value is None or isinstance(value, dict) else "value: expected a schema"
    if kind == "regex":
        return None if isinstance(value, str) else "value: expected a string"
    if kind != "json_schema":
        return f"Failed to deserialize the JSON body: unknown variant `{kind}`"
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        return "Failed to deserialize the JSON body: json_schema: missing field `name`"
    if not isinstance(spec.get("schema"), dict):
        return "Failed to deserialize the JSON body: json_schema.schema: expected an object"
    return None


async def _stream(
    request: web.Request, body: dict[str, Any], scripted: Scripted, usage: dict[str, Any]
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    words = scripted.text.split(" ") if scripted.text else []
    deltas = [word if i == 0 else f" {word}" for i, word in enumerate(words)]
    events: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    events += [{"role": "assistant", "content": d} for d in deltas]
    events += [
        {"role": "assistant", "tool_calls": [fragment]}
        for fragment in tool_call_fragments(scripted)
    ]
    for count, delta in enumerate(events):
        if scripted.cut is not None and count >= scripted.cut:
            break
        await _send(response, body, [{"index": 0, "delta": delta, "finish_reason": None}])
    if isinstance(scripted.body, dict):
        await response.write(f"data: {json.dumps(scripted.body)}\n\n".encode())
        return response
    if scripted.cut is not None:
        return response  # the connection ends here: no finish reason, no usage, no [DONE]
    delta = {"role": "assistant", "content": ""}
    finish = scripted.finish or ("tool_calls" if scripted.tool_calls else "stop")
    await _send(response, body, [{"index": 0, "delta": delta, "finish_reason": finish}])
    if (body.get("stream_options") or {}).get("include_usage"):
        await _send(response, body, [], usage)
    await response.write(b"data: [DONE]\n\n")
    return response


async def _send(
    response: web.StreamResponse,
    body: dict[str, Any],
    choices: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
) -> None:
    chunk = _envelope(body, "chat.completion.chunk", choices) | {"usage": usage}
    await response.write(f"data: {json.dumps(chunk)}\n\n".encode())


def _envelope(body: dict[str, Any], kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-hf-loopback",
        "object": kind,
        "created": int(time.time()),
        "model": body["model"],
        "system_fingerprint": "3.0.0-native",
        "choices": choices,
    }


def _usage(body: dict[str, Any], text: str) -> dict[str, Any]:
    prompt = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
    completion = len(text.split())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
