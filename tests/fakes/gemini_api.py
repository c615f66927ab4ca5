"""Gemini's ``generateContent`` and ``streamGenerateContent`` under ``/v1beta/models/``.

Faithful to what the ``google-genai`` SDK reads: a ``GenerateContentResponse`` (candidates
with ``content.parts[].text`` and ``finishReason``, ``usageMetadata``, ``modelVersion``,
``responseId``); for ``streamGenerateContent?alt=sse``, one such response per ``data:`` event,
every event carrying the running usage and the last one the finish reason and the full
counts, as Gemini does. Errors are ``{"error": {"code", "message", "status", "details"}}``
with their HTTP status, and a request without ``x-goog-api-key`` is refused with 403.

Beyond ``Scripted``'s usual fields: a ``dict`` body with no status is answered verbatim with
200, for the shapes a script cannot describe (a blocked prompt, an answer without candidates).

Like Google's JSON parsers, the fake takes a field by its JSON name or its proto name
(``parametersJsonSchema`` or ``parameters_json_schema``; the SDK sends some the second way).

``generationConfig`` is checked as Gemini checks it: a ``responseJsonSchema`` (or a
``responseSchema``) needs ``responseMimeType: "application/json"``, and the two schemas
exclude each other; a violation is a 400 ``INVALID_ARGUMENT``.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from aiohttp import web

from tests.fakes.server import LoopbackServer, Scripted, answer_error

_UNREGISTERED = {
    "error": {
        "code": 403,
        "message": "Method doesn't allow unregistered callers (callers without established "
        "identity). Please use API Key or other form of API consumer identity to call this API.",
        "status": "PERMISSION_DENIED",
    }
}


def gemini_app(server: LoopbackServer) -> web.Application:
    """The application ``LoopbackServer`` serves."""

    async def models(request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["target"].rpartition(":")
        if method not in ("generateContent", "streamGenerateContent"):
            raise web.HTTPNotFound()
        body = await request.json()
        scripted = server.next_answer(body, dict(request.headers))
        await asyncio.sleep(scripted.delay)
        if "x-goog-api-key" not in request.headers:
            return web.json_response(_UNREGISTERED, status=403)
        refused = _config_error(body.get("generationConfig") or {}) or _tools_error(body)
        if refused is not None:
            error = {"code": 400, "message": refused, "status": "INVALID_ARGUMENT"}
            return web.json_response({"error": error}, status=400)
        if scripted.status is not None:
            return await answer_error(scripted)
        if isinstance(scripted.body, bytes):
            return web.Response(body=scripted.body, content_type="application/json")
        if isinstance(scripted.body, dict):
            return web.json_response(scripted.body)
        said = " ".join([scripted.text, *(json.dumps(a) for _, a in scripted.tool_calls or ())])
        usage = scripted.usage or _usage(body, said)
        if method == "streamGenerateContent":
            if request.query.get("alt") != "sse":
                raise web.HTTPBadRequest(text="this fake streams server-sent events only")
            return await _stream(request, model, scripted, usage)
        candidate = _candidate(scripted.text, scripted.finish or "STOP", _calls(scripted))
        return web.json_response(_answer(model, [candidate], usage))

    app = web.Application()
    app.router.add_post("/v1beta/models/{target}", models)
    return app


async def _stream(
    request: web.Request, model: str, scripted: Scripted, usage: dict[str, Any]
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    words = scripted.text.split(" ") if scripted.text or not scripted.tool_calls else []
    deltas = [word if i == 0 else f" {word}" for i, word in enumerate(words)]
    events: list[tuple[str, list[dict[str, Any]]]] = [(delta, []) for delta in deltas]
    if scripted.tool_calls:  # the calls whole, in an event of their own, as Gemini sends them
        events.append(("", _calls(scripted)))
    running = {"promptTokenCount": usage.get("promptTokenCount", 0)}
    for count, (delta, calls) in enumerate(events):
        if scripted.cut is not None and count >= scripted.cut:
            return response  # the connection ends here: no finish reason, no final usage
        last = count == len(events) - 1
        candidate = _candidate(delta, (scripted.finish or "STOP") if last else None, calls)
        event = _answer(model, [candidate], usage if last else running)
        await response.write(f"data: {json.dumps(event)}\r\n\r\n".encode())
    return response


def _config_error(config: dict[str, Any]) -> str | None:
    """Gemini's complaint about a ``generationConfig``, or None when it is acceptable."""
    schemas = [key for key in ("responseSchema", "responseJsonSchema") if key in config]
    if len(schemas) == 2:
        return "responseSchema and responseJsonSchema cannot both be set."
    if schemas and config.get("responseMimeType") != "application/json":
        return (
            f"GenerateContentRequest.generation_config.{schemas[0]}: the response mime type "
            "must be application/json when a schema is set."
        )
    if "responseJsonSchema" in config and not isinstance(config["responseJsonSchema"], dict):
        return "GenerateContentRequest.generation_config.response_json_schema: not an object."
    return None


def _calls(scripted: Scripted) -> list[dict[str, Any]]:
    """The scripted calls as Gemini's ``functionCall`` parts: arguments an object, no id."""
    return [
        {
            "functionCall": {"name": name, "args": args if isinstance(args, dict) else {}},
            "thoughtSignature": signature(name),
        }
        for name, args in scripted.tool_calls or ()
    ]


def signature(name: str) -> str:
    """The opaque thought signature the fake gives a call to ``name`` (base64, as Gemini's)."""
    return base64.b64encode(f"signature of {name}".encode()).decode()


def _field(message: dict[str, Any], name: str) -> Any:
    """A field by its JSON name or its proto name, as Google's JSON parsers take either."""
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in name)
    return message.get(name, message.get(snake))


def _tools_error(body: dict[str, Any]) -> str | None:
    """Gemini's complaint about ``tools`` (it refuses ``additionalProperties``), or about a
    call sent back without the thought signature it came with (as Gemini 3 refuses it)."""
    for turn in body.get("contents") or ():
        for part in turn.get("parts") or ():
            call = _field(part, "functionCall")
            if call and _field(part, "thoughtSignature") != signature(call.get("name", "")):
                return "Function call is missing a thought_signature in functionCall parts."
    for tool in body.get("tools") or ():
        for declaration in _field(tool, "functionDeclarations") or ():
            if not declaration.get("name"):
                return "tools[0].function_declarations[0].name: required"
            schema = _field(declaration, "parametersJsonSchema")
            if "additionalProperties" in json.dumps(schema):
                return (
                    'Invalid JSON payload received. Unknown name "additionalProperties" at '
                    "'tools[0].function_declarations[0].parameters_json_schema'"
                )
    return None


def _candidate(
    text: str, finish: str | None, calls: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"index": 0}
    parts: list[dict[str, Any]] = [{"text": text}] if text else []
    parts += calls or []
    if parts:
        candidate["content"] = {"role": "model", "parts": parts}
    if finish is not None:
        candidate["finishReason"] = finish
    return candidate


def _answer(model: str, candidates: list[dict[str, Any]], usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "candidates": candidates,
        "usageMetadata": usage,
        "modelVersion": model,
        "responseId": "loopback-response",
    }


def _usage(body: dict[str, Any], text: str) -> dict[str, Any]:
    turns = body["contents"] + [body.get("systemInstruction") or {"parts": []}]
    prompt = sum(len(str(p.get("text", "")).split()) for t in turns for p in t["parts"])
    candidates = len(text.split())
    return {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates,
    }
