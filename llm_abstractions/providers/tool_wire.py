"""Tools on the wire: ``LlmRequest.tools`` and tool turns in each vendor's format.

OpenAI's chat completions format (also Hugging Face's router, LM Studio, llama.cpp's and
vLLM's servers): tools as ``{"type": "function", "function": {"name", "description",
"parameters"}}``; an assistant turn asking for tools as ``tool_calls`` whose ``arguments``
are JSON *text*; each result as a ``{"role": "tool", "tool_call_id", "content"}`` message.
Streamed, a call arrives in fragments keyed by ``index``: the first fragment of an index
has the id and the name, the following ones pieces of the arguments' text
(``OpenAIToolCalls`` joins them).

Anthropic's Messages format: tools as ``{"name", "description", "input_schema"}``;
``tool_choice`` as ``{"type": "auto" | "any" | "none"}``; an assistant turn asking for tools
as content blocks (its text, then ``tool_use`` blocks whose ``input`` is an *object*); the
results as ``tool_result`` blocks (``tool_use_id``, ``content``, ``is_error``) of the next
user message, all of them in that one message. Streamed, a ``tool_use`` block starts empty
and its input arrives as ``input_json_delta`` pieces (``AnthropicToolCalls`` joins them).

Ollama's ``/api/chat``: tools in OpenAI's shape (Ollama has no ``tool_choice``); calls as
``message.tool_calls`` whose ``arguments`` are an *object* and which may carry no id (one is
made up: ``call_0``...); a stream sends each call whole in one line. Results are ``tool``
messages naming the tool (``tool_name``), and the assistant turn carries its calls back.

A provider that cannot send tools says so (``BaseLlm.supports_tools`` false): the executor
then refuses a task with tools on it before the run, rather than send the request without
them (the model would answer as if it had none).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from llm_abstractions.errors import LLMBadResponseError
from llm_abstractions.types import LlmRequest, Message, ToolCall

__all__ = [
    "TOOL_PROVIDERS",
    "AnthropicToolCalls",
    "ollama_messages",
    "openai_functions",
    "OpenAIToolCalls",
    "anthropic_messages",
    "anthropic_tool_call",
    "anthropic_tools",
    "openai_messages",
    "openai_tool_calls",
    "openai_tools",
]


# The providers that call tools, for messages that say which to use instead.
TOOL_PROVIDERS = "openai-gpt, anthropic-claude, google-gemini, ollama, huggingface, lmstudio, local"


def openai_functions(request: LlmRequest) -> list[dict[str, Any]]:
    """The request's tools as OpenAI's ``{"type": "function", "function": {...}}`` entries."""
    return [
        {
            "type": "function",
            "function": {
                "name": tool.name,
                "description": tool.description,
                "parameters": tool.parameters,
            },
        }
        for tool in request.tools
    ]


def openai_tools(request: LlmRequest) -> dict[str, Any]:
    """The ``tools`` and ``tool_choice`` parameters (empty when the request has no tools)."""
    if not request.tools:
        return {}
    params: dict[str, Any] = {"tools": openai_functions(request)}
    if request.tool_choice is not None:
        params["tool_choice"] = request.tool_choice
    return params


def openai_messages(request: LlmRequest) -> list[dict[str, Any]]:
    """The conversation as OpenAI's ``messages``: system first, tool turns in its shape."""
    messages = [{"role": "system", "content": request.system}] if request.system else []
    messages += [_openai_message(message) for message in request.messages]
    return messages


def _openai_message(message: Message) -> dict[str, Any]:
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    if not message.tool_calls:
        return {"role": message.role, "content": message.content}
    return {
        "role": "assistant",
        "content": message.content or None,
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ],
    }


def openai_tool_calls(calls: Any, provider: str) -> tuple[ToolCall, ...]:
    """The tool calls of a completion's message (the SDK's objects, or dicts).

    Raises:
        LLMBadResponseError: A call has no name.
    """
    found = []
    for number, call in enumerate(calls or ()):
        function = _field(call, "function")
        name = _field(function, "name")
        if not name:
            raise LLMBadResponseError(f"{provider}: a tool call without a name", provider=provider)
        arguments = _field(function, "arguments")
        if not isinstance(arguments, str):  # servers that send an object (Ollama's dialect)
            arguments = json.dumps(arguments if arguments is not None else {})
        found.append(
            ToolCall(id=_field(call, "id") or f"call_{number}", name=name, arguments=arguments)
        )
    return tuple(found)


@dataclass
class _Partial:
    id: str | None = None
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class OpenAIToolCalls:
    """Tool calls streamed in OpenAI's fragments, joined by ``index``."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self._calls: dict[int, _Partial] = {}

    def add(self, fragments: Any) -> None:
        """Take a chunk's ``delta.tool_calls`` (None when it has none)."""
        for fragment in fragments or ():
            index = _field(fragment, "index")
            partial = self._calls.setdefault(index if index is not None else 0, _Partial())
            partial.id = _field(fragment, "id") or partial.id
            function = _field(fragment, "function")
            if function is not None:
                name = _field(function, "name") or ""
                if name and name != partial.name:  # once in OpenAI's; some servers repeat it
                    partial.name = name if not partial.name else partial.name + name
                partial.arguments.append(_field(function, "arguments") or "")

    def calls(self) -> tuple[ToolCall, ...]:
        """The calls, whole, in index order.

        Raises:
            LLMBadResponseError: A call never got its name.
        """
        found = []
        for index in sorted(self._calls):
            partial = self._calls[index]
            if not partial.name:
                raise LLMBadResponseError(
                    f"{self.provider}: a streamed tool call without a name", provider=self.provider
                )
            found.append(
                ToolCall(
                    id=partial.id or f"call_{index}",
                    name=partial.name,
                    arguments="".join(partial.arguments) or "{}",
                )
            )
        return tuple(found)


def ollama_messages(request: LlmRequest) -> list[dict[str, Any]]:
    """The conversation as Ollama's ``messages``: tool turns in its shape."""
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    for message in request.messages:
        if message.role == "tool":
            messages.append(
                {"role": "tool", "content": message.content, "tool_name": message.name or ""}
            )
        elif message.tool_calls:
            calls = [
                {"function": {"name": c.name, "arguments": _input(c.arguments)}}
                for c in message.tool_calls
            ]
            messages.append({"role": "assistant", "content": message.content, "tool_calls": calls})
        else:
            messages.append({"role": message.role, "content": message.content})
    return messages


_ANTHROPIC_CHOICE = {"auto": "auto", "required": "any", "none": "none"}


def anthropic_tools(request: LlmRequest) -> dict[str, Any]:
    """The ``tools`` and ``tool_choice`` parameters (empty when the request has no tools)."""
    if not request.tools:
        return {}
    params: dict[str, Any] = {
        "tools": [
            {"name": tool.name, "description": tool.description, "input_schema": tool.parameters}
            for tool in request.tools
        ]
    }
    if request.tool_choice is not None:
        params["tool_choice"] = {"type": _ANTHROPIC_CHOICE[request.tool_choice]}
    return params


def anthropic_messages(request: LlmRequest) -> list[dict[str, Any]]:
    """The conversation as the Messages API's ``messages`` (the system prompt goes apart).

    Consecutive tool results become the ``tool_result`` blocks of one user message, as the
    API requires.
    """
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        if message.role == "tool":
            block: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id,
                "content": message.content,
            }
            if message.is_error:
                block["is_error"] = True
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "user" and _all_results(last["content"]):
                last["content"].append(block)
            else:
                messages.append({"role": "user", "content": [block]})
        elif message.tool_calls:
            blocks: list[dict[str, Any]] = (
                [{"type": "text", "text": message.content}] if message.content else []
            )
            blocks += [
                {"type": "tool_use", "id": c.id, "name": c.name, "input": _input(c.arguments)}
                for c in message.tool_calls
            ]
            messages.append({"role": "assistant", "content": blocks})
        else:
            messages.append({"role": message.role, "content": message.content})
    return messages


def _all_results(content: Any) -> bool:
    return isinstance(content, list) and all(b.get("type") == "tool_result" for b in content)


def _input(arguments: str) -> dict[str, Any]:
    """A call's arguments as the object Anthropic's ``input`` must be."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {"arguments": arguments}  # not JSON: kept, so the turn stays as it was
    return value if isinstance(value, dict) else {"arguments": value}


def anthropic_tool_call(block: Any) -> ToolCall:
    """A ``tool_use`` content block as a call (its input object as JSON text)."""
    return ToolCall(
        id=_field(block, "id"),
        name=_field(block, "name"),
        arguments=json.dumps(_field(block, "input") or {}, ensure_ascii=False),
    )


class AnthropicToolCalls:
    """``tool_use`` blocks of a stream: started by ``content_block_start``, input in pieces."""

    def __init__(self) -> None:
        self._calls: dict[int, _Partial] = {}

    def start(self, index: int, block: Any) -> None:
        """A ``content_block_start`` whose block is a ``tool_use``."""
        self._calls[index] = _Partial(id=_field(block, "id"), name=_field(block, "name") or "")

    def add(self, index: int, partial_json: str) -> None:
        """An ``input_json_delta`` piece of block ``index``."""
        self._calls.setdefault(index, _Partial()).arguments.append(partial_json)

    def calls(self) -> tuple[ToolCall, ...]:
        """The calls, whole, in block order (an input that never came is ``{}``)."""
        return tuple(
            ToolCall(
                id=partial.id or f"toolu_{index}",
                name=partial.name,
                arguments="".join(partial.arguments) or "{}",
            )
            for index, partial in sorted(self._calls.items())
        )


def _field(value: Any, name: str) -> Any:
    """``value.name`` or ``value[name]``: SDK objects and plain dicts alike."""
    if value is None:
        return None
    if isinstance(value, dict):
        return value.get(name)
    return getattr(value, name, None)
