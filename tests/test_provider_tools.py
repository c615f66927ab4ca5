"""Tool round trips in each vendor's wire format, through the real SDKs, against the fakes.

A round trip: the request offers tools; the model asks for calls (several at once, in the
vendor's shape, streamed in fragments where the vendor streams them so); the next request
carries the assistant's calls and each call's result, which the fake checks as the vendor
does (a result must answer a call just made).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

from llm_abstractions import InvalidRequestError, LlmRequest
from llm_abstractions.base import BaseLlm
from llm_abstractions.providers.anthropic import AnthropicLlm
from llm_abstractions.providers.gemini import GeminiLlm
from llm_abstractions.providers.huggingface import HuggingFaceLlm
from llm_abstractions.providers.lmstudio import LmStudioLlm
from llm_abstractions.providers.ollama import OllamaLlm
from llm_abstractions.providers.openai import OpenAILlm
from llm_abstractions.types import LlmResponse, Message, ToolCall, ToolSpec
from tests.fakes.anthropic_api import anthropic_app
from tests.fakes.gemini_api import gemini_app, signature
from tests.fakes.hf_api import hf_app
from tests.fakes.ollama_api import ollama_app
from tests.fakes.openai_api import openai_app
from tests.fakes.server import LoopbackServer, Scripted, loopback_fixtures

pytestmark = pytest.mark.anyio

server, api = loopback_fixtures(openai_app)


def served(app: Callable[[LoopbackServer], web.Application]) -> Any:
    """A module-wide fixture serving ``app`` (each test resets it first)."""

    @pytest.fixture(scope="module")
    def fixture() -> Iterator[LoopbackServer]:
        fake = LoopbackServer(app)
        yield fake
        fake.close()

    return fixture


claude_api = served(anthropic_app)
ollama_api = served(ollama_app)
hf_api = served(hf_app)
gemini_api = served(gemini_app)

ADD = ToolSpec(
    name="add",
    description="Add two integers.",
    parameters={
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
)
LOOKUP = ToolSpec(
    name="lookup",
    description="Look a word up.",
    parameters={"type": "object", "properties": {"word": {"type": "string"}}},
)


def follow_up(
    request: LlmRequest, first: LlmResponse, *results: tuple[str, str, str, bool], text: str = ""
) -> LlmRequest:
    """``request`` again, after the model's calls and their results: (id, tool, text, failed)."""
    turns = [Message(role="assistant", content=text, tool_calls=first.tool_calls)]
    turns += [
        Message(role="tool", content=said, tool_call_id=call_id, name=tool, is_error=failed)
        for call_id, tool, said, failed in results
    ]
    return request.model_copy(update={"messages": (*request.messages, *turns)})


async def respond(provider: BaseLlm, request: LlmRequest, streamed: bool) -> LlmResponse:
    """The provider's answer, asked for whole or streamed (its last chunk's response)."""
    if not streamed:
        return await provider.generate(request)
    final = None
    async for chunk in provider.stream(request):
        if chunk.done:
            final = chunk.response
    assert final is not None
    return final


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("provider_class", [OpenAILlm, LmStudioLlm])
async def test_openai_format_round_trip(
    api: LoopbackServer, streamed: bool, provider_class: type[OpenAILlm]
) -> None:
    calls: list[tuple[str, dict[str, Any] | str]] = [
        ("add", {"a": 2, "b": 40}),
        ("lookup", {"word": 'héllo "quoted"'}),
    ]
    api.script(Scripted(text="", tool_calls=calls), Scripted(text="42, and hello."))
    provider = provider_class("m", api_key="sk-test", base_url=f"{api.url}/v1")
    request = LlmRequest.build("Add 2 and 40, look up hello.", tools=(ADD, LOOKUP))
    async with provider:
        first = await respond(provider, request, streamed)
        assert first.finish_reason == "tool_calls" and first.text == ""
        assert [(c.id, c.name, json.loads(c.arguments)) for c in first.tool_calls] == [
            ("call_0", "add", {"a": 2, "b": 40}),
            ("call_1", "lookup", {"word": 'héllo "quoted"'}),
        ]
        follow = follow_up(
            request,
            first,
            ("call_0", "add", "42", False),
            ("call_1", "lookup", "error: no such word", True),
        )
        second = await respond(provider, follow, streamed)
    assert (second.text, second.finish_reason, second.tool_calls) == ("42, and hello.", "stop", ())
    offered = api.requests[0]["tools"]
    assert offered[0] == {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two integers.",
            "parameters": ADD.parameters,
        },
    }
    sent = api.requests[1]["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_0",
                "type": "function",
                "function": {"name": "add", "arguments": '{"a": 2, "b": 40}'},
            },
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "lookup", "arguments": first.tool_calls[1].arguments},
            },
        ],
    }
    assert sent[2:] == [
        {"role": "tool", "tool_call_id": "call_0", "content": "42"},
        {"role": "tool", "tool_call_id": "call_1", "content": "error: no such word"},
    ]


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "streamed"])
async def test_anthropic_round_trip(claude_api: LoopbackServer, streamed: bool) -> None:
    claude_api.reset()
    calls: list[tuple[str, dict[str, Any] | str]] = [
        ("add", {"a": 2, "b": 40}),
        ("lookup", {"word": 'héllo "quoted"'}),
    ]
    claude_api.script(
        Scripted(text="Let me see.", tool_calls=calls), Scripted(text="42, and hello.")
    )
    provider = AnthropicLlm("claude-haiku-4-5", api_key="sk-test", base_url=claude_api.url)
    request = LlmRequest.build(
        "Add 2 and 40, look up hello.", tools=(ADD, LOOKUP), tool_choice="required"
    )
    async with provider:
        first = await respond(provider, request, streamed)
        assert (first.finish_reason, first.text) == ("tool_calls", "Let me see.")
        assert [(c.id, c.name, json.loads(c.arguments)) for c in first.tool_calls] == [
            ("toolu_00", "add", {"a": 2, "b": 40}),
            ("toolu_01", "lookup", {"word": 'héllo "quoted"'}),
        ]
        follow = follow_up(
            request,
            first,
            ("toolu_00", "add", "42", False),
            ("toolu_01", "lookup", "error: no such word", True),
            text=first.text,
        )
        second = await respond(provider, follow, streamed)
    assert (second.text, second.finish_reason, second.tool_calls) == ("42, and hello.", "stop", ())
    offered = claude_api.requests[0]
    assert offered["tools"][0] == {
        "name": "add",
        "description": "Add two integers.",
        "input_schema": ADD.parameters,
    }
    assert offered["tool_choice"] == {"type": "any"}
    sent = claude_api.requests[1]["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Let me see."},
            {"type": "tool_use", "id": "toolu_00", "name": "add", "input": {"a": 2, "b": 40}},
            {
                "type": "tool_use",
                "id": "toolu_01",
                "name": "lookup",
                "input": {"word": 'héllo "quoted"'},
            },
        ],
    }
    assert sent[2] == {  # both results in one user message, as the API requires
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_00", "content": "42"},
            {
                "type": "tool_result",
                "tool_use_id": "toolu_01",
                "content": "error: no such word",
                "is_error": True,
            },
        ],
    }


async def test_anthropic_refuses_a_missing_result_as_the_api_does(
    claude_api: LoopbackServer,
) -> None:
    claude_api.reset()
    provider = AnthropicLlm("claude-haiku-4-5", api_key="sk-test", base_url=claude_api.url)
    call = ToolCall(id="toolu_00", name="add", arguments='{"a": 1, "b": 2}')
    unanswered = LlmRequest.build(
        [
            Message(role="user", content="add"),
            Message(role="assistant", content="", tool_calls=(call,)),
            Message(role="user", content="well?"),
        ],
        tools=(ADD,),
    )
    async with provider:
        with pytest.raises(InvalidRequestError, match="without `tool_result` blocks"):
            await provider.generate(unanswered)


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "streamed"])
async def test_ollama_round_trip(ollama_api: LoopbackServer, streamed: bool) -> None:
    ollama_api.reset()
    calls: list[tuple[str, dict[str, Any] | str]] = [
        ("add", {"a": 2, "b": 40}),
        ("lookup", {"word": "hello"}),
    ]
    ollama_api.script(Scripted(text="", tool_calls=calls), Scripted(text="42, and hello."))
    provider = OllamaLlm("qwen2.5:0.5b", host=ollama_api.url)
    request = LlmRequest.build("Add 2 and 40, look up hello.", tools=(ADD, LOOKUP))
    async with provider:
        first = await respond(provider, request, streamed)
        assert first.finish_reason == "tool_calls"
        assert [(c.id, c.name, json.loads(c.arguments)) for c in first.tool_calls] == [
            ("call_0", "add", {"a": 2, "b": 40}),
            ("call_1", "lookup", {"word": "hello"}),
        ]
        follow = follow_up(
            request, first, ("call_0", "add", "42", False), ("call_1", "lookup", "hi", False)
        )
        second = await respond(provider, follow, streamed)
    assert (second.text, second.finish_reason) == ("42, and hello.", "stop")
    assert ollama_api.requests[0]["tools"][1]["function"]["name"] == "lookup"
    assert ollama_api.requests[1]["messages"][1:] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "add", "arguments": {"a": 2, "b": 40}}},
                {"function": {"name": "lookup", "arguments": {"word": "hello"}}},
            ],
        },
        {"role": "tool", "content": "42", "tool_name": "add"},
        {"role": "tool", "content": "hi", "tool_name": "lookup"},
    ]


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "streamed"])
async def test_huggingface_round_trip(hf_api: LoopbackServer, streamed: bool) -> None:
    hf_api.reset()
    calls: list[tuple[str, dict[str, Any] | str]] = [("add", {"a": 2, "b": 40})]
    hf_api.script(Scripted(text="", tool_calls=calls), Scripted(text="42."))
    provider = HuggingFaceLlm(
        "meta-llama/Llama-3.1-8B-Instruct", api_key="hf_test", base_url=f"{hf_api.url}/v1"
    )
    request = LlmRequest.build("Add 2 and 40.", tools=(ADD,), tool_choice="auto")
    async with provider:
        first = await respond(provider, request, streamed)
        assert first.finish_reason == "tool_calls"
        assert [(c.id, c.name, json.loads(c.arguments)) for c in first.tool_calls] == [
            ("call_0", "add", {"a": 2, "b": 40})
        ]
        follow = follow_up(request, first, ("call_0", "add", "42", False))
        second = await respond(provider, follow, streamed)
    assert (second.text, second.tool_calls) == ("42.", ())
    assert hf_api.requests[0]["tools"][0]["function"]["parameters"] == ADD.parameters
    assert hf_api.requests[0]["tool_choice"] == "auto"
    assert hf_api.requests[1]["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "call_0",
        "content": "42",
    }


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "streamed"])
async def test_gemini_round_trip(gemini_api: LoopbackServer, streamed: bool) -> None:
    gemini_api.reset()
    calls: list[tuple[str, dict[str, Any] | str]] = [
        ("add", {"a": 2, "b": 40}),
        ("lookup", {"word": "hello"}),
    ]
    gemini_api.script(Scripted(text="", tool_calls=calls), Scripted(text="42, and hello."))
    provider = GeminiLlm("gemini-2.5-flash", api_key="g-test", base_url=gemini_api.url)
    strict = ADD.model_copy(
        update={"parameters": {**ADD.parameters, "additionalProperties": False}}
    )
    request = LlmRequest.build(
        "Add 2 and 40, look up hello.", tools=(strict, LOOKUP), tool_choice="required"
    )
    async with provider:
        first = await respond(provider, request, streamed)
        assert first.finish_reason == "tool_calls"
        assert [(c.id, c.name, json.loads(c.arguments)) for c in first.tool_calls] == [
            ("call_0", "add", {"a": 2, "b": 40}),
            ("call_1", "lookup", {"word": "hello"}),
        ]
        follow = follow_up(
            request, first, ("call_0", "add", "42", False), ("call_1", "lookup", "no entry", True)
        )
        second = await respond(provider, follow, streamed)
    assert (second.text, second.finish_reason) == ("42, and hello.", "stop")
    offered = gemini_api.requests[0]
    declared = offered["tools"][0]["functionDeclarations"][0]
    # The SDK sends this field by its proto name, which Google's JSON parsing takes too.
    assert declared["parameters_json_schema"] == ADD.parameters  # additionalProperties dropped
    assert offered["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    turns = gemini_api.requests[1]["contents"]
    assert turns[1] == {  # each call with the signature it came with
        "role": "model",
        "parts": [
            {
                "functionCall": {"name": "add", "args": {"a": 2, "b": 40}},
                "thoughtSignature": signature("add"),
            },
            {
                "functionCall": {"name": "lookup", "args": {"word": "hello"}},
                "thoughtSignature": signature("lookup"),
            },
        ],
    }
    assert turns[2] == {  # both results in one user turn
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "add", "response": {"result": "42"}}},
            {"functionResponse": {"name": "lookup", "response": {"error": "no entry"}}},
        ],
    }


async def test_a_result_that_answers_no_call_is_refused_as_the_vendor_refuses_it(
    api: LoopbackServer,
) -> None:
    provider = OpenAILlm("m", api_key="sk-test", base_url=f"{api.url}/v1")
    stray = LlmRequest.build(
        [
            {"role": "user", "content": "hi"},
            {"role": "tool", "content": "42", "tool_call_id": "call_9"},
        ]
    )
    async with provider:
        with pytest.raises(InvalidRequestError, match="role 'tool' must be a response"):
            await provider.generate(stray)


def test_messages_keep_tool_fields_where_they_belong() -> None:
    call = ToolCall(id="c", name="add", arguments="{}")
    with pytest.raises(ValueError, match="only assistant messages ask for tools"):
        Message(role="user", content="x", tool_calls=(call,))
    with pytest.raises(ValueError, match="names its tool_call_id"):
        Message(role="tool", content="42")
    with pytest.raises(ValueError, match="names its tool_call_id"):
        Message(role="user", content="42", tool_call_id="c")
    with pytest.raises(ValueError, match="parameters must be an object schema"):
        ToolSpec(name="f", parameters={"type": "string"})
    with pytest.raises(ValueError, match="name"):
        ToolSpec(name="has space")


async def test_a_provider_without_tools_is_refused_before_the_run() -> None:
    from llm_abstractions import ConfigurationError, LlmFactory
    from orchestration import AgentRegistry, AgentTask, TaskExecutor

    class Plain(BaseLlm):  # a provider of the user's own, that never learned of tools
        provider = "plain"

        async def generate(self, request: LlmRequest) -> LlmResponse:
            raise AssertionError("nothing may be sent")

    LlmFactory.register_provider("plain", Plain, replace=True)
    agents = AgentRegistry()
    agents.register_agent("p", "plain", tools=[add_two])
    async with TaskExecutor(agents, record=False) as executor:
        with pytest.raises(ConfigurationError, match="provider 'plain', which cannot call tools"):
            await executor.execute(AgentTask(task_id="t", description="Add.", agent="p"))


def add_two(a: int, b: int) -> int:
    """Add two integers."""
    return a + b
