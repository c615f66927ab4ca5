r"""Tool calls on the embedded model: the Hermes format Qwen2.5 is trained on, under a grammar.

The tools are described the way the GGUF's chat template describes them: a template that
takes ``tools`` (Qwen2.5's) renders them in its system turn, the assistant's calls as
``<tool_call>`` blocks and the results as ``<tool_response>`` blocks of a user turn. A
template that does not (SmolLM2's) gets the same text written by us: the tools' signatures in
the system prompt, calls and results as plain turns.

Decoding is held by a GBNF grammar (``tool_grammar``) to one of two shapes: one or more
calls, each ``<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`` or the bare
JSON object (small models often drop the tags), whose JSON must name one of the tools and
give arguments its schema allows (through llama.cpp's JSON-schema converter), as many as
there are tools at most (a small model may repeat a call until its token limit), and nothing
after them; or an answer: free text that starts with none of ``<``, ``{`` and a backtick
(small models also fence their calls in Markdown), or, when the request has an
``output_schema``, JSON of that schema. ``parse_calls`` reads the calls back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from typing import Any

from llm_abstractions.errors import InvalidRequestError
from llm_abstractions.providers.json_schema import rewrite_keywords
from llm_abstractions.providers.tool_wire import openai_functions
from llm_abstractions.types import LlmRequest, Message, ToolCall

__all__ = ["parse_calls", "template_messages", "tool_grammar"]

_TAG = re.compile(r"</?tool_call>")
_CONVERTED_ROOT = re.compile(r"^(root|alternative-\d+) ::= .*$\n?", re.M)

SYSTEM_TOOLS = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    "{tools}\n</tools>\n\nFor each function call, return a json object with function name "
    "and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


def _arguments(text: str) -> Any:
    try:
        return json.loads(text or "{}")
    except ValueError:
        return text


def template_messages(
    request: LlmRequest, template_takes_tools: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages (and ``tools``) to render the chat template with."""
    messages: list[dict[str, Any]] = []
    system = request.system
    if request.tools and not template_takes_tools:
        described = "\n".join(json.dumps(f) for f in openai_functions(request))
        tools_text = SYSTEM_TOOLS.format(tools=described)
        system = f"{system}\n\n{tools_text}" if system else tools_text
    if system:
        messages.append({"role": "system", "content": system})
    for message in request.messages:
        messages.append(_message(message, template_takes_tools))
    if template_takes_tools:
        return messages, (openai_functions(request) or None)
    return _merged_results(messages), None


def _message(message: Message, template_takes_tools: bool) -> dict[str, Any]:
    if message.tool_calls:
        if template_takes_tools:
            calls = [
                {
                    "type": "function",
                    "function": {"name": c.name, "arguments": _arguments(c.arguments)},
                }
                for c in message.tool_calls
            ]
            return {"role": "assistant", "content": message.content, "tool_calls": calls}
        blocks = [
            "<tool_call>\n"
            + json.dumps({"name": c.name, "arguments": _arguments(c.arguments)})
            + "\n</tool_call>"
            for c in message.tool_calls
        ]
        text = "\n".join([message.content, *blocks] if message.content else blocks)
        return {"role": "assistant", "content": text}
    if message.role == "tool":
        if template_takes_tools:
            return {"role": "tool", "content": message.content}
        return {"role": "user", "content": f"<tool_response>\n{message.content}\n</tool_response>"}
    return {"role": message.role, "content": message.content}


def _merged_results(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive results in one user turn, as templates that take tools render them."""
    merged: list[dict[str, Any]] = []
    for message in messages:
        last = merged[-1] if merged else None
        if (
            last is not None
            and last["role"] == "user"
            and message["role"] == "user"
            and last["content"].startswith("<tool_response>")
            and message["content"].startswith("<tool_response>")
        ):
            last["content"] = f"{last['content']}\n{message['content']}"
        else:
            merged.append(dict(message))
    return merged


def tool_grammar(request: LlmRequest) -> str:
    """The GBNF grammar of an answer to a request with tools: calls, or the answer.

    With ``tool_choice="required"``, calls only (``"none"`` never gets here: the request is
    then answered without tools).

    Raises:
        InvalidRequestError: llama.cpp's converter cannot turn a tool's schema (or the
            output schema) into a grammar.
    """
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    defs: dict[str, Any] = {}
    calls = []
    for number, tool in enumerate(request.tools):
        arguments = _hoisted(tool.parameters, f"t{number}-", defs)
        calls.append(
            {
                "type": "object",
                "properties": {"name": {"const": tool.name}, "arguments": arguments},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    defs["call"] = {"anyOf": calls}
    roots = ["call"]
    if request.output_schema is not None:
        defs["answer"] = _hoisted(request.output_schema.json_schema, "answer-", defs)
        roots.append("answer")
    schema = {"$defs": defs, "anyOf": [{"$ref": f"#/$defs/{name}"} for name in roots]}
    try:
        converted: str = json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter raises bare ValueError, KeyError, TypeError...
        raise InvalidRequestError(
            f"llama.cpp's JSON-schema converter cannot use the tools' schemas: {exc!r}"
        ) from exc
    rules = _CONVERTED_ROOT.sub("", converted)
    answer = "answer" if request.output_schema is not None else "free-text"
    root = "tool-calls" if request.tool_choice == "required" else f"tool-calls | {answer}"
    return (
        f"root ::= {root}\n"
        f'tool-calls ::= tool-call ("\\n" tool-call){{0,{len(request.tools) - 1}}}\n'
        'tool-call ::= "<tool_call>\\n" call "\\n</tool_call>" | call\n'
        "free-text ::= [^<{`\\x00] [^\\x00]*\n" + rules
    )


def _hoisted(schema: dict[str, Any], prefix: str, defs: dict[str, Any]) -> dict[str, Any]:
    """``schema`` without its ``$defs``, which join ``defs`` renamed, its references too.

    A schema nested in another keeps working: its ``#/$defs/X`` references point at the
    root's ``$defs``, where ``X`` now is ``prefix + X`` (two tools may both have an ``X``).
    """

    def renamed(key: str, value: Any) -> tuple[str, Any] | None:
        if key == "$defs":
            return None
        if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
            return key, f"#/$defs/{prefix}{value.removeprefix('#/$defs/')}"
        return key, value

    for name, definition in (schema.get("$defs") or {}).items():
        defs[f"{prefix}{name}"] = rewrite_keywords(definition, renamed)
    return dict(rewrite_keywords(schema, renamed))


def parse_calls(text: str, tools: Collection[str]) -> tuple[str, tuple[ToolCall, ...]]:
    """The answer's text and the calls it holds, numbered (none when it is an answer).

    An output that starts with ``<`` or ``{`` is calls, in tags or bare (see the grammar),
    when its JSON objects name one of ``tools`` and give ``arguments``; else (an answer in
    JSON, under an output schema) it is the answer.
    """
    stripped = text.strip()
    if not stripped.startswith(("<", "{")):
        return text, ()
    calls: list[ToolCall] = []
    decoder = json.JSONDecoder()
    rest = _TAG.sub(" ", stripped)
    position = 0
    while True:
        start = rest.find("{", position)
        if start < 0:
            break
        try:
            found, position = decoder.raw_decode(rest, start)
        except ValueError:
            break  # cut by the token limit: no call
        if isinstance(found, dict) and found.get("name") in tools and "arguments" in found:
            calls.append(
                ToolCall(
                    id=f"call_{len(calls)}",
                    name=str(found["name"]),
                    arguments=json.dumps(found.get("arguments", {}), ensure_ascii=False),
                )
            )
    return ("", tuple(calls)) if calls else (text, ())
