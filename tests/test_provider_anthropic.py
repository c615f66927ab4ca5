"""The Anthropic provider, with the real SDK against a loopback Messages API."""

from __future__ import annotations

import json
import re
import time
from email.utils import formatdate

import aiohttp
import pytest
from pydantic import BaseModel

from llm_abstractions import LlmFactory, LlmRequest
from llm_abstractions.errors import (
    InvalidRequestError,
    LLMAuthenticationError,
    LLMBadResponseError,
    LLMConnectionError,
    LLMContentFilterError,
    LLMContextLengthError,
    LLMOverloadedError,
    LLMRateLimitError,
    LLMServerError,
    LLMTimeoutError,
    ModelNotFoundError,
    OrchestraError,
)
from llm_abstractions.providers.anthropic import (
    DEFAULT_MAX_TOKENS,
    JSON_INSTRUCTION,
    SCHEMA_INSTRUCTION,
    AnthropicLlm,
)
from llm_abstractions.types import OutputSchema, Usage
from tests.fakes.anthropic_api import anthropic_app, error_body
from tests.fakes.server import LoopbackServer, Scripted, loopback_fixtures
from tests.support.loops import answers_from_two_event_loops
from tests.support.structured import assert_same_text, generate_and_stream, refuses_grammar

pytestmark = pytest.mark.anyio


MODEL = "claude-sonnet-4-6"


server, api = loopback_fixtures(anthropic_app)


def llm(api: LoopbackServer, timeout: float = 120.0) -> AnthropicLlm:
    return AnthropicLlm(MODEL, api_key="sk-ant-test", base_url=api.url, timeout=timeout)


# Anthropic's input_tokens exclude the cache: 20 new + 100 read + 30 written = 150 in all.
USAGE = {
    "input_tokens": 20,
    "output_tokens": 7,
    "cache_read_input_tokens": 100,
    "cache_creation_input_tokens": 30,
}


def _lower(headers: dict[str, str]) -> dict[str, str]:
    return {key.lower(): value for key, value in headers.items()}


async def test_a_plain_answer_with_exact_usage_and_the_request_as_sent(
    api: LoopbackServer,
) -> None:
    api.script(Scripted(text="Four.", usage=USAGE))
    request = LlmRequest.build(
        "2+2?", system="Be brief.", max_tokens=5, temperature=0.0, top_p=0.9, stop=["\n"], seed=3
    )
    async with llm(api) as provider:
        response = await provider.generate(request)
    assert (response.text, response.model, response.finish_reason, response.response_id) == (
        "Four.",
        MODEL,
        "stop",
        "msg_loopback",
    )
    usage = response.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (150, 7, 157)
    assert (usage.cache_read_tokens, usage.cache_write_tokens) == (100, 30)
    sent = api.requests[0]
    assert sent["system"] == "Be brief."
    assert sent["messages"] == [{"role": "user", "content": "2+2?"}]
    assert (sent["max_tokens"], sent["stop_sequences"]) == (5, ["\n"])
    assert not {"temperature", "top_p", "seed"} & sent.keys()  # see the module docstring
    headers = _lower(api.headers[0])
    assert headers["authorization"] == "Bearer sk-ant-test"  # SDK 2 sends no x-api-key
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", headers["anthropic-version"])


async def test_max_tokens_defaults_and_json_mode_asks_in_the_system_prompt(
    api: LoopbackServer,
) -> None:
    async with llm(api) as provider:
        response = await provider.generate(LlmRequest.build("hi"))
        await provider.generate(LlmRequest.build("an object", response_format="json"))
        await provider.generate(
            LlmRequest.build("an object", system="Be terse.", response_format="json")
        )
    plain, json_only, json_with_system = api.requests
    assert plain["max_tokens"] == DEFAULT_MAX_TOKENS
    assert "system" not in plain and "stop_sequences" not in plain
    assert json_only["system"] == JSON_INSTRUCTION
    assert json_with_system["system"] == f"Be terse.\n\n{JSON_INSTRUCTION}"
    assert response.usage.input_tokens == 1  # no cache: the reported count as it is
    assert (response.usage.cache_read_tokens, response.usage.cache_write_tokens) == (0, 0)


async def test_a_stream_delivers_the_text_and_usage_at_the_end(api: LoopbackServer) -> None:
    api.script(Scripted(text="one two three", usage=USAGE))
    async with llm(api) as provider:
        chunks = [c async for c in provider.stream(LlmRequest.build("count", max_tokens=9))]
    assert [c.delta for c in chunks[:-1]] == ["one", " two", " three"]
    final = chunks[-1]
    assert final.done and final.response is not None
    assert (final.response.text, final.response.finish_reason) == ("one two three", "stop")
    assert final.response.response_id == "msg_loopback"
    usage = final.response.usage
    assert (usage.input_tokens, usage.output_tokens) == (150, 7)
    assert (usage.cache_read_tokens, usage.cache_write_tokens) == (100, 30)
    assert api.requests[0]["stream"] is True and api.requests[0]["max_tokens"] == 9


async def test_an_answer_without_usage_is_an_answer_with_usage_unknown(
    api: LoopbackServer,
) -> None:
    # Refused as malformed, it was retried: five answers paid for, and then a failure.
    api.script(Scripted(text="one two three", usage={}), Scripted(text="one two three", usage={}))
    async with llm(api) as provider:
        response, chunks = await generate_and_stream(provider, LlmRequest.build("count"))
    final = chunks[-1].response
    assert final is not None
    for answer in (response, final):
        assert (answer.text, answer.finish_reason) == ("one two three", "stop")
        assert answer.usage == Usage()  # unknown: None, never 0
    assert len(api.requests) == 2


async def test_a_stream_cut_midway_is_an_error_never_a_short_answer(api: LoopbackServer) -> None:
    api.script(Scripted(text="one two three four", cut=5))
    chunks = []
    async with llm(api) as provider:
        with pytest.raises(LLMBadResponseError, match="before the answer was complete"):
            async for chunk in provider.stream(LlmRequest.build("count")):
                chunks.append(chunk)
    assert chunks and not any(c.done for c in chunks)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("overloaded_error", LLMOverloadedError),
        ("api_error", LLMServerError),
        ("rate_limit_error", LLMRateLimitError),
    ],
)
async def test_an_error_event_mid_stream_maps_to_its_class(
    api: LoopbackServer, kind: str, expected: type[OrchestraError]
) -> None:
    api.script(Scripted(status=200, body=error_body(kind, "Overloaded"), text="one two three"))
    chunks = []
    async with llm(api) as provider:
        with pytest.raises(expected):
            async for chunk in provider.stream(LlmRequest.build("count")):
                chunks.append(chunk)
    assert [c.delta for c in chunks] == ["one"]
    assert len(api.requests) == 1


def _error(status: int, kind: str, message: str, **headers: str) -> Scripted:
    return Scripted(status=status, body=error_body(kind, message), headers=headers)


@pytest.mark.parametrize(
    ("scripted", "expected"),
    [
        (_error(401, "authentication_error", "invalid x-api-key"), LLMAuthenticationError),
        (_error(403, "permission_error", "not allowed"), LLMAuthenticationError),
        (_error(429, "rate_limit_error", "slow down", **{"retry-after": "2"}), LLMRateLimitError),
        (_error(529, "overloaded_error", "Overloaded"), LLMOverloadedError),
        (_error(500, "api_error", "Internal server error"), LLMServerError),
        (_error(503, "api_error", "unavailable"), LLMServerError),
        (
            _error(400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000"),
            LLMContextLengthError,
        ),
        (_error(400, "invalid_request_error", "temperature: out of range"), InvalidRequestError),
        (_error(404, "not_found_error", "model: claude-nope"), ModelNotFoundError),
        (Scripted(body=b"{not json"), LLMBadResponseError),
        (Scripted(finish="refusal"), LLMContentFilterError),
    ],
)
async def test_each_failure_maps_to_its_class_and_is_asked_once(
    api: LoopbackServer, scripted: Scripted, expected: type[OrchestraError]
) -> None:
    api.script(scripted)
    async with llm(api) as provider:
        with pytest.raises(expected):
            await provider.generate(LlmRequest.build("hi"))
    assert len(api.requests) == 1  # the SDK's own retries are off


async def test_a_refusal_in_a_stream_is_raised_not_returned(api: LoopbackServer) -> None:
    api.script(Scripted(text="I can't", finish="refusal"))
    async with llm(api) as provider:
        with pytest.raises(LLMContentFilterError):
            async for _ in provider.stream(LlmRequest.build("hi")):
                pass


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "in 30 s, as an HTTP date"}, 30.0),
        ({}, None),
    ],
)
async def test_retry_after_is_read_in_seconds_and_as_a_date(
    api: LoopbackServer, headers: dict[str, str], seconds: float | None
) -> None:
    if headers.get("retry-after", "").startswith("in 30 s"):  # dated when the test runs
        headers = {"retry-after": formatdate(time.time() + 30, usegmt=True)}
    api.script(_error(429, "rate_limit_error", "rate limited", **headers))
    async with llm(api) as provider:
        with pytest.raises(LLMRateLimitError) as info:
            await provider.generate(LlmRequest.build("hi"))
    if seconds is None:
        assert info.value.retry_after is None
    else:
        assert info.value.retry_after == pytest.approx(seconds, abs=2.0)


async def test_a_cut_off_answer_is_marked_incomplete(api: LoopbackServer) -> None:
    api.script(Scripted(text="The answer is", finish="max_tokens"))
    async with llm(api) as provider:
        response = await provider.generate(LlmRequest.build("hi", max_tokens=3))
    assert response.finish_reason == "length" and response.incomplete


async def test_timeouts_and_unreachable_servers(api: LoopbackServer) -> None:
    api.script(Scripted(delay=2.0))
    async with llm(api, timeout=0.3) as provider:
        with pytest.raises(LLMTimeoutError):
            await provider.generate(LlmRequest.build("hi"))
    assert len(api.requests) == 1
    closed = AnthropicLlm(MODEL, api_key="k", base_url="http://127.0.0.1:9")
    async with closed:
        with pytest.raises(LLMConnectionError):
            await closed.generate(LlmRequest.build("hi"))


async def test_the_factory_builds_it_from_the_environment(
    api: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-from-env")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
    async with LlmFactory.get_provider("anthropic-claude") as provider:
        assert isinstance(provider, AnthropicLlm)
        response = await provider.generate(LlmRequest.build("hi"))
    assert response.text and response.provider == "anthropic-claude"
    assert api.requests[0]["model"] == "claude-sonnet-4-6"  # the default, not deprecated
    assert _lower(api.headers[0])["authorization"] == "Bearer sk-ant-from-env"


async def test_a_malformed_answer_body_is_a_bad_response(api: LoopbackServer) -> None:
    api.script(Scripted(status=200, body={"type": "message", "id": "msg_1"}))  # no content
    async with llm(api) as provider:
        with pytest.raises(LLMBadResponseError, match="malformed"):
            await provider.generate(LlmRequest.build("hi"))


def test_no_key_at_all_is_a_configuration_error() -> None:
    from llm_abstractions.errors import MissingCredentialsError

    with pytest.raises(MissingCredentialsError, match="ANTHROPIC_API_KEY"):
        AnthropicLlm()


def test_one_provider_serves_two_event_loops(api: LoopbackServer) -> None:
    answers = answers_from_two_event_loops(llm(api))
    assert answers == (("Hello from the loopback server.",) * 2,) * 2


class Todo(BaseModel):
    title: str
    done: bool = False
    tags: list[str] = []


class Tally(BaseModel):
    counts: dict[str, int]  # free keys: JSON outputs close every object


TODO = OutputSchema(name="Todo", json_schema=Todo.model_json_schema())
TODO_JSON = '{"title": "Buy milk", "done": false, "tags": ["home"]}'


def test_anthropic_takes_schemas_but_no_grammar() -> None:
    assert AnthropicLlm.supports_output_schema and not AnthropicLlm.supports_grammar


async def test_a_schema_goes_out_as_json_outputs_and_the_json_is_the_text(
    api: LoopbackServer,
) -> None:
    api.script(Scripted(text=TODO_JSON), Scripted(text=TODO_JSON))
    request = LlmRequest.build("Make a todo.", system="Be brief.", output_schema=TODO)
    async with llm(api) as provider:
        response, chunks = await generate_and_stream(provider, request)
    assert response.text == TODO_JSON
    assert Todo.model_validate_json(response.text).tags == ["home"]
    assert_same_text(TODO_JSON, response, chunks)
    plain, streamed = api.requests
    fmt = plain["output_config"]["format"]
    assert fmt["type"] == "json_schema"
    assert fmt["schema"]["additionalProperties"] is False  # closed by the SDK's transform
    assert fmt["schema"]["properties"].keys() == {"title", "done", "tags"}
    assert streamed["stream"] is True and streamed["output_config"] == plain["output_config"]
    assert plain["system"] == streamed["system"] == "Be brief."  # nothing added: enforced
    assert TODO.json_schema == Todo.model_json_schema()  # the request's schema is untouched


async def test_a_schema_json_outputs_cannot_express_goes_in_the_prompt(
    api: LoopbackServer,
) -> None:
    tally = OutputSchema(name="Tally", json_schema=Tally.model_json_schema())
    api.script(Scripted(text='{"counts": {"a": 1}}'))
    async with llm(api) as provider:
        response = await provider.generate(
            LlmRequest.build("Count.", system="Be brief.", output_schema=tally)
        )
    assert response.text == '{"counts": {"a": 1}}'
    sent = api.requests[0]
    assert "output_config" not in sent
    instruction = SCHEMA_INSTRUCTION.format(schema=json.dumps(tally.json_schema))
    assert sent["system"] == f"Be brief.\n\n{instruction}"


async def test_a_grammar_is_refused_before_anything_is_sent(api: LoopbackServer) -> None:
    async with llm(api) as provider:
        await refuses_grammar(provider)
    assert api.requests == []


@pytest.mark.parametrize(
    "output_config",
    [
        {"format": {"type": "json_schema", "schema": Todo.model_json_schema()}},  # left open
        {"format": {"type": "json", "schema": {"type": "string"}}},
        {"format": {"type": "json_schema"}},
    ],
)
async def test_the_fake_refuses_what_the_api_refuses(
    api: LoopbackServer, output_config: dict[str, object]
) -> None:
    body = {"model": MODEL, "max_tokens": 5, "messages": [], "output_config": output_config}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{api.url}/v1/messages", json=body) as answer,
    ):
        assert answer.status == 400
        assert (await answer.json())["error"]["type"] == "invalid_request_error"
