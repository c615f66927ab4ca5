"""Anthropic's Messages API (``POST /v1/messages``), plain and as server-sent events.

Faithful to what the ``anthropic`` SDK reads: the Message object, the named SSE events of a
stream (``message_start``, ``content_block_start``, ``ping``, ``content_block_delta`` with
``text_delta``, ``content_block_stop``, ``message_delta``, ``message_stop``), and errors as
``{"type": "error", "error": {"type", "message"}}`` with their HTTP status. A scripted
error on a stream (``Scripted(status=200, body=...)``) is sent as an ``error`` event after
the first words, the way Anthropic reports an overload mid-answer.

Usage is in Anthropic's own fields (``input_tokens`` excludes the cache counts).
``Scripted(usage={})`` scripts an answer that carries no usage at all, as some gateways
send: a Message without ``usage``, and ``message_start`` and ``message_delta`` without it.

``output_config.format`` (JSON outputs), when given, is checked as the API checks it:
``{"type": "json_schema", "schema": {...}}``, every object in the schema closed with
``"additionalProperties": false``; anything else is a 400 ``invalid_request_error``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from typing import Any

from aiohttp import web

from tests.fakes.server import LoopbackServer, Scripted, answer_error

MESSAGE_ID = "msg_loopback"


def anthropic_app(server: LoopbackServer) -> web.Application:
    """The application ``LoopbackServer`` serves."""

    async def messages(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        scripted = _in_workdir(server.next_answer(body, dict(request.headers)), body)
        await asyncio.sleep(scripted.delay)
        stream = bool(body.get("stream"))
        refused = _output_config_error(body.get("output_config")) or _tool_turns_error(body)
        if refused is not None:
            return web.json_response(error_body("invalid_request_error", refused), status=400)
        if scripted.status is not None and not (stream and scripted.status == 200):
            return await answer_error(scripted)
        if isinstance(scripted.body, bytes):
            return web.Response(body=scripted.body, content_type="application/json")
        usage = _usage(body, scripted)
        if stream:
            return await _stream(request, body, scripted, usage)
        message = _message(body, scripted.finish or _stop_reason(scripted), usage)
        message["content"] = [{"type": "text", "text": scripted.text}] if scripted.text else []
        message["content"] += _tool_uses(scripted)
        return web.json_response(message)

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    return app


def _in_workdir(scripted: Scripted, body: dict[str, Any]) -> Scripted:
    """``{cwd}`` in scripted tool arguments made the working directory the request names.

    Coding CLIs tell their model where they work (Claude Code: "Primary working directory:
    /path" in its system prompt) and want absolute paths back.
    """
    if not scripted.tool_calls:
        return scripted
    system = body.get("system")
    blocks = [system] if isinstance(system, str) else system or []
    said = " ".join(b if isinstance(b, str) else str(b.get("text", "")) for b in blocks)
    found = re.search(r"working directory: (\S+)", said)
    if found is None:
        return scripted
    cwd = found.group(1)

    def filled(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("{cwd}", cwd)
        if isinstance(value, dict):
            return {key: filled(item) for key, item in value.items()}
        return value

    calls = [(name, filled(arguments)) for name, arguments in scripted.tool_calls]
    return dataclasses.replace(scripted, tool_calls=calls)


def error_body(kind: str, message: str) -> dict[str, Any]:
    """Anthropic's error body, as an HTTP answer and in an ``error`` event."""
    return {"type": "error", "error": {"type": kind, "message": message}}


def _output_config_error(config: Any) -> str | None:
    """The API's complaint about ``output_config``, or None when it is acceptable."""
    if config is None:
        return None
    if not isinstance(config, dict):
        return "output_config: Input should be a valid dictionary"
    unknown = sorted(set(config) - {"format", "effort"})
    if unknown:
        return f"output_config.{unknown[0]}: Extra inputs are not permitted"
    if "format" not in config:  # ``effort`` alone, as Claude Code sends
        return None
    fmt = config["format"]
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return "output_config.format.type: Input should be 'json_schema'"
    if not isinstance(fmt.get("schema"), dict):
        return "output_config.format.schema: Field required"
    return _open_object(fmt["schema"], "output_config.format.schema")


def _open_object(node: Any, path: str) -> str | None:
    if isinstance(node, list):
        found = (_open_object(item, f"{path}.{i}") for i, item in enumerate(node))
        return next((problem for problem in found if problem), None)
    if not isinstance(node, dict):
        return None
    if node.get("type") == "object" and node.get("additionalProperties") is not False:
        return f"{path}: For 'object' type, 'additionalProperties' must be explicitly set to false"
    for key in ("properties", "$defs"):
        for name, sub in (node.get(key) or {}).items():
            if problem := _open_object(sub, f"{path}.{key}.{name}"):
                return problem
    for key in ("items", "anyOf", "allOf"):
        if problem := _open_object(node.get(key), f"{path}.{key}"):
            return problem
    return None


def _message(
    body: dict[str, Any], stop_reason: str | None, usage: dict[str, Any]
) -> dict[str, Any]:
    message = {
        "id": MESSAGE_ID,
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": [],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }
    if not usage:  # scripted without usage
        del message["usage"]
    return message


async def _stream(
    request: web.Request, body: dict[str, Any], scripted: Scripted, usage: dict[str, Any]
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    words = scripted.text.split(" ")
    deltas = [word if i == 0 else f" {word}" for i, word in enumerate(words)]
    start = _message(body, None, {**usage, "output_tokens": 1} if usage else {})
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start}),
    ]
    index = 0
    if scripted.text or not scripted.tool_calls:
        events += [("content_block_start", _block_start()), ("ping", {"type": "ping"})]
        events += [("content_block_delta", _text_delta(delta)) for delta in deltas]
        if scripted.status == 200:  # an error event after the first words, then the end
            events = events[:4] + [("error", scripted.body)]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
        index = 1
    for number, block in enumerate(_tool_uses(scripted), start=index):
        events += _tool_use_events(number, block)
    delta: dict[str, Any] = {
        "type": "message_delta",
        "delta": {
            "stop_reason": scripted.finish or _stop_reason(scripted),
            "stop_sequence": None,
        },
    }
    if usage:
        delta["usage"] = {"output_tokens": usage["output_tokens"]}
    events += [
        ("message_delta", delta),
        ("message_stop", {"type": "message_stop"}),
    ]
    for count, (name, data) in enumerate(events):
        if scripted.cut is not None and count >= scripted.cut:
            return response  # the connection ends here: no message_delta, no message_stop
        await response.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        if name == "error":
            return response
    return response


def _stop_reason(scripted: Scripted) -> str:
    return "tool_use" if scripted.tool_calls else "end_turn"


def _tool_uses(scripted: Scripted) -> list[dict[str, Any]]:
    """The scripted tool calls as ``tool_use`` content blocks (input always an object)."""
    return [
        {
            "type": "tool_use",
            "id": f"toolu_{number:02d}",
            "name": name,
            "input": arguments if isinstance(arguments, dict) else {"raw": arguments},
        }
        for number, (name, arguments) in enumerate(scripted.tool_calls or ())
    ]


def _tool_use_events(index: int, block: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A streamed ``tool_use`` block: started empty, its input as ``input_json_delta`` pieces."""
    text = json.dumps(block["input"])
    middle = len(text) // 2
    started = {**block, "input": {}}
    return [
        (
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": started},
        ),
        *(
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": piece},
                },
            )
            for piece in (text[:middle], text[middle:])
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": index}),
    ]


def _tool_turns_error(body: dict[str, Any]) -> str | None:
    """The API's complaint about tool turns: results answer the calls just made, all of them."""
    for tool in body.get("tools") or ():
        if not tool.get("name") or not isinstance(tool.get("input_schema"), dict):
            return "tools: each tool needs a name and an input_schema"
    asked: set[str] = set()
    for message in body["messages"]:
        content = message.get("content")
        blocks = content if isinstance(content, list) else []
        if message.get("role") == "assistant":
            asked = {b["id"] for b in blocks if b.get("type") == "tool_use"}
            continue
        answered = {b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"}
        if answered - asked:
            return "messages: unexpected `tool_use_id` found in `tool_result` blocks"
        if asked - answered:
            return (
                "messages: `tool_use` ids were found without `tool_result` blocks immediately after"
            )
        asked = set()
    return None


def _block_start() -> dict[str, Any]:
    return {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }


def _text_delta(text: str) -> dict[str, Any]:
    return {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": text},
    }


def _usage(body: dict[str, Any], scripted: Scripted) -> dict[str, Any]:
    if scripted.usage == {}:
        return {}  # the answer carries no usage
    if scripted.usage is not None:
        return {"cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, **scripted.usage}
    prompt = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
    said = " ".join([scripted.text, *(json.dumps(b["input"]) for b in _tool_uses(scripted))])
    return {
        "input_tokens": prompt + len(str(body.get("system", "")).split()),
        "output_tokens": len(said.split()),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
