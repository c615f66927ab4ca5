"""Structured output through OpenAI's SDK: the strict schema, its fallbacks, grammars refused.

The loopback server checks ``response_format`` by OpenAI's rules (``tests/fakes/openai_api``):
a schema outside the strict subset sent with ``strict: true`` is answered with a 400, as
OpenAI answers it. OpenAI-compatible servers (``compatible_app``) take any schema.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import aiohttp
import pytest
from pydantic import BaseModel, TypeAdapter

from llm_abstractions import LlmFactory, LlmRequest
from llm_abstractions.errors import ConfigurationError
from llm_abstractions.providers.lmstudio import LmStudioLlm
from llm_abstractions.providers.openai import OpenAICompatibleLlm, OpenAILlm
from llm_abstractions.types import OutputSchema
from tests.fakes.openai_api import compatible_app, openai_app
from tests.fakes.server import LoopbackServer, Scripted, loopback_fixtures
from tests.support.structured import refuses_grammar

pytestmark = pytest.mark.anyio


server, api = loopback_fixtures(openai_app)


@pytest.fixture(scope="module")
def compat_server() -> Iterator[LoopbackServer]:
    loopback = LoopbackServer(compatible_app)
    yield loopback
    loopback.close()


@pytest.fixture
def compat(compat_server: LoopbackServer) -> Iterator[LoopbackServer]:
    compat_server.reset()
    yield compat_server
    compat_server.reset()


class Todo(BaseModel):
    title: str
    done: bool = False
    tags: list[str] = []
    note: str | None = None


TODO = OutputSchema(name="Todo", json_schema=Todo.model_json_schema())
ANSWER = '{"title": "Buy milk", "done": false, "tags": ["home"], "note": null}'


class Tally(BaseModel):
    counts: dict[str, int]  # a mapping with free keys: outside the strict subset


def llm(api: LoopbackServer) -> OpenAILlm:
    return OpenAILlm("gpt-4o-mini", api_key="sk-test", base_url=f"{api.url}/v1")


def schema_request(output: OutputSchema = TODO) -> LlmRequest:
    return LlmRequest.build("Make a todo.", output_schema=output)


def sent_format(api: LoopbackServer, index: int = 0) -> dict[str, object]:
    fmt = api.requests[index]["response_format"]
    assert isinstance(fmt, dict)
    return fmt


def test_openai_providers_say_they_take_schemas_and_no_grammar() -> None:
    assert OpenAILlm.supports_output_schema and OpenAICompatibleLlm.supports_output_schema
    assert LmStudioLlm.supports_output_schema
    assert not OpenAILlm.supports_grammar and not LmStudioLlm.supports_grammar


async def test_a_schema_goes_out_strict_and_the_answer_is_the_text(api: LoopbackServer) -> None:
    api.script(Scripted(text=ANSWER))
    async with llm(api) as provider:
        response = await provider.generate(schema_request())
    assert response.text == ANSWER
    assert Todo.model_validate_json(response.text).tags == ["home"]
    fmt = sent_format(api)
    assert fmt["type"] == "json_schema"
    spec = fmt["json_schema"]
    assert isinstance(spec, dict)
    assert (spec["name"], spec["strict"]) == ("Todo", True)
    schema = spec["schema"]
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["title", "done", "tags", "note"]
    assert "default" not in json.dumps(schema)


async def test_a_stream_sends_the_same_format_and_streams_the_json(api: LoopbackServer) -> None:
    api.script(Scripted(text=ANSWER), Scripted(text=ANSWER))
    async with llm(api) as provider:
        await provider.generate(schema_request())
        chunks = [c async for c in provider.stream(schema_request())]
    assert api.requests[1]["stream"] is True
    assert sent_format(api, 1) == sent_format(api, 0)
    assert len(chunks) > 2  # streamed piece by piece, not held back
    assert "".join(c.delta for c in chunks) == ANSWER
    final = chunks[-1].response
    assert final is not None and final.text == ANSWER


@pytest.mark.parametrize(
    "output",
    [
        OutputSchema(name="Tally", json_schema=Tally.model_json_schema()),
        OutputSchema(name="Todo", json_schema=Todo.model_json_schema(), strict=False),
    ],
    ids=["outside-the-strict-subset", "strict-turned-off"],
)
async def test_otherwise_the_schema_goes_as_written_without_strict(
    api: LoopbackServer, output: OutputSchema
) -> None:
    async with llm(api) as provider:
        await provider.generate(schema_request(output))
    spec = sent_format(api)["json_schema"]
    assert isinstance(spec, dict)
    assert spec["strict"] is False
    assert spec["schema"] == output.json_schema


async def test_a_list_travels_wrapped_in_an_object_and_comes_back_unwrapped(
    api: LoopbackServer,
) -> None:
    todos = OutputSchema(name="Todos", json_schema=TypeAdapter(list[Todo]).json_schema())
    wrapped = f'{{"value": [{ANSWER}]}}'
    api.script(Scripted(text=wrapped), Scripted(text=wrapped))
    async with llm(api) as provider:
        response = await provider.generate(schema_request(todos))
        chunks = [c async for c in provider.stream(schema_request(todos))]
    assert TypeAdapter(list[Todo]).validate_json(response.text)[0].title == "Buy milk"
    assert json.loads(response.text) == [json.loads(ANSWER)]
    spec = sent_format(api)["json_schema"]
    assert isinstance(spec, dict)
    schema = spec["schema"]
    assert (schema["type"], schema["required"], spec["strict"]) == ("object", ["value"], True)
    assert schema["properties"]["value"]["type"] == "array"
    assert "Todo" in schema["$defs"]  # the references inside still resolve
    assert [c.delta for c in chunks[:-1]] == [response.text]
    assert chunks[-1].response is not None and chunks[-1].response.text == response.text


async def test_a_grammar_is_refused_before_anything_is_sent(api: LoopbackServer) -> None:
    async with llm(api) as provider:
        await refuses_grammar(provider)
    assert api.requests == []


async def test_the_fake_refuses_what_openai_refuses(api: LoopbackServer) -> None:
    raw = Todo.model_json_schema()  # pydantic's own: optional fields, objects left open
    formats = [
        {"type": "json_schema", "json_schema": {"name": "Todo", "schema": raw, "strict": True}},
        {"type": "json_schema", "json_schema": {"name": "L", "schema": {"type": "array"}}},
        {"type": "json_schema", "json_schema": {"name": "no name allowed", "schema": raw}},
    ]
    async with aiohttp.ClientSession() as session:
        for fmt in formats:
            body = {"model": "m", "messages": [], "response_format": fmt}
            async with session.post(f"{api.url}/v1/chat/completions", json=body) as answer:
                assert answer.status == 400
                error = (await answer.json())["error"]
                assert error["param"] == "response_format"


def compatible(compat: LoopbackServer, **options: object) -> OpenAICompatibleLlm:
    return OpenAICompatibleLlm("local-model", base_url=f"{compat.url}/v1", **options)  # type: ignore[arg-type]


async def test_compatible_servers_get_the_schema_as_written(compat: LoopbackServer) -> None:
    todos = OutputSchema(name="Todos", json_schema=TypeAdapter(list[Todo]).json_schema())
    compat.script(Scripted(text=ANSWER), Scripted(text=f"[{ANSWER}]"))
    async with compatible(compat) as provider:
        response = await provider.generate(schema_request())
        listed = await provider.generate(schema_request(todos))
    assert response.text == ANSWER and listed.text == f"[{ANSWER}]"
    assert sent_format(compat) == {
        "type": "json_schema",
        "json_schema": {"name": "Todo", "schema": TODO.json_schema, "strict": True},
    }
    spec = sent_format(compat, 1)["json_schema"]
    assert isinstance(spec, dict) and spec["schema"] == todos.json_schema  # not wrapped


async def test_llama_cpp_python_servers_get_a_json_object_with_the_schema(
    compat: LoopbackServer,
) -> None:
    compat.script(Scripted(text=ANSWER), Scripted(text=ANSWER))
    async with compatible(compat, schema_format="json_object") as provider:
        response = await provider.generate(schema_request())
        chunks = [c async for c in provider.stream(schema_request())]
    assert response.text == ANSWER
    assert chunks[-1].response is not None and chunks[-1].response.text == ANSWER
    expected = {"type": "json_object", "schema": TODO.json_schema}
    assert sent_format(compat, 0) == sent_format(compat, 1) == expected


async def test_lmstudio_takes_the_schema_format_from_the_factory(
    compat: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCHESTRA_LMSTUDIO_URL", f"{compat.url}/v1")
    provider = LlmFactory.get_provider("lmstudio", model="qwen", schema_format="json_object")
    async with provider:
        await provider.generate(schema_request())
    assert sent_format(compat)["type"] == "json_object"
    with pytest.raises(ConfigurationError, match="schema_format"):
        compatible(compat, schema_format="gbnf")
