"""The Hugging Face provider, with the real ``AsyncInferenceClient`` against a loopback server."""

from __future__ import annotations

import asyncio
import gc
import json
import os
from collections.abc import AsyncGenerator
from pathlib import Path
from types import BuiltinFunctionType, FunctionType, ModuleType
from typing import Any, TypeVar, cast

import aiohttp
import pytest

from llm_abstractions import LlmFactory, LlmRequest, StreamChunk
from llm_abstractions.errors import (
    InvalidRequestError,
    LLMAuthenticationError,
    LLMBadResponseError,
    LLMConnectionError,
    LLMContextLengthError,
    LLMOverloadedError,
    LLMRateLimitError,
    LLMServerError,
    LLMTimeoutError,
    ModelNotFoundError,
    OrchestraError,
)
from llm_abstractions.providers.huggingface import HuggingFaceLlm
from llm_abstractions.types import Usage
from tests.fakes.hf_api import hf_app
from tests.fakes.server import LoopbackServer, Scripted, loopback_fixtures
from tests.support.loops import answers_from_two_event_loops
from tests.support.structured import (
    TODO,
    TODO_JSON,
    Todo,
    assert_same_text,
    generate_and_stream,
    refuses_grammar,
)

pytestmark = pytest.mark.anyio


def hub_response_class() -> Any:
    """The response class of the HTTP library huggingface_hub uses: httpx, httpx2 from 2.0."""
    import importlib
    from importlib.metadata import version

    major = int(version("huggingface_hub").split(".")[0])
    return importlib.import_module("httpx2" if major >= 2 else "httpx").Response


MODEL = "meta-llama/Llama-3.1-8B-Instruct"
T = TypeVar("T")
USAGE = {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150}


server, api = loopback_fixtures(hf_app)


def llm(api: LoopbackServer, **options: object) -> HuggingFaceLlm:
    return HuggingFaceLlm(MODEL, api_key="hf_test", base_url=f"{api.url}/v1", **options)  # type: ignore[arg-type]


def header(api: LoopbackServer, name: str, index: int = 0) -> str | None:
    return {k.lower(): v for k, v in api.headers[index].items()}.get(name.lower())


async def test_a_plain_answer_with_exact_usage_and_the_request_as_sent(
    api: LoopbackServer,
) -> None:
    api.script(Scripted(text="Four.", usage=USAGE))
    request = LlmRequest.build(
        "2+2?", system="Be brief.", max_tokens=5, temperature=0.0, top_p=0.9, stop=["\n"], seed=3
    )
    async with llm(api) as provider:
        response = await provider.generate(request)
    assert (response.text, response.model, response.finish_reason) == ("Four.", MODEL, "stop")
    assert (response.usage.input_tokens, response.usage.output_tokens) == (120, 30)
    assert response.response_id == "chatcmpl-hf-loopback"
    assert api.requests[0] == {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2+2?"},
        ],
        "max_tokens": 5,
        "seed": 3,
        "stop": ["\n"],
        "temperature": 0.0,
        "top_p": 0.9,
        "stream": False,
    }
    assert header(api, "authorization") == "Bearer hf_test"


async def test_json_mode_is_requested(api: LoopbackServer) -> None:
    async with llm(api) as provider:
        await provider.generate(LlmRequest.build("a JSON object", response_format="json"))
    assert api.requests[0]["response_format"] == {"type": "json_object"}


async def test_a_stream_delivers_the_text_and_usage_at_the_end(api: LoopbackServer) -> None:
    api.script(Scripted(text="one two three", usage=USAGE))
    async with llm(api) as provider:
        chunks = [c async for c in provider.stream(LlmRequest.build("count", max_tokens=9))]
    assert [c.delta for c in chunks[:-1]] == ["one", " two", " three"]
    final = chunks[-1]
    assert final.done and final.response is not None
    assert (final.response.text, final.response.finish_reason) == ("one two three", "stop")
    assert (final.response.usage.input_tokens, final.response.usage.output_tokens) == (120, 30)
    sent = api.requests[0]
    assert (sent["stream"], sent["stream_options"], sent["max_tokens"]) == (
        True,
        {"include_usage": True},
        9,
    )


async def test_an_answer_without_usage_is_an_answer_with_usage_unknown(
    api: LoopbackServer,
) -> None:
    choice = {"index": 0, "message": {"role": "assistant", "content": "Four."}}
    body = {
        "id": "x",
        "model": MODEL,
        "created": 1,
        "choices": [choice | {"finish_reason": "stop"}],
    }
    api.script(Scripted(body=json.dumps(body).encode()))
    async with llm(api) as provider:
        response = await provider.generate(LlmRequest.build("2+2?"))
    assert (response.text, response.finish_reason) == ("Four.", "stop")
    assert response.usage == Usage()  # unknown, never 0


async def test_a_stream_cut_midway_is_an_error_never_a_short_answer(api: LoopbackServer) -> None:
    api.script(Scripted(text="one two three four", cut=3))
    async with llm(api) as provider:
        seen: list[str] = []
        with pytest.raises(LLMBadResponseError, match="before the answer was complete"):
            async for chunk in provider.stream(LlmRequest.build("count")):
                seen.append(chunk.delta)
    assert seen == ["one", " two"]


def held_by(root: object, kind: type[T]) -> list[T]:
    """The objects of ``kind`` that ``root`` keeps alive through its attributes.

    Classes, modules, functions and event loops are not followed: through them everything
    in the process is reachable.
    """
    opaque = (type, ModuleType, FunctionType, BuiltinFunctionType, asyncio.AbstractEventLoop)
    found: list[T] = []
    seen: set[int] = set()
    todo = [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, opaque):
            continue
        seen.add(id(obj))
        if isinstance(obj, kind):
            found.append(obj)
        todo.extend(gc.get_referents(obj))
    return found


async def test_each_stream_releases_its_response_whole_cut_or_abandoned(
    api: LoopbackServer,
) -> None:
    api.script(*[Scripted() for _ in range(3)], Scripted(cut=2))
    async with llm(api) as provider:
        for _ in range(3):
            chunks = [c async for c in provider.stream(LlmRequest.build("hi"))]
            assert chunks[-1].done
        with pytest.raises(LLMBadResponseError):
            async for _ in provider.stream(LlmRequest.build("cut")):
                pass
        for _ in range(2):  # the consumer stops after the first piece
            stream = cast(AsyncGenerator[StreamChunk], provider.stream(LlmRequest.build("hi")))
            assert (await anext(stream)).delta
            await stream.aclose()
        # Still open after six streams, the provider keeps none of their responses, and
        # each of them is closed, its connection given back (the abandoned ones too).
        response_class = hub_response_class()
        assert held_by(provider, response_class) == []
        gc.collect()
        responses = [obj for obj in gc.get_objects() if isinstance(obj, response_class)]
        assert all(r.is_closed for r in responses if str(r.url).startswith(api.url))
        answer = await provider.generate(LlmRequest.build("still works"))
    assert answer.text == "Hello from the loopback server."
    assert len(api.requests) == 7


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"error": "Model is overloaded", "error_type": "overloaded"}, LLMOverloadedError),
        ({"error": "CUDA out of memory", "error_type": "generation"}, LLMServerError),
    ],
)
async def test_an_error_event_mid_stream_is_raised(
    api: LoopbackServer, event: dict[str, str], expected: type[OrchestraError]
) -> None:
    api.script(Scripted(cut=2, body=event))
    async with llm(api) as provider:
        with pytest.raises(expected, match="mid-stream"):
            async for _ in provider.stream(LlmRequest.build("count")):
                pass


def _error(status: int, message: str, **headers: str) -> Scripted:
    return Scripted(status=status, body={"error": message}, headers=headers)


def _router_error(status: int, message: str, code: str) -> Scripted:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    return Scripted(status=status, body=body)


@pytest.mark.parametrize(
    ("scripted", "expected"),
    [
        (_error(401, "Invalid credentials in Authorization header"), LLMAuthenticationError),
        (_error(403, "You must accept the model's terms"), LLMAuthenticationError),
        (_error(429, "Rate limit reached", **{"retry-after": "2"}), LLMRateLimitError),
        (_error(500, "Internal Server Error"), LLMServerError),
        (_error(502, "Bad Gateway"), LLMServerError),
        (_error(503, "Service Unavailable"), LLMServerError),
        (
            _error(400, "Input validation error: `temperature` must be positive"),
            InvalidRequestError,
        ),
        (_error(404, "Model not found"), ModelNotFoundError),
        (
            _router_error(400, "maximum context length is 8192 tokens", "context_length_exceeded"),
            LLMContextLengthError,
        ),
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
    assert type(info.value) is expected  # not a subclass: a plain 503 is no overload
    assert len(api.requests) == 1  # the client never retries
    if isinstance(info.value, LLMRateLimitError):
        assert info.value.retry_after == 2.0


async def test_a_loading_model_is_an_overload_asked_once_in_a_stream_too(
    api: LoopbackServer,
) -> None:
    loading = Scripted(
        status=503, body={"error": f"Model {MODEL} is currently loading", "estimated_time": 20.0}
    )
    api.script(loading, loading)
    async with llm(api) as provider:
        with pytest.raises(LLMOverloadedError, match="ready in about 20 s") as info:
            await provider.generate(LlmRequest.build("hi"))
        assert info.value.status_code == 503
        with pytest.raises(LLMOverloadedError, match="currently loading"):
            async for _ in provider.stream(LlmRequest.build("hi")):
                pass
    assert len(api.requests) == 2


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
    closed_url = os.environ["ORCHESTRA_HF_BASE_URL"]  # conftest: a closed loopback port
    async with HuggingFaceLlm(MODEL, api_key="hf_x") as closed:
        assert closed.base_url == closed_url
        with pytest.raises(LLMConnectionError, match="could not connect to .*: connection refused"):
            await closed.generate(LlmRequest.build("hi"))


async def test_the_factory_builds_it_from_the_environment(
    api: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    monkeypatch.setenv("ORCHESTRA_HF_BASE_URL", f"{api.url}/v1")
    provider = LlmFactory.get_provider("huggingface", model=MODEL)
    assert isinstance(provider, HuggingFaceLlm) and not provider.is_local
    async with provider:
        assert (await provider.generate(LlmRequest.build("hi"))).text
    assert header(api, "authorization") == "Bearer hf_from_env"


async def test_without_any_token_the_request_goes_anonymously(
    api: LoopbackServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A self-hosted TGI server needs no token; the router answers 401, mapped as usual."""
    import huggingface_hub.constants

    for var in ("HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    api.script(Scripted(), _error(401, "Invalid username or password."))
    async with HuggingFaceLlm(MODEL, base_url=f"{api.url}/v1") as provider:
        assert (await provider.generate(LlmRequest.build("hi"))).text
        with pytest.raises(LLMAuthenticationError):
            await provider.generate(LlmRequest.build("hi"))
    assert header(api, "authorization") is None


def test_one_provider_serves_two_event_loops(api: LoopbackServer) -> None:
    answers = answers_from_two_event_loops(llm(api))
    assert answers == (("Hello from the loopback server.",) * 2,) * 2


def test_huggingface_takes_schemas_but_no_grammar() -> None:
    assert HuggingFaceLlm.supports_output_schema and not HuggingFaceLlm.supports_grammar


async def test_a_schema_goes_out_as_tgis_grammar_and_the_json_is_the_text(
    api: LoopbackServer,
) -> None:
    api.script(Scripted(text=TODO_JSON), Scripted(text=TODO_JSON))
    request = LlmRequest.build("Make a todo.", output_schema=TODO)
    async with llm(api) as provider:
        response, chunks = await generate_and_stream(provider, request)
    assert response.text == TODO_JSON and Todo.model_validate_json(response.text).done
    assert_same_text(TODO_JSON, response, chunks)
    plain, streamed = api.requests
    assert streamed["stream"] is True
    # The client turns OpenAI's json_schema into TGI's grammar, the schema as written.
    expected = {"type": "json_object", "value": TODO.json_schema}
    assert plain["response_format"] == streamed["response_format"] == expected


async def test_a_grammar_is_refused_before_anything_is_sent(api: LoopbackServer) -> None:
    async with llm(api) as provider:
        await refuses_grammar(provider)
    assert api.requests == []


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_object", "value": "not a schema"},
        {"type": "json_schema", "json_schema": {"name": "x"}},
        {"type": "gbnf", "value": 'root ::= "x"'},
    ],
)
async def test_the_fake_refuses_what_tgi_refuses(
    api: LoopbackServer, response_format: dict[str, Any]
) -> None:
    body = {"model": MODEL, "messages": [], "response_format": response_format}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{api.url}/v1/chat/completions", json=body) as answer,
    ):
        assert answer.status == 422
        assert (await answer.json())["error_type"] == "validation"
