"""Tool calls on the embedded model: the grammar, the template, reading calls back.

The grammar is checked with llama.cpp's own sampler (``admits``, on the bundled SmolLM2's
vocabulary); a real generation shows that what the model writes under it are calls the
tools accept.
"""

from __future__ import annotations

import json
from enum import Enum

import anyio
import pytest
from pydantic import BaseModel

from llm_abstractions import InvalidRequestError, LlmRequest, LlmResponse
from llm_abstractions.providers.local import LocalLlm
from llm_abstractions.providers.local_tools import parse_calls, template_messages, tool_grammar
from llm_abstractions.types import Message, OutputSchema, ToolCall
from orchestration.model.tools import Tool
from tests.test_local_grammar import admits, engine_of, llm  # noqa: F401 - the fixture


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first.
        b: The second.
    """
    return a + b


def lookup(word: str) -> str:
    """Look a word up."""
    return word


TOOLS = (Tool.of(add).spec(), Tool.of(lookup).spec())
NAMES = {"add", "lookup"}
REQUEST = LlmRequest.build("Add 2 and 40.", tools=TOOLS)
CALL = '{"name": "add", "arguments": {"a": 2, "b": 40}}'

ADMITTED = {
    "a call in tags": f"<tool_call>\n{CALL}\n</tool_call>",
    "a bare call": CALL,
    "two calls": f'{CALL}\n<tool_call>\n{{"name": "lookup", "arguments": {{"word": "x"}}}}\n'
    "</tool_call>",
    "an answer": "The sum is 42.",
}
REFUSED = {
    "a tool there is not": '{"name": "sub", "arguments": {"a": 2, "b": 40}}',
    "an argument of the wrong type": '{"name": "add", "arguments": {"a": "two", "b": 40}}',
    "an argument missing": '{"name": "add", "arguments": {"a": 2}}',
    "an argument not in the schema": '{"name": "add", "arguments": {"a": 2, "b": 4, "c": 1}}',
    "more calls than tools": f"{CALL}\n{CALL}\n{CALL}",
    "text after a call": f"{CALL}\nSo the sum is 42.",
    "a call in a Markdown fence": f"```json\n{CALL}\n```",
    "JSON that is no call": '{"sum": 42}',
}


@pytest.mark.model
@pytest.mark.parametrize("case", ADMITTED)
def test_what_the_tool_grammar_admits(llm: LocalLlm, case: str) -> None:  # noqa: F811
    assert admits(engine_of(llm), tool_grammar(REQUEST), ADMITTED[case])


@pytest.mark.model
@pytest.mark.parametrize("case", REFUSED)
def test_what_the_tool_grammar_refuses(llm: LocalLlm, case: str) -> None:  # noqa: F811
    assert not admits(engine_of(llm), tool_grammar(REQUEST), REFUSED[case])


@pytest.mark.model
def test_required_means_a_call_and_an_output_schema_shapes_the_answer(
    llm: LocalLlm,  # noqa: F811
) -> None:
    engine = engine_of(llm)
    required = REQUEST.model_copy(update={"tool_choice": "required"})
    assert not admits(engine, tool_grammar(required), "The sum is 42.")
    assert admits(engine, tool_grammar(required), CALL)
    schema = {"type": "object", "properties": {"sum": {"type": "integer"}}, "required": ["sum"]}
    typed = REQUEST.model_copy(update={"output_schema": OutputSchema(json_schema=schema)})
    assert admits(engine, tool_grammar(typed), '{"sum": 42}')
    assert not admits(engine, tool_grammar(typed), "The sum is 42.")
    assert admits(engine, tool_grammar(typed), CALL)


class Color(Enum):
    RED = "red"
    BLUE = "blue"


class Point(BaseModel):
    x: int
    color: Color


def paint(at: Point, color: Color) -> str:
    """Paint a point."""
    return "ok"


@pytest.mark.model
def test_tools_with_definitions_of_their_own_have_a_grammar(llm: LocalLlm) -> None:  # noqa: F811
    request = LlmRequest.build("Paint.", tools=(Tool.of(paint).spec(), *TOOLS))
    schema = {"$defs": {"Point": {"type": "integer"}}, "$ref": "#/$defs/Point"}
    typed = request.model_copy(update={"output_schema": OutputSchema(json_schema=schema)})
    grammar = tool_grammar(typed)  # two "Point" definitions: the tool's, the answer's
    call = '{"name": "paint", "arguments": {"at": {"x": 1, "color": "red"}, "color": "blue"}}'
    engine = engine_of(llm)
    assert admits(engine, grammar, call)
    assert admits(engine, grammar, "7")
    assert not admits(engine, grammar, call.replace('"red"', '"green"'))


def test_calls_are_read_back_in_tags_or_bare() -> None:
    two = f'<tool_call>\n{CALL}\n</tool_call>\n{{"name": "lookup", "arguments": {{"word": "é"}}}}'
    text, calls = parse_calls(two, NAMES)
    assert text == "" and calls == (
        ToolCall(id="call_0", name="add", arguments='{"a": 2, "b": 40}'),
        ToolCall(id="call_1", name="lookup", arguments='{"word": "é"}'),
    )
    assert parse_calls("The sum is 42.", NAMES) == ("The sum is 42.", ())
    # JSON that names no tool is an answer (under an output schema, say), not a call.
    assert parse_calls('{"name": "Bob", "age": 3}', NAMES) == ('{"name": "Bob", "age": 3}', ())
    assert parse_calls('{"name": "add", "arguments": {"a": 2', NAMES) == (
        '{"name": "add", "arguments": {"a": 2',
        (),
    )


def test_a_template_without_tools_gets_them_written_in() -> None:
    call = ToolCall(id="call_0", name="add", arguments='{"a": 2, "b": 40}')
    request = REQUEST.model_copy(
        update={
            "system": "Be brief.",
            "messages": (
                *REQUEST.messages,
                Message(role="assistant", content="", tool_calls=(call,)),
                Message(role="tool", content="42", tool_call_id="call_0", name="add"),
                Message(role="tool", content="x", tool_call_id="call_1", name="lookup"),
            ),
        }
    )
    messages, tools = template_messages(request, template_takes_tools=False)
    assert tools is None
    assert messages[0]["content"].startswith("Be brief.\n\n# Tools")
    assert json.dumps(TOOLS[0].parameters) in messages[0]["content"]
    assert messages[2] == {"role": "assistant", "content": f"<tool_call>\n{CALL}\n</tool_call>"}
    assert messages[3] == {
        "role": "user",
        "content": "<tool_response>\n42\n</tool_response>\n<tool_response>\nx\n</tool_response>",
    }
    rendered, offered = template_messages(request, template_takes_tools=True)
    assert offered is not None and offered[0]["function"]["name"] == "add"
    assert rendered[2]["tool_calls"][0]["function"]["arguments"] == {"a": 2, "b": 40}
    assert rendered[3] == {"role": "tool", "content": "42"}


@pytest.mark.model
def test_the_embedded_model_writes_calls_the_tools_accept(llm: LocalLlm) -> None:  # noqa: F811
    request = REQUEST.model_copy(
        update={"tool_choice": "required", "max_tokens": 60, "temperature": 0.0}
    )

    async def both() -> tuple[LlmResponse, LlmResponse | None, list[str]]:
        plain = await llm.generate(request)
        pieces: list[str] = []
        final = None
        async for chunk in llm.stream(request):
            if chunk.done:
                final = chunk.response
            else:
                pieces.append(chunk.delta)
        return plain, final, pieces

    plain, final, pieces = anyio.run(both)
    assert final is not None
    tools = {"add": Tool.of(add), "lookup": Tool.of(lookup)}
    for response in (plain, final):
        assert response.finish_reason == "tool_calls" and response.tool_calls
        for call in response.tool_calls:
            tools[call.name].arguments(call.arguments)  # raises if the schema refuses them
    assert plain.tool_calls == final.tool_calls
    assert "".join(pieces) == ""  # calls are not streamed as text


def test_a_grammar_and_tools_are_refused_together() -> None:
    with pytest.raises(InvalidRequestError, match="tools and a grammar"):
        anyio.run(LocalLlm().generate, REQUEST.model_copy(update={"grammar": 'root ::= "x"'}))
