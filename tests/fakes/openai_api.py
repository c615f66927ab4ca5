"""OpenAI's chat completions (``POST /v1/chat/completions``), plain and as server-sent events.

Faithful to what the ``openai`` SDK reads: the completion object, ``chat.completion.chunk``
events, a usage-only last event when ``stream_options.include_usage`` is set, ``[DONE]``,
and errors as ``{"error": {"message", "type", "code"}}`` with their HTTP status.
``Scripted(usage={})`` scripts an answer without usage, as servers that do not count send:
no ``usage`` in the completion, no usage event in a stream.

``response_format`` is checked the way OpenAI checks it, before anything is answered: a
known ``type``; for ``json_schema``, a ``name`` and a ``schema`` whose top level is an
object; with ``strict: true``, the strict subset (every object closed with
``"additionalProperties": false`` and all of its properties ``required``, no ``$ref`` with
siblings, none of the keywords strict mode refuses). A violation is a 400
``invalid_request_error`` with ``param: "response_format"``. ``compatible_app`` is the same
server without OpenAI's own rules (LM Studio, llama.cpp's server): any schema is taken.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

from aiohttp import web

from tests.fakes.server import LoopbackServer, Scripted, answer_error


def openai_app(server: LoopbackServer, *, openai_rules: bool = True) -> web.Application:
    """The application ``LoopbackServer`` serves (OpenAI's schema rules unless told not to)."""

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        scripted = server.next_answer(body, dict(request.headers))
        await asyncio.sleep(scripted.delay)
        for param, refused in (
            ("response_format", _response_format_error(body.get("response_format"), openai_rules)),
            ("messages", tool_turns_error(body)),
        ):
            if refused is not None:
                return web.json_response(
                    {
                        "error": {
                            "message": refused,
                            "type": "invalid_request_error",
                            "param": param,
                            "code": None,
                        }
                    },
                    status=400,
                )
        if scripted.status is not None:
            return await answer_error(scripted)
        if isinstance(scripted.body, bytes):
            return web.Response(body=scripted.body, content_type="application/json")
        said = " ".join(
            [scripted.text, *(c["function"]["arguments"] for c in scripted_tool_calls(scripted))]
        )
        usage = _usage(body, said) if scripted.usage is None else scripted.usage
        if body.get("stream"):
            return await _stream(request, body, scripted, usage)
        completion = {
            "id": "chatcmpl-loopback",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": scripted.text or None}
                    | (
                        {"tool_calls": scripted_tool_calls(scripted)} if scripted.tool_calls else {}
                    ),
                    "finish_reason": scripted.finish or _finish(scripted),
                }
            ],
        }
        return web.json_response(completion | ({"usage": usage} if usage else {}))

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    return app


def compatible_app(server: LoopbackServer) -> web.Application:
    """An OpenAI-compatible server (LM Studio, llama.cpp's): OpenAI's schema rules off."""
    return openai_app(server, openai_rules=False)


# Keywords OpenAI's strict mode refuses (its "supported schemas" guide).
_NOT_PERMITTED = (
    "minLength",
    "maxLength",
    "uniqueItems",
    "oneOf",
    "allOf",
    "not",
    "prefixItems",
    "patternProperties",
    "discriminator",
    "if",
)


def _response_format_error(fmt: Any, openai_rules: bool) -> str | None:
    """OpenAI's complaint about a ``response_format``, or None when it is acceptable."""
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind in ("text", "json_object"):
        schema = fmt.get("schema")  # llama-cpp-python's server takes a schema here
        return None if schema is None or isinstance(schema, dict) else "schema must be an object"
    if kind != "json_schema":
        return f"Invalid value: {kind!r}. Supported values are: json_object, json_schema, text."
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        return "Missing required parameter: 'response_format.json_schema.schema'."
    name = spec.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        return "Invalid 'response_format.json_schema.name': letters, digits, '_' and '-'."
    if not openai_rules:
        return None
    schema = spec["schema"]
    if schema.get("type") != "object":
        return (
            f"Invalid schema for response_format {name!r}: schema must be a JSON Schema of "
            f"'type: \"object\"', got 'type: \"{schema.get('type')}\"'."
        )
    if spec.get("strict"):
        problem = strict_schema_problem(schema, ())
        if problem is not None:
            return f"Invalid schema for response_format {name!r}: {problem}"
    return None


def strict_schema_problem(node: Any, path: tuple[str, ...]) -> str | None:
    """The first part of ``node`` outside OpenAI's strict subset, said as OpenAI says it."""
    where = f"In context={path}, "
    if not isinstance(node, dict):
        return f"{where}schema must be an object."
    for key in _NOT_PERMITTED:
        if key in node:
            return f"{where}'{key}' is not permitted."
    if "$ref" in node and len(node) > 1:
        return f"{where}$ref cannot have keywords {sorted(set(node) - {'$ref'})}."
    if not any(k in node for k in ("type", "enum", "const", "anyOf", "$ref")):
        return f"{where}schema must have a 'type' key."
    if node.get("type") == "object":
        if node.get("additionalProperties") is not False:
            return f"{where}'additionalProperties' is required to be supplied and to be false."
        missing = [k for k in node.get("properties", {}) if k not in node.get("required", [])]
        if missing:
            return (
                f"{where}'required' is required to be supplied and to be an array including "
                f"every key in properties. Missing {missing[0]!r}."
            )
    for key in ("properties", "$defs"):
        for name, sub in (node.get(key) or {}).items():
            if (problem := strict_schema_problem(sub, (*path, key, name))) is not None:
                return problem
    subs = [("items", node["items"])] if "items" in node else []
    subs += [(f"anyOf.{i}", sub) for i, sub in enumerate(node.get("anyOf") or [])]
    for key, sub in subs:
        if (problem := strict_schema_problem(sub, (*path, key))) is not None:
            return problem
    return None


async def _stream(
    request: web.Request, body: dict[str, Any], scripted: Scripted, usage: dict[str, Any]
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    words = scripted.text.split(" ") if scripted.text else []
    deltas = [word if i == 0 else f" {word}" for i, word in enumerate(words)]
    events: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    events += [{"content": d} for d in deltas]
    events += [{"tool_calls": [fragment]} for fragment in tool_call_fragments(scripted)]
    for count, delta in enumerate(events):
        if scripted.cut is not None and count >= scripted.cut:
            return response  # the connection ends here: no finish reason, no usage
        await _event(response, body, [{"index": 0, "delta": delta, "finish_reason": None}])
        if count == 1 and scripted.hold is not None:
            await asyncio.get_running_loop().run_in_executor(None, scripted.hold.wait, 30)
    finish = [{"index": 0, "delta": {}, "finish_reason": scripted.finish or _finish(scripted)}]
    await _event(response, body, finish)
    if usage and (body.get("stream_options") or {}).get("include_usage"):
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


def _finish(scripted: Scripted) -> str:
    return "tool_calls" if scripted.tool_calls else "stop"


def scripted_tool_calls(scripted: Scripted) -> list[dict[str, Any]]:
    """The scripted tool calls as a completion's ``message.tool_calls``."""
    return [
        {
            "id": f"call_{number}",
            "type": "function",
            "function": {
                "name": name,
                "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
            },
        }
        for number, (name, arguments) in enumerate(scripted.tool_calls or ())
    ]


def tool_call_fragments(scripted: Scripted) -> list[dict[str, Any]]:
    """The calls as a stream sends them: id and name first, then the arguments in pieces."""
    fragments: list[dict[str, Any]] = []
    for index, call in enumerate(scripted_tool_calls(scripted)):
        function = call["function"]
        fragments.append(
            {
                "index": index,
                "id": call["id"],
                "type": "function",
                "function": {"name": function["name"], "arguments": ""},
            }
        )
        text = function["arguments"]
        middle = len(text) // 2
        for piece in (text[:middle], text[middle:]):
            fragments.append({"index": index, "function": {"arguments": piece}})
    return fragments


def tool_turns_error(body: dict[str, Any]) -> str | None:
    """OpenAI's complaint about tool turns: each result answers a call just made."""
    asked: set[str] = set()
    for message in body["messages"]:
        if message.get("role") == "assistant":
            asked = {call["id"] for call in message.get("tool_calls") or ()}
        elif message.get("role") == "tool":
            if message.get("tool_call_id") not in asked:
                return (
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'."
                )
        else:
            asked = set()
    for tool in body.get("tools") or ():
        function = tool.get("function") or {}
        if tool.get("type") != "function" or not function.get("name"):
            return "Invalid 'tools': each tool is {'type': 'function', 'function': {'name'...}}."
    return None


def _usage(body: dict[str, Any], text: str) -> dict[str, Any]:
    prompt = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
    completion = len(text.split())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
