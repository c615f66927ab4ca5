"""The Gemini provider, with the real ``google-genai`` SDK against a loopback server."""

from __future__ import annotations

from typing import Any

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
    LLMRateLimitError,
    LLMServerError,
    LLMTimeoutError,
    MissingCredentialsError,
    ModelNotFoundError,
)
from llm_abstractions.providers.gemini import GeminiLlm
from llm_abstractions.types import OutputSchema, Usage
from tests.fakes.gemini_api import gemini_app
from tests.fakes.server import LoopbackServer, Scripted, loopback_fixtures
from tests.support.loops import answers_from_two_event_loops
from tests.support.structured import assert_same_text, generate_and_stream, refuses_grammar

pytestmark = pytest.mark.anyio


server, api = loopback_fixtures(gemini_app)


def llm(api: LoopbackServer, **options: Any) -> GeminiLlm:
    return GeminiLlm("gemini-2.5-flash", api_key="g-test", base_url=api.url, **options)


USAGE = {
    "promptTokenCount": 120,
    "candidatesTokenCount": 30,
    "thoughtsTokenCount": 12,
    "cachedContentTokenCount": 100,
    "totalTokenCount": 162,
}


async def test_a_plain_answer_with_exact_usage_and_the_request_as_sent(
    api: LoopbackServer,
) -> None:
    api.script(Scripted(text="Four.", usage=USAGE))
    request = LlmRequest.build(
        [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "Think."},
            {"role": "user", "content": "Now."},
        ],
        system="Be brief.",
        max_tokens=5,
        temperature=0.0,
        top_p=0.5,
        stop=["\n"],
        seed=3,
    )
    async with llm(api) as provider:
        response = await provider.generate(request)
    assert (response.text, response.model, response.finish_reason) == (
        "Four.",
        "gemini-2.5-flash",
        "stop",
    )
    assert response.response_id == "loopback-response"
    usage = response.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (120, 42, 162)
    assert (usage.cache_read_tokens, usage.reasoning_tokens) == (100, 12)
    sent = api.requests[0]
    assert sent["systemInstruction"]["parts"] == [{"text": "Be brief."}]
    assert sent["contents"] == [
        {"role": "user", "parts": [{"text": "2+2?"}]},
        {"role": "model", "parts": [{"text": "Think."}]},
        {"role": "user", "parts": [{"text": "Now."}]},
    ]
    assert sent["generationConfig"] == {
        "maxOutputTokens": 5,
        "temperature": 0.0,
        "topP": 0.5,
        "stopSequences": ["\n"],
        "seed": 3,
    }
    assert api.headers[0]["x-goog-api-key"] == "g-test"


async def test_json_mode_is_requested(api: LoopbackServer) -> None:
    async with llm(api) as provider:
        await provider.generate(LlmRequest.build("a JSON object", response_format="json"))
    assert api.requests[0]["generationConfig"] == {"responseMimeType": "application/json"}


async def test_an_answer_without_thinking_reports_no_reasoning_tokens(
    api: LoopbackServer,
) -> None:
    api.script(Scripted(usage={"promptTokenCount": 7, "candidatesTokenCount": 3}))
    async with llm(api) as provider:
        usage = (await provider.generate(LlmRequest.build("hi"))).usage
    assert (usage.input_tokens, usage.output_tokens) == (7, 3)
    assert (usage.cache_read_tokens, usage.reasoning_tokens) == (None, None)  # not reported


async def test_a_stream_delivers_the_text_and_usage_at_the_end(api: LoopbackServer) -> None:
    api.script(Scripted(text="one two three", usage=USAGE))
    async with llm(api) as provider:
        chunks = [c async for c in provider.stream(LlmRequest.build("count", max_tokens=9))]
    assert [c.delta for c in chunks[:-1]] == ["one", " two", " three"]
    final = chunks[-1]
    assert final.done and final.response is not None
    assert (final.response.text, final.response.finish_reason) == ("one two three", "stop")
    usage = final.response.usage
    assert (usage.input_tokens, usage.output_tokens, usage.reasoning_tokens) == (120, 42, 12)
    assert usage.cache_read_tokens == 100
    assert api.requests[0]["generationConfig"] == {"maxOutputTokens": 9}


async def test_an_answer_without_usage_is_an_answer_with_usage_unknown(
    api: LoopbackServer,
) -> None:
    candidate = {"content": {"role": "model", "parts": [{"text": "Four."}]}, "finishReason": "STOP"}
    api.script(Scripted(body={"candidates": [candidate], "modelVersion": "gemini-2.5-flash"}))
    async with llm(api) as provider:
        response = await provider.generate(LlmRequest.build("2+2?"))
    assert (response.text, response.finish_reason) == ("Four.", "stop")
    assert response.usage == Usage()  # no usageMetadata: unknown, never 0


async def test_a_stream_cut_midway_is_an_error_never_a_short_answer(api: LoopbackServer) -> None:
    api.script(Scripted(text="one two three four", cut=2))
    async with llm(api) as provider:
        with pytest.raises(LLMBadResponseError, match="before the answer was complete"):
            async for _ in provider.stream(LlmRequest.build("count")):
                pass
    assert len(api.requests) == 1


async def test_a_stream_withheld_by_safety_raises(api: LoopbackServer) -> None:
    api.script(Scripted(text="one two", finish="SAFETY"))
    async with llm(api) as provider:
        with pytest.raises(LLMContentFilterError, match="SAFETY"):
            async for _ in provider.stream(LlmRequest.build("count")):
                pass


def _error(status: int, code: str, message: str, *details: Any, **headers: str) -> Scripted:
    body = {"error": {"code": status, "message": message, "status": code, "details": [*details]}}
    return Scripted(status=status, body=body, headers=headers)


_BAD_KEY = {
    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
    "reason": "API_KEY_INVALID",
    "domain": "googleapis.com",
}
_BLOCKED = {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": {}}


@pytest.mark.parametrize(
    ("scripted", "expected"),
    [
        (_error(400, "INVALID_ARGUMENT", "API key not valid.", _BAD_KEY), LLMAuthenticationError),
        (_error(401, "UNAUTHENTICATED", "Request had invalid credentials"), LLMAuthenticationError),
        (
            _error(403, "PERMISSION_DENIED", "The caller does not have permission"),
            LLMAuthenticationError,
        ),
        (_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded"), LLMRateLimitError),
        (_error(500, "INTERNAL", "An internal error has occurred."), LLMServerError),
        (_error(503, "UNAVAILABLE", "The model is overloaded."), LLMServerError),
        (
            _error(
                400,
                "INVALID_ARGUMENT",
                "The input token count (1048577) exceeds the maximum number of tokens "
                "allowed (1048576).",
            ),
            LLMContextLengthError,
        ),
        (
            _error(400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
            InvalidRequestError,
        ),
        (_error(404, "NOT_FOUND", "models/gemini-0 is not found"), ModelNotFoundError),
        (Scripted(body=b"{not json"), LLMBadResponseError),
        (Scripted(body={"usageMetadata": {"promptTokenCount": 3}}), LLMBadResponseError),
        (Scripted(body=_BLOCKED), LLMContentFilterError),
        (Scripted(finish="SAFETY", text=""), LLMContentFilterError),
        (Scripted(finish="RECITATION"), LLMContentFilterError),
    ],
)
async def test_each_failure_maps_to_its_class_and_is_asked_once(
    api: LoopbackServer, scripted: Scripted, expected: type[Exception]
) -> None:
    api.script(scripted)
    async with llm(api) as provider:
        with pytest.raises(expected):
            await provider.generate(LlmRequest.build("hi"))
    assert len(api.requests) == 1  # the SDK's own retries are off


async def test_a_failed_stream_is_asked_once(api: LoopbackServer) -> None:
    api.script(_error(503, "UNAVAILABLE", "The model is overloaded."))
    async with llm(api) as provider:
        with pytest.raises(LLMServerError):
            async for _ in provider.stream(LlmRequest.build("hi")):
                pass
    assert len(api.requests) == 1


def _retry_info(delay: str) -> dict[str, str]:
    return {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}


_QUOTA = {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []}


@pytest.mark.parametrize(
    ("scripted", "seconds"),
    [
        (_error(429, "RESOURCE_EXHAUSTED", "Quota", _QUOTA, _retry_info("7s")), 7.0),
        (_error(429, "RESOURCE_EXHAUSTED", "Quota", _retry_info("0.5s")), 0.5),
        (_error(429, "RESOURCE_EXHAUSTED", "Quota", _retry_info("7s"), **{"Retry-After": "2"}), 2),
        (_error(429, "RESOURCE_EXHAUSTED", "Quota", _retry_info("soon")), None),
        (_error(429, "RESOURCE_EXHAUSTED", "Quota"), None),
    ],
)
async def test_the_retry_delay_is_read_from_the_header_or_the_retry_info(
    api: LoopbackServer, scripted: Scripted, seconds: float | None
) -> None:
    api.script(scripted)
    async with llm(api) as provider:
        with pytest.raises(LLMRateLimitError) as info:
            await provider.generate(LlmRequest.build("hi"))
    assert info.value.retry_after == seconds


async def test_a_cut_off_answer_is_marked_incomplete(api: LoopbackServer) -> None:
    api.script(Scripted(text="The answer is", finish="MAX_TOKENS"))
    async with llm(api) as provider:
        response = await provider.generate(LlmRequest.build("hi", max_tokens=3))
    assert response.incomplete and response.text == "The answer is"


async def test_timeouts_and_unreachable_servers(api: LoopbackServer) -> None:
    api.script(Scripted(delay=2.0))
    async with llm(api, timeout=0.3) as provider:
        with pytest.raises(LLMTimeoutError):
            await provider.generate(LlmRequest.build("hi"))
    assert len(api.requests) == 1
    # conftest points ORCHESTRA_GEMINI_BASE_URL at a closed loopback port.
    async with GeminiLlm(api_key="k") as closed:
        with pytest.raises(LLMConnectionError):
            await closed.generate(LlmRequest.build("hi"))


async def test_a_key_is_required() -> None:
    with pytest.raises(MissingCredentialsError, match="GOOGLE_API_KEY or GEMINI_API_KEY"):
        GeminiLlm()


@pytest.mark.parametrize(
    ("env", "sent"),
    [
        ({"GOOGLE_API_KEY": "g-google", "GEMINI_API_KEY": "g-gemini"}, "g-google"),
        ({"GEMINI_API_KEY": "g-gemini"}, "g-gemini"),
    ],
)
async def test_the_factory_builds_it_from_the_environment_google_key_first(
    api: LoopbackServer, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], sent: str
) -> None:
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    # As the bundled script reads it: the API root with its version.
    monkeypatch.setenv("ORCHESTRA_GEMINI_BASE_URL", f"{api.url}/v1beta")
    provider = LlmFactory.get_provider("google-gemini")
    assert isinstance(provider, GeminiLlm) and provider.model == "gemini-2.5-flash"
    async with provider:
        assert (await provider.generate(LlmRequest.build("hi"))).text
    assert api.headers[0]["x-goog-api-key"] == sent


def test_one_provider_serves_two_event_loops(api: LoopbackServer) -> None:
    answers = answers_from_two_event_loops(llm(api))
    assert answers == (("Hello from the loopback server.",) * 2,) * 2


class Todo(BaseModel):
    title: str
    done: bool = False


class Plan(BaseModel):
    todos: list[Todo]  # a $ref into $defs, kept as written


PLAN = OutputSchema(name="Plan", json_schema=Plan.model_json_schema())
PLAN_JSON = '{"todos": [{"title": "Buy milk", "done": false}]}'


def test_gemini_takes_schemas_but_no_grammar() -> None:
    assert GeminiLlm.supports_output_schema and not GeminiLlm.supports_grammar


async def test_a_schema_goes_out_as_response_json_schema_and_the_json_is_the_text(
    api: LoopbackServer,
) -> None:
    api.script(Scripted(text=PLAN_JSON), Scripted(text=PLAN_JSON))
    request = LlmRequest.build("Plan my day.", output_schema=PLAN)
    async with llm(api) as provider:
        response, chunks = await generate_and_stream(provider, request)
    assert response.text == PLAN_JSON
    assert Plan.model_validate_json(response.text).todos[0].title == "Buy milk"
    assert_same_text(PLAN_JSON, response, chunks)
    for sent in api.requests:
        config = sent["generationConfig"]
        assert config["responseMimeType"] == "application/json"
        assert config["responseJsonSchema"] == PLAN.json_schema
        assert "responseSchema" not in config


async def test_a_grammar_is_refused_before_anything_is_sent(api: LoopbackServer) -> None:
    async with llm(api) as provider:
        await refuses_grammar(provider)
    assert api.requests == []


@pytest.mark.parametrize(
    "config",
    [
        {"responseJsonSchema": {"type": "object"}},  # no JSON mime type
        {"responseMimeType": "application/json", "responseJsonSchema": {}, "responseSchema": {}},
    ],
)
async def test_the_fake_refuses_what_gemini_refuses(
    api: LoopbackServer, config: dict[str, Any]
) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "generationConfig": config}
    url = f"{api.url}/v1beta/models/gemini-2.5-flash:generateContent"
    async with (
        aiohttp.ClientSession(headers={"x-goog-api-key": "g-test"}) as session,
        session.post(url, json=body) as answer,
    ):
        assert answer.status == 400
        assert (await answer.json())["error"]["status"] == "INVALID_ARGUMENT"
