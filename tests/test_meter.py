"""The meter between a coding CLI and its API: answers pass unchanged, and their usage counts.

Each vendor's fake answers through a ``Meter``, plain and streamed, called the way the CLIs
call them (the official SDKs where we have them, plain HTTP otherwise); the counts the
meter read are the ones the fake sent, in OpenTelemetry's terms.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from aiohttp import web

from llm_abstractions.types import Usage
from orchestration.runtime.coding.meter import Meter
from tests.fakes.anthropic_api import anthropic_app
from tests.fakes.gemini_api import gemini_app
from tests.fakes.ollama_api import ollama_app
from tests.fakes.openai_api import openai_app
from tests.fakes.openai_responses import responses_app
from tests.fakes.server import LoopbackServer, Scripted

pytestmark = pytest.mark.anyio
KEY = "sk-meter-test-key-0123456789"


def free(model: str | None, usage: Usage) -> float | None:
    return 0.0


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_answers_count_cached_and_written_tokens_as_input(stream: bool) -> None:
    (server,) = served_once(anthropic_app)
    usage = {
        "input_tokens": 100,
        "output_tokens": 20,
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 50,
    }
    server.script(Scripted(text="a b c", usage=usage))
    async with Meter(server.url, free) as meter:
        client = anthropic.AsyncAnthropic(api_key=KEY, base_url=meter.url, max_retries=0)
        asked: dict[str, Any] = {
            "model": "claude-sonnet-4-6",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": "hi"}],
        }
        if stream:
            async with client.messages.stream(**asked) as events:
                text = await events.get_final_text()
        else:
            answer = await client.messages.create(**asked)
            text = "".join(block.text for block in answer.content if block.type == "text")
        await client.close()
    assert text == "a b c"  # the answer passed unchanged
    assert meter.usage == {
        "claude-sonnet-4-6": Usage(
            input_tokens=1150, output_tokens=20, cache_read_tokens=1000, cache_write_tokens=50
        )
    }
    # The client's own credentials went through (the meter adds none).
    assert any(KEY in value for value in server.headers[0].values())


@pytest.mark.parametrize("stream", [False, True])
async def test_openai_responses_and_chat_answers_count_cached_and_reasoning_tokens(
    stream: bool,
) -> None:
    (responses, chat) = served_once(responses_app, openai_app)
    responses.script(
        Scripted(text="done", usage={"input_tokens": 300, "output_tokens": 9, "cached_tokens": 200})
    )
    chat.script(Scripted(text="done", usage={"prompt_tokens": 70, "completion_tokens": 5}))
    async with Meter(f"{responses.url}/v1", free) as first, Meter(f"{chat.url}/v1", free) as second:
        client = openai.AsyncOpenAI(api_key=KEY, base_url=first.url, max_retries=0)
        if stream:
            async with client.responses.stream(model="gpt-5-codex", input="hi") as events:
                said = (await events.get_final_response()).output_text
        else:
            said = (await client.responses.create(model="gpt-5-codex", input="hi")).output_text
        await client.close()
        client = openai.AsyncOpenAI(api_key=KEY, base_url=second.url, max_retries=0)
        asked: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        if stream:
            pieces = await client.chat.completions.create(
                **asked, stream=True, stream_options={"include_usage": True}
            )
            chatted = "".join([p.choices[0].delta.content or "" async for p in pieces if p.choices])
        else:
            chatted = (await client.chat.completions.create(**asked)).choices[0].message.content
        await client.close()
    assert said == "done" and chatted == "done"
    ((model, usage),) = first.usage.items()
    assert usage.input_tokens == 300 and usage.output_tokens == 9 and usage.cache_read_tokens == 200
    assert second.total.input_tokens == 70 and second.total.output_tokens == 5


@pytest.mark.parametrize("method", ["generateContent", "streamGenerateContent?alt=sse"])
async def test_gemini_answers_count_thoughts_as_output(method: str) -> None:
    (server,) = served_once(gemini_app)
    counts = {"promptTokenCount": 400, "candidatesTokenCount": 6, "thoughtsTokenCount": 50}
    server.script(Scripted(text="one two", usage={**counts, "cachedContentTokenCount": 300}))
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    async with Meter(server.url, free) as meter, aiohttp.ClientSession() as session:
        url = f"{meter.url}/v1beta/models/gemini-2.5-flash:{method}"
        async with session.post(url, json=body, headers={"x-goog-api-key": KEY}) as answer:
            assert answer.status == 200
            await answer.read()
    assert meter.usage == {
        "gemini-2.5-flash": Usage(
            input_tokens=400, output_tokens=56, cache_read_tokens=300, reasoning_tokens=50
        )
    }


@pytest.mark.parametrize("stream", [False, True])
async def test_ollama_answers_count_from_its_own_fields(stream: bool) -> None:
    (server,) = served_once(ollama_app)
    server.script(Scripted(text="hello there", usage={"prompt_eval_count": 12, "eval_count": 3}))
    body = {"model": "qwen2.5-coder", "messages": [{"role": "user", "content": "hi"}]}
    async with Meter(server.url, free) as meter, aiohttp.ClientSession() as session:
        async with session.post(f"{meter.url}/api/chat", json={**body, "stream": stream}) as got:
            lines = [json.loads(line) for line in (await got.read()).splitlines() if line]
    assert "".join(line["message"]["content"] for line in lines) == "hello there"
    assert meter.total == Usage(input_tokens=12, output_tokens=3)


async def test_past_its_budget_the_meter_says_so_and_an_unknown_price_is_said() -> None:
    (server,) = served_once(anthropic_app)
    prices = {"cheap": 0.004, "dear": 0.02}
    server.script(*[Scripted(usage={"input_tokens": 10, "output_tokens": 1})] * 3)
    async with Meter(server.url, lambda model, _: prices.get(str(model)), 0.01) as meter:
        client = anthropic.AsyncAnthropic(api_key=KEY, base_url=meter.url, max_retries=0)
        for model in ("cheap", "cheap"):
            await client.messages.create(
                model=model, max_tokens=5, messages=[{"role": "user", "content": "hi"}]
            )
        assert not meter.over_budget.is_set() and meter.cost_usd == pytest.approx(0.008)
        await client.messages.create(
            model="dear", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
        assert meter.over_budget.is_set() and meter.spent_usd == pytest.approx(0.028)
        await client.close()
    assert meter.answers == 3 and meter.cost_usd == pytest.approx(0.028)


async def test_an_answer_without_a_price_leaves_the_cost_unknown() -> None:
    (server,) = served_once(anthropic_app)
    async with Meter(server.url, lambda model, _: None) as meter:
        client = anthropic.AsyncAnthropic(api_key=KEY, base_url=meter.url, max_retries=0)
        await client.messages.create(
            model="mystery", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
        await client.close()
    assert meter.cost_usd is None and meter.unpriced == {"mystery"}
    assert (meter.total.input_tokens or 0) > 0


async def test_an_api_it_cannot_reach_is_a_502_saying_so() -> None:
    async with Meter("http://127.0.0.1:9", free) as meter, aiohttp.ClientSession() as session:
        async with session.post(f"{meter.url}/v1/messages", json={}) as answer:
            said = await answer.json()
    assert answer.status == 502 and "cannot reach the API" in said["error"]["message"]
    assert meter.answers == 0 and meter.cost_usd is None


async def test_a_count_a_vendor_leaves_out_is_zero_and_its_answer_priced() -> None:
    (server,) = served_once(gemini_app)
    server.script(Scripted(text="", usage={"promptTokenCount": 40}))  # a blocked prompt
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    async with Meter(server.url, free) as meter, aiohttp.ClientSession() as session:
        url = f"{meter.url}/v1beta/models/gemini-2.5-flash:generateContent"
        async with session.post(url, json=body, headers={"x-goog-api-key": KEY}) as answer:
            await answer.read()
    assert meter.total == Usage(input_tokens=40, output_tokens=0)
    assert meter.cost_usd == 0.0 and not meter.unpriced


async def test_an_answer_the_api_cuts_off_is_cut_off_for_the_cli_and_its_last_event_counts() -> (
    None
):
    """A body the API broke off must not reach the CLI as a whole one; an event stream
    whose last line has no line end still counts."""

    async def cut(request: web.Request) -> web.StreamResponse:
        answer = web.StreamResponse(headers={"Content-Type": "application/json"})
        answer.content_length = 1000
        await answer.prepare(request)
        await answer.write(b'{"type": "message", "usage": {"input_tok')
        assert request.transport is not None
        request.transport.abort()
        return answer

    async def unended(request: web.Request) -> web.StreamResponse:
        answer = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await answer.prepare(request)
        usage = {"input_tokens": 7, "output_tokens": 3}
        last = {"type": "message_delta", "delta": {}, "usage": usage}
        await answer.write(f"event: message_delta\ndata: {json.dumps(last)}".encode())
        await answer.write_eof()
        return answer

    def app(_: LoopbackServer) -> web.Application:
        made = web.Application()
        made.router.add_post("/cut", cut)
        made.router.add_post("/unended", unended)
        return made

    (server,) = served_once(app)
    async with Meter(server.url, free) as meter, aiohttp.ClientSession() as session:
        async with session.post(f"{meter.url}/cut", json={}) as answer:
            with pytest.raises(aiohttp.ClientPayloadError):
                await answer.read()
        assert meter.answers == 0
        async with session.post(f"{meter.url}/unended", json={}) as answer:
            assert (await answer.read()).endswith(b'"output_tokens": 3}}')
    assert meter.answers == 1 and meter.total == Usage(input_tokens=7, output_tokens=3)


_open: list[LoopbackServer] = []


def served_once(*apps: Callable[[LoopbackServer], web.Application]) -> list[LoopbackServer]:
    """Servers for one test (closed by the autouse fixture below)."""
    servers = [LoopbackServer(app) for app in apps]
    _open.extend(servers)
    return servers


@pytest.fixture(autouse=True)
def _close_servers() -> Iterator[None]:
    yield
    while _open:
        _open.pop().close()
