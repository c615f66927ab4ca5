"""The OpenAI and OpenAI-compatible providers, with the real SDK against a loopback server."""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest

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
from llm_abstractions.providers.lmstudio import LmStudioLlm
from llm_abstractions.providers.openai import OpenAILlm
from llm_abstractions.types import Usage
from tests.fakes.openai_api import openai_app
from tests.fakes.server import LoopbackServer, Scripted, loopback_fixtures
from tests.support.loops import answers_from_two_event_loops

pytestmark = pytest.mark.anyio


server, api = loopback_fixtures(openai_app)


def llm(api: LoopbackServer, **options: object) -> OpenAILlm:
    return OpenAILlm("gpt-4o-mini", api_key="sk-test", base_url=f"{api.url}/v1", **options)  # type: ignore[arg-type]


USAGE = {
    "prompt_tokens": 120,
    "completion_tokens": 30,
    "total_tokens": 150,
    "prompt_tokens_details": {"cached_tokens": 100},
    "completion_tokens_details": {"reasoning_tokens": 12},
}


async def test_a_plain_answer_with_exact_usage_and_the_request_as_sent(
    api: LoopbackServer,
) -> None:
    api.script(Scripted(text="Four.", usage=USAGE))
    request = LlmRequest.build(
        "2+2?", system="Be brief.", max_tokens=5, temperature=0.0, stop=["\n"], seed=3
    )
    async with llm(api) as provider:
        response = await provider.generate(request)
    assert (response.text, response.model, response.finish_reason) == (
        "Four.",
        "gpt-4o-mini",
        "stop",
    )
    usage = response.usage
    assert (usage.input_tokens, usage.output_tokens) == (120, 30)
    assert (usage.cache_read_tokens, usage.reasoning_tokens) == (100, 12)
    sent = api.requests[0]
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
    ]
    assert (sent["max_completion_tokens"], sent["temperature"], sent["stop"], sent["seed"]) == (
        5,
        0.0,
        ["\n"],
        3,
    )
    assert api.headers[0]["Authorization"] == "Bearer sk-test"


async def test_json_mode_is_requested(api: LoopbackServer) -> None:
    async with llm(api) as provider:
        await provider.generate(LlmRequest.build("a JSON object", response_format="json"))
    assert api.requests[0]["response_format"] == {"type": "json_object"}


async def test_a_stream_delivers_the_text_and_usage_at_the_end(api: LoopbackServer) -> None:
    api.script(Scripted(text="one two three", usage=USAGE))
    async with llm(api) as provider:
        chunks = [c async for c in provider.stream(LlmRequest.build("count", max_tokens=9))]
    assert "".join(c.delta for c in chunks) == "one two three"
    final = chunks[-1]
    assert final.done and final.response is not None
    assert final.response.text == "one two three"
    assert (final.response.usage.input_tokens, final.response.usage.output_tokens) == (120, 30)
    assert api.requests[0]["stream_options"] == {"include_usage": True}


async def test_an_answer_without_usage_is_an_answer_with_usage_unknown(
    api: LoopbackServer,
) -> None:
    api.script(Scripted(text="one two three", usage={}), Scripted(text="one two three", usage={}))
    async with llm(api) as provider:
        response = await provider.generate(LlmRequest.build("count"))
        chunks = [c async for c in provider.stream(LlmRequest.build("count"))]
    final = chunks[-1].response
    assert final is not None
    for answer in (response, final):
        assert (answer.text, answer.finish_reason) == ("one two three", "stop")
        assert answer.usage == Usage()  # unknown: None, never 0


async def test_a_stream_cut_midway_is_an_error_never_a_short_answer(api: LoopbackServer) -> None:
    api.script(Scripted(text="one two three four", cut=2))
    async with llm(api) as provider:
        with pytest.raises(LLMBadResponseError, match="before the answer was complete"):
            async for _ in provider.stream(LlmRequest.build("count")):
                pass


def _error(status: int, message: str, code: str | None = None, **headers: str) -> Scripted:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    return Scripted(status=status, body=body, headers=headers)


@pytest.mark.parametrize(
    ("scripted", "expected"),
    [
        (_error(401, "Incorrect API key provided"), LLMAuthenticationError),
        (_error(403, "not allowed"), LLMAuthenticationError),
        (_error(429, "slow down", **{"retry-after": "2"}), LLMRateLimitError),
        (_error(529, "overloaded"), LLMOverloadedError),
        (_error(500, "boom"), LLMServerError),
        (_error(503, "unavailable"), LLMServerError),
        (
            _error(
                400, "This model's maximum context length is 8192 tokens", "context_length_exceeded"
            ),
            LLMContextLengthError,
        ),
        (_error(400, "flagged by our content filter", "content_filter"), LLMContentFilterError),
        (_error(400, "temperature must be at most 2", "invalid_value"), InvalidRequestError),
        (_error(404, "The model does not exist", "model_not_found"), ModelNotFoundError),
        (Scripted(body=b"{not json"), LLMBadResponseError),
        (Scripted(finish="content_filter"), LLMContentFilterError),
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


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "in 30 s, as an HTTP date"}, 30.0),
        ({}, None),
    ],
)
async def test_retry_after_is_read_in_every_form(
    api: LoopbackServer, headers: dict[str, str], seconds: float | None
) -> None:
    if headers.get("retry-after", "").startswith("in 30 s"):  # dated when the test runs
        headers = {"retry-after": formatdate(time.time() + 30, usegmt=True)}
    api.script(_error(429, "rate limited", **headers))
    async with llm(api) as provider:
        with pytest.raises(LLMRateLimitError) as info:
            await provider.generate(LlmRequest.build("hi"))
    if seconds is None:
        assert info.value.retry_after is None
    else:
        assert info.value.retry_after == pytest.approx(seconds, abs=2.0)


async def test_a_cut_off_answer_is_marked_incomplete(api: LoopbackServer) -> None:
    api.script(Scripted(text="The answer is", finish="length"))
    async with llm(api) as provider:
        response = await provider.generate(LlmRequest.build("hi", max_tokens=3))
    assert response.incomplete


async def test_timeouts_and_unreachable_servers(api: LoopbackServer) -> None:
    api.script(Scripted(delay=2.0))
    async with llm(api, timeout=0.3) as provider:
        with pytest.raises(LLMTimeoutError):
            await provider.generate(LlmRequest.build("hi"))
    closed = OpenAILlm("gpt-4o-mini", api_key="k", base_url="http://127.0.0.1:9/v1")
    async with closed:
        with pytest.raises(LLMConnectionError):
            await closed.generate(LlmRequest.build("hi"))


async def test_lmstudio_speaks_the_same_api_without_a_key(
    api: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCHESTRA_LMSTUDIO_URL", f"{api.url}/v1")
    provider = LlmFactory.get_provider("lmstudio", model="qwen2.5-7b-instruct")
    assert isinstance(provider, LmStudioLlm)
    async with provider:
        response = await provider.generate(LlmRequest.build("hi", max_tokens=4))
    assert response.provider == "lmstudio" and response.text
    assert api.requests[0]["max_tokens"] == 4 and "max_completion_tokens" not in api.requests[0]


async def test_the_factory_builds_it_from_the_environment(
    api: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    monkeypatch.setenv("OPENAI_BASE_URL", f"{api.url}/v1")
    async with LlmFactory.get_provider("openai-gpt") as provider:
        assert (await provider.generate(LlmRequest.build("hi"))).text
    assert api.headers[0]["Authorization"] == "Bearer sk-from-env"


def test_one_provider_serves_two_event_loops(api: LoopbackServer) -> None:
    answers = answers_from_two_event_loops(llm(api))
    assert answers == (("Hello from the loopback server.",) * 2,) * 2
