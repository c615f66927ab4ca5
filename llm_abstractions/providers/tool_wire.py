"""Tools on the wire: ``LlmRequest.tools`` and tool turns in each vendor's format.

OpenAI's chat completions format (also Hugging Face's router, LM Studio, llama.cpp's and
vLLM's servers): tools as ``{"type": "function", "function": {"name", "description",
"parameters"}}``; an assistant turn asking for tools as ``tool_calls`` whose ``arguments``
are JSON *text*; each result as a ``{"role": "tool", "tool_call_id", "content"}`` message.
Streamed, a call arrives in fragments keyed by ``index``: the first fragment of an index
has the id and the name, the following ones pieces of the arguments' text
(``OpenAIToolCalls`` joins them).

A provider that cannot send tools calls ``refuse_tools`` before sending anything: a
request with tools, or with tool turns, is refused rather than sent without them (the model
would answer as if it had none).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llm_abstractions.errors import InvalidRequestError, LLMBadResponseError
from llm_abstractions.types import LlmRequest, Message, ToolCall

__all__ = [
    "OpenAIToolCalls",
    "has_tool_turns",
    "openai_messages",
    "openai_tool_calls",
    "openai_tools",
    "refuse_tools",
]


def has_tool_turns(request: LlmRequest) -> bool:
    """Whether the request offers tools, or its conversation holds tool calls or results."""
    return bool(request.tools) or any(m.tool_calls or m.role == "tool" for m in request.messages)


def refuse_tools(provider: str, request: LlmRequest) -> None:
    """Raise when ``request`` involves tools, for a provider that cannot send them.

    Raises:
        InvalidRequestError: The request offers tools or holds tool turns.
    """
    if has_tool_turns(request):
        raise InvalidRequestError(
            f"{provider}: this provider cannot call tools yet; give the agent a provider "
            "that can (openai-gpt, lmstudio), or no tools"
        )


def openai_tools(request: LlmRequest) -> dict[str, Any]:
    """The ``tools`` and ``tool_choice`` parameters (empty when the request has no tools)."""
    if not request.tools:
        return {}
    params: dict[str, Any] = {
        "tools": [
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
    }
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
            import json

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


def _field(value: Any, name: str) -> Any:
    """``value.name`` or ``value[name]``: SDK objects and plain dicts alike."""
    if value is None:
        return None
    if isinstance(value, dict):
        return value.get(name)
    return getattr(value, name, None)
