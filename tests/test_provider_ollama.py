"""The Ollama provider over aiohttp, against a loopback server speaking Ollama's native API."""

from __future__ import annotations

import asyncio
import gc
import json
import os

import aiohttp
import pytest

from llm_abstractions import LlmFactory, LlmRequest
from llm_abstractions.errors import (
    InvalidRequestError,
    LLMAuthenticationError,
    LLMBadResponseError,
    LLMConnectionError,
    LLMRateLimitError,
    LLMServerError,
    LLMTimeoutError,
    OrchestraError,
)
from llm_abstractions.providers.ollama import OllamaLlm
from llm_abstractions.types import Usage
from tests.fakes.ollama_api import ollama_app
from tests.fakes.server import LoopbackServer, Scripted, loopback_fixtures
from tests.support.structured import (
    TODO,
    TODO_JSON,
    Todo,
    assert_same_text,
    generate_and_stream,
    refuses_grammar,
)

pytestmark = pytest.mark.anyio

COUNTS = {"prompt_eval_count": 26, "eval_count": 7}


server, api = loopback_fixtures(ollama_app)


def llm(api: LoopbackServer, **options: object) -> OllamaLlm:
    return OllamaLlm("llama3.2", host=api.url, **options)  # type: ignore[arg-type]


async def test_a_plain_answer_with_exact_usage_and_the_request_as_sent(
    api: LoopbackServer,
) -> None:
    api.script(Scripted(text="Four.", usage=COUNTS))
    request = LlmRequest.build(
        "2+2?", system="Be brief.", max_tokens=5, temperature=0.0, top_p=0.9, stop=["\n"], seed=3
    )
    async with llm(api) as provider:
        response = await provider.generate(request)
    assert (response.text, response.model, response.finish_reason) == ("Four.", "llama3.2", "stop")
    assert (response.usage.input_tokens, response.usage.output_tokens) == (26, 7)
    assert response.provider == "ollama" and not response.incomplete
    assert api.requests[0] == {
        "model": "llama3.2",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2+2?"},
        ],
        "stream": False,
        "options": {"num_predict": 5, "temperature": 0.0, "top_p": 0.9, "stop": ["\n"], "seed": 3},
    }


async def test_json_mode_and_a_per_request_model(api: LoopbackServer) -> None:
    async with llm(api) as provider:
        response = await provider.generate(
            LlmRequest.build("a JSON object", response_format="json", model="qwen2.5:0.5b")
        )
    assert api.requests[0]["format"] == "json"
    assert api.requests[0]["model"] == response.model == "qwen2.5:0.5b"
    assert api.requests[0]["options"] == {}


async def test_a_stream_delivers_the_text_and_usage_at_the_end(api: LoopbackServer) -> None:
    api.script(Scripted(text="one two three", usage=COUNTS))
    async with llm(api) as provider:
        chunks = [c async for c in provider.stream(LlmRequest.build("count", max_tokens=9))]
    assert [c.delta for c in chunks[:-1]] == ["one", " two", " three"]
    final = chunks[-1]
    assert final.done and final.response is not None
    assert (final.response.text, final.response.finish_reason) == ("one two three", "stop")
    assert (final.response.usage.input_tokens, final.response.usage.output_tokens) == (26, 7)
    assert api.requests[0]["stream"] is True and api.requests[0]["options"]["num_predict"] == 9


async def test_an_answer_without_counts_is_an_answer_with_usage_unknown(
    api: LoopbackServer,
) -> None:
    line = {"model": "llama3.2", "message": {"role": "assistant", "content": "Four."}}
    api.script(Scripted(body=json.dumps(line | {"done": True, "done_reason": "stop"}).encode()))
    async with llm(api) as provider:
        response = await provider.generate(LlmRequest.build("2+2?"))
    assert (response.text, response.finish_reason) == ("Four.", "stop")
    assert response.usage == Usage()  # no eval counts: unknown, never 0


async def test_a_stream_cut_midway_is_an_error_never_a_short_answer(api: LoopbackServer) -> None:
    api.script(Scripted(text="one two three four", cut=2))
    async with llm(api) as provider:
        seen: list[str] = []
        with pytest.raises(LLMBadResponseError, match="before the answer was complete"):
            async for chunk in provider.stream(LlmRequest.build("count")):
                seen.append(chunk.delta)
    assert seen == ["one", " two"]


async def test_an_error_line_mid_stream_is_raised(api: LoopbackServer) -> None:
    api.script(Scripted(text="one two three", cut=1, body={"error": "llama runner crashed"}))
    async with llm(api) as provider:
        with pytest.raises(LLMServerError, match="llama runner crashed"):
            async for _ in provider.stream(LlmRequest.build("count")):
                pass


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("counts", [{"eval_count": 2}, {"prompt_eval_count": 0, "eval_count": 2}])
async def test_a_prompt_served_from_the_cache_has_no_input_count_and_says_so(
    api: LoopbackServer, counts: dict[str, int], streamed: bool
) -> None:
    # Ollama leaves prompt_eval_count out (Go's omitempty) when it evaluated no prompt
    # token, which older releases did for a prompt served whole from their cache.
    api.script(Scripted(text="Four.", usage=counts))
    async with llm(api) as provider:
        if streamed:
            chunks = [c async for c in provider.stream(LlmRequest.build("2+2?"))]
            response = chunks[-1].response
        else:
            response = await provider.generate(LlmRequest.build("2+2?"))
    assert response is not None and response.text == "Four."
    # Not 0: the prompt had tokens, Ollama only did not count them. Nothing is estimated.
    assert (response.usage.input_tokens, response.usage.output_tokens) == (None, 2)
    assert response.metadata == {"input_tokens_reported": False}


async def test_a_reported_prompt_count_carries_no_caveat(api: LoopbackServer) -> None:
    api.script(Scripted(usage=COUNTS))
    async with llm(api) as provider:
        response = await provider.generate(LlmRequest.build("hi"))
    assert response.usage.input_tokens == 26 and response.metadata == {}


def _error(status: int, message: str, **headers: str) -> Scripted:
    return Scripted(status=status, body={"error": message}, headers=headers)


@pytest.mark.parametrize(
    ("scripted", "expected"),
    [
        (_error(401, "unauthorized"), LLMAuthenticationError),
        (_error(429, "too many requests", **{"retry-after": "2"}), LLMRateLimitError),
        (_error(500, "llama runner process has terminated"), LLMServerError),
        (_error(503, "server busy, please try again"), LLMServerError),
        (_error(400, "invalid options: num_predict"), InvalidRequestError),
        (Scripted(body=b"{not json"), LLMBadResponseError),
    ],
)
async def test_each_failure_maps_to_its_class_and_is_asked_once(
    api: LoopbackServer, scripted: Scripted, expected: type[OrchestraError]
) -> None:
    api.script(scripted)
    async with llm(api) as provider:
        with pytest.raises(expected) as info:
            await provider.generate(LlmRequest.build("hi"))
    assert len(api.requests) == 1
    if isinstance(info.value, LLMRateLimitError):
        assert info.value.retry_after == 2.0


async def test_a_missing_model_says_how_to_pull_it(api: LoopbackServer) -> None:
    api.script(_error(404, 'model "mistral" not found, try pulling it first'))
    async with OllamaLlm("mistral", host=api.url) as provider:
        with pytest.raises(InvalidRequestError, match="ollama pull mistral"):
            await provider.generate(LlmRequest.build("hi"))


async def test_a_cut_off_answer_is_marked_incomplete(api: LoopbackServer) -> None:
    api.script(Scripted(text="The answer is", finish="length"))
    async with llm(api) as provider:
        response = await provider.generate(LlmRequest.build("hi", max_tokens=3))
    assert response.incomplete


async def test_timeouts_and_a_server_that_is_not_running(api: LoopbackServer) -> None:
    api.script(Scripted(delay=2.0))
    async with llm(api, timeout=0.3) as provider:
        with pytest.raises(LLMTimeoutError):
            await provider.generate(LlmRequest.build("hi"))
    async with OllamaLlm("llama3.2") as closed:  # conftest points OLLAMA_HOST at a closed port
        with pytest.raises(
            LLMConnectionError, match=f"could not connect to {closed.host}: .*`ollama serve`"
        ):
            await closed.generate(LlmRequest.build("hi"))
    assert closed.host == os.environ["OLLAMA_HOST"]


async def test_one_session_per_instance_reused_and_closed(api: LoopbackServer) -> None:
    provider = llm(api)
    await provider.generate(LlmRequest.build("one"))
    session = await provider._sessions.get()
    await provider.generate(LlmRequest.build("two"))
    assert await provider._sessions.get() is session
    await provider.aclose()
    assert session.closed
    assert await provider._sessions.get() is not session  # a closed provider opens anew
    await provider.aclose()


def test_one_provider_serves_two_event_loops(api: LoopbackServer) -> None:
    provider = llm(api)
    sessions = []

    async def ask() -> tuple[str, str]:
        answer = await provider.generate(LlmRequest.build("hi"))
        chunks = [chunk async for chunk in provider.stream(LlmRequest.build("hi"))]
        sessions.append(await provider._sessions.get())
        assert chunks[-1].response is not None
        return answer.text, chunks[-1].response.text

    first = asyncio.run(ask())
    assert sessions[0].closed  # closed by its own loop before that loop shut down
    second = asyncio.run(ask())  # the first session's loop is closed: a new session
    asyncio.run(provider.aclose())
    gc.collect()  # a session or socket left open would warn here, and warnings are errors
    assert first == second == ("Hello from the loopback server.",) * 2
    assert sessions[0] is not sessions[1] and sessions[1].closed


async def test_the_health_check_reads_the_model_list(api: LoopbackServer) -> None:
    async with llm(api) as provider:
        healthy = await provider.health_check()
    assert healthy.ok and healthy.detail == "model llama3.2 is available"
    async with OllamaLlm("mistral", host=api.url) as provider:
        missing = await provider.health_check()
    assert not missing.ok and "ollama pull mistral" in missing.detail
    assert "llama3.2:latest" in missing.detail
    assert [r for r in api.requests if "GET" not in r] == []  # no model was run
    async with OllamaLlm() as closed:
        down = await closed.health_check()
    assert not down.ok and "connection refused. Is Ollama running?" in down.detail


async def test_the_factory_builds_it_from_the_environment(
    api: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = api.url.removeprefix("http://")  # OLLAMA_HOST may be a bare host:port
    monkeypatch.setenv("OLLAMA_HOST", host)
    assert LlmFactory.spec("ollama").probe() is None  # type: ignore[misc]
    provider = LlmFactory.get_provider("ollama", model="qwen2.5:0.5b")
    assert isinstance(provider, OllamaLlm) and provider.is_local
    async with provider:
        response = await provider.generate(LlmRequest.build("hi"))
    assert (provider.host, response.model) == (api.url, "qwen2.5:0.5b")


def test_ollama_takes_schemas_but_no_grammar() -> None:
    assert OllamaLlm.supports_output_schema and not OllamaLlm.supports_grammar


async def test_a_schema_goes_out_as_the_format_and_the_json_is_the_text(
    api: LoopbackServer,
) -> None:
    api.script(Scripted(text=TODO_JSON), Scripted(text=TODO_JSON))
    request = LlmRequest.build("Make a todo.", output_schema=TODO)
    async with llm(api) as provider:
        response, chunks = await generate_and_stream(provider, request)
    assert response.text == TODO_JSON and Todo.model_validate_json(response.text).done
    assert_same_text(TODO_JSON, response, chunks)
    plain, streamed = api.requests
    assert plain["format"] == streamed["format"] == TODO.json_schema
    assert (plain["stream"], streamed["stream"]) == (False, True)


async def test_a_grammar_is_refused_before_anything_is_sent(api: LoopbackServer) -> None:
    async with llm(api) as provider:
        await refuses_grammar(provider)
    assert api.requests == []


async def test_the_fake_refuses_a_format_ollama_refuses(api: LoopbackServer) -> None:
    body = {"model": "llama3.2", "messages": [], "stream": False, "format": "yaml"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{api.url}/api/chat", json=body) as answer,
    ):
        assert answer.status == 400
        assert "invalid format" in (await answer.json())["error"]
