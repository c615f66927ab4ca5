"""The fault-injecting loopback server, through the real openai and anthropic SDKs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.fakes.faults import (
    CHARS_OUTPUT_TOKENS,
    DEFAULT_KINDS,
    INPUT_TOKENS,
    OUTPUT_TOKENS,
    RANDOM_KINDS,
    CallLog,
    FaultPlan,
    FaultServer,
)

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", name="server")
def _server() -> Iterator[FaultServer]:
    with FaultServer() as fault_server:
        yield fault_server


@pytest.fixture
def faults(server: FaultServer) -> Iterator[FaultServer]:
    server.reset()
    yield server
    server.reset()


@pytest.fixture
async def oai(faults: FaultServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{faults.url}/v1", api_key="k", max_retries=0, timeout=5.0
    ) as client:
        yield client


@pytest.fixture
async def claude(faults: FaultServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=faults.url, api_key="k", max_retries=0, timeout=5.0
    ) as client:
        yield client


def only(kind: str, **options: Any) -> FaultPlan:
    """A plan where every call gets ``kind``."""
    return FaultPlan(rate=1.0, kinds={kind: 1.0}, **options)


async def ask_openai(client: openai.AsyncOpenAI, prompt: str) -> str | None:
    answer = await client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": prompt}]
    )
    return answer.choices[0].message.content


async def stream_openai(client: openai.AsyncOpenAI, prompt: str) -> list[tuple[Any, ...]]:
    """Each chunk as (content, finish_reason, usage totals)."""
    stream = await client.chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": prompt}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = []
    async for chunk in stream:
        choice = chunk.choices[0] if chunk.choices else None
        usage = chunk.usage and (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        chunks.append((choice and choice.delta.content, choice and choice.finish_reason, usage))
    return chunks


async def ask_claude(client: anthropic.AsyncAnthropic, prompt: str) -> anthropic.types.Message:
    return await client.messages.create(
        model="claude-test", max_tokens=16, messages=[{"role": "user", "content": prompt}]
    )


async def stream_claude(client: anthropic.AsyncAnthropic, prompt: str) -> list[str]:
    """Each event's type, with a text delta's text after a colon."""
    stream = await client.messages.create(
        model="claude-test",
        max_tokens=16,
        messages=[{"role": "user", "content": prompt}],
        stream=True,
    )
    seen = []
    async for event in stream:
        text = event.delta.text if event.type == "content_block_delta" else None  # type: ignore[union-attr]
        seen.append(event.type if text is None else f"{event.type}:{text}")
    return seen


# Good answers


async def test_openai_answers_echo_the_task_key_with_fixed_usage(
    faults: FaultServer, oai: openai.AsyncOpenAI
) -> None:
    answer = await oai.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "Write it. [[task:a1]]"}]
    )
    assert answer.choices[0].message.content == "done:a1"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (10, 5)
    assert (INPUT_TOKENS, OUTPUT_TOKENS) == (10, 5)
    assert await stream_openai(oai, "[[task:a2]]") == [
        ("", None, None),
        ("done:", None, None),
        ("a2", None, None),
        (None, "stop", None),
        (None, None, (10, 5)),
    ]
    assert [(c.key, c.attempt, c.route, c.stream, c.kind) for c in faults.log.calls] == [
        ("a1", 1, "openai", False, "ok"),
        ("a2", 1, "openai", True, "ok"),
    ]


async def test_anthropic_answers_echo_the_task_key_with_fixed_usage(
    faults: FaultServer, claude: anthropic.AsyncAnthropic
) -> None:
    message = await ask_claude(claude, "Write it. [[task:b1]]")
    assert message.content[0].type == "text"
    assert (message.content[0].text, message.stop_reason) == ("done:b1", "end_turn")
    assert (message.usage.input_tokens, message.usage.output_tokens) == (10, 5)
    assert await stream_claude(claude, "[[task:b2]]") == [
        "message_start",
        "content_block_start",
        "content_block_delta:done:",
        "content_block_delta:b2",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert [(c.key, c.route, c.stream, c.kind) for c in faults.log.calls] == [
        ("b1", "anthropic", False, "ok"),
        ("b2", "anthropic", True, "ok"),
    ]


async def test_without_a_task_marker_the_whole_last_user_message_is_the_key(
    faults: FaultServer, oai: openai.AsyncOpenAI
) -> None:
    answer = await oai.chat.completions.create(
        model="gpt-test",
        messages=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "second question"}]},
        ],
    )
    assert answer.choices[0].message.content == "done:second question"
    assert faults.log.ok_keys() == {"second question"}


# Each fault as the SDKs raise it


async def test_a_429_carries_retry_after_in_seconds_and_milliseconds(
    faults: FaultServer, oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic
) -> None:
    faults.plan = only("429", retry_after=2.5, retry_after_ms=True)
    with pytest.raises(openai.RateLimitError) as oai_error:
        await ask_openai(oai, "[[task:r]]")
    assert oai_error.value.response.headers["retry-after"] == "2.5"
    assert oai_error.value.response.headers["retry-after-ms"] == "2500"
    assert oai_error.value.code == "rate_limit_exceeded"
    with pytest.raises(anthropic.RateLimitError) as claude_error:
        await ask_claude(claude, "[[task:r]]")
    assert claude_error.value.response.headers["retry-after"] == "2.5"
    assert faults.log.kinds_for("r") == ["429", "429"]


async def test_a_429_without_retry_after_has_no_header(
    faults: FaultServer, oai: openai.AsyncOpenAI
) -> None:
    faults.plan = only("429", retry_after=None)
    with pytest.raises(openai.RateLimitError) as error:
        await ask_openai(oai, "x")
    assert "retry-after" not in error.value.response.headers


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_500_and_529_are_server_errors_and_anthropic_calls_529_overloaded(
    faults: FaultServer, oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic, stream: bool
) -> None:
    call_openai = stream_openai if stream else ask_openai
    call_claude = stream_claude if stream else ask_claude
    faults.plan = only("500")
    with pytest.raises(openai.InternalServerError) as oai_500:
        await call_openai(oai, "x")
    with pytest.raises(anthropic.InternalServerError) as claude_500:
        await call_claude(claude, "x")
    assert (oai_500.value.status_code, claude_500.value.status_code) == (500, 500)
    faults.plan = only("529")
    with pytest.raises(openai.InternalServerError) as oai_529:
        await call_openai(oai, "x")
    with pytest.raises(anthropic.OverloadedError) as claude_529:
        await call_claude(claude, "x")
    assert (oai_529.value.status_code, oai_529.value.code) == (529, "overloaded")
    assert claude_529.value.status_code == 529
    assert claude_529.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_a_reset_is_a_connection_error(
    faults: FaultServer, oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic, stream: bool
) -> None:
    faults.plan = only("reset")
    with pytest.raises(openai.APIConnectionError) as oai_error:
        await (stream_openai if stream else ask_openai)(oai, "x")
    with pytest.raises(anthropic.APIConnectionError) as claude_error:
        await (stream_claude if stream else ask_claude)(claude, "x")
    assert not isinstance(oai_error.value, openai.APITimeoutError)
    assert not isinstance(claude_error.value, anthropic.APITimeoutError)
    assert faults.log.counts() == {"reset": 2}


async def test_a_hang_outlasts_a_short_client_timeout(
    faults: FaultServer, oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic
) -> None:
    faults.plan = only("timeout", hang=30.0)  # released when the server shuts down
    with pytest.raises(openai.APITimeoutError):
        await ask_openai(oai.with_options(timeout=0.05), "x")
    with pytest.raises(anthropic.APITimeoutError):
        await ask_claude(claude.with_options(timeout=0.05), "x")
    assert faults.log.kinds_for("x") == ["timeout", "timeout"]


async def test_a_hang_shorter_than_the_client_timeout_ends_in_a_reset(
    faults: FaultServer, oai: openai.AsyncOpenAI
) -> None:
    faults.plan = only("timeout", hang=0.01)
    with pytest.raises(openai.APIConnectionError) as error:
        await ask_openai(oai, "x")
    assert not isinstance(error.value, openai.APITimeoutError)


async def test_a_cut_stream_ends_after_its_first_piece(
    faults: FaultServer, oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic
) -> None:
    faults.plan = only("cut")
    assert await stream_openai(oai, "[[task:c]]") == [("", None, None), ("done:", None, None)]
    assert await stream_claude(claude, "[[task:c]]") == [
        "message_start",
        "content_block_start",
        "content_block_delta:done:",
    ]
    assert faults.log.kinds_for("c") == ["cut", "cut"]


async def test_a_cut_plain_answer_is_a_connection_error(
    faults: FaultServer, oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic
) -> None:
    faults.plan = only("cut")
    with pytest.raises(openai.APIConnectionError):
        await ask_openai(oai, "x")
    with pytest.raises(anthropic.APIConnectionError):
        await ask_claude(claude, "x")


# Markers: faults that no plan or cap can lift


async def test_marker_faults_fault_every_time_even_past_the_cap(
    faults: FaultServer, oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic
) -> None:
    faults.plan = FaultPlan(rate=0.0, max_faults_per_key=1)
    for _ in range(3):
        with pytest.raises(openai.AuthenticationError):
            await ask_openai(oai, "[[task:auth]] [[401]]")
        with pytest.raises(openai.BadRequestError) as too_long:
            await ask_openai(oai, "[[task:long]] [[context]]")
        assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(anthropic.AuthenticationError):
        await ask_claude(claude, "[[task:auth]] [[401]]")
    with pytest.raises(anthropic.BadRequestError) as claude_long:
        await ask_claude(claude, "[[task:long]] [[context]]")
    assert "prompt is too long" in claude_long.value.message
    assert faults.log.kinds_for("auth") == ["401"] * 4
    assert faults.log.kinds_for("long") == ["context"] * 4
    assert faults.log.ok_keys() == set()


async def test_a_random_kind_can_be_forced_by_marker(
    faults: FaultServer, oai: openai.AsyncOpenAI
) -> None:
    with pytest.raises(openai.RateLimitError):
        await ask_openai(oai, "[[task:k]] [[429]]")
    assert faults.log.kinds_for("k") == ["429"]


# Answers that are no answers, and proxies


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_a_502_is_a_proxy_s_html_page(
    faults: FaultServer, oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic, stream: bool
) -> None:
    faults.plan = only("502")
    with pytest.raises(openai.InternalServerError) as oai_error:
        await (stream_openai if stream else ask_openai)(oai, "x")
    with pytest.raises(anthropic.InternalServerError) as claude_error:
        await (stream_claude if stream else ask_claude)(claude, "x")
    for error in (oai_error.value, claude_error.value):
        assert error.status_code == 502
        assert error.response.headers["content-type"] == "text/html"
        assert "retry-after" not in error.response.headers
        assert error.body == (
            "<html><head><title>502 Bad Gateway</title></head><body><center>"
            "<h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
        )
    assert faults.log.kinds_for("x") == ["502", "502"]


async def test_a_529_says_when_to_come_back_when_the_plan_says_so(
    faults: FaultServer, oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic
) -> None:
    with pytest.raises(anthropic.OverloadedError) as by_default:
        await ask_claude(claude, "[[529]]")
    assert "retry-after" not in by_default.value.response.headers  # as before the option
    faults.plan = FaultPlan(retry_after=3.0, retry_after_ms=True, retry_after_kinds=("429", "529"))
    with pytest.raises(anthropic.OverloadedError) as claude_error:
        await ask_claude(claude, "[[529]]")
    with pytest.raises(openai.InternalServerError) as oai_error:
        await ask_openai(oai, "[[529]]")
    for error in (claude_error.value, oai_error.value):
        assert error.status_code == 529
        assert error.response.headers["retry-after"] == "3"
        assert error.response.headers["retry-after-ms"] == "3000"
    with pytest.raises(openai.RateLimitError) as limited:
        await ask_openai(oai, "[[429]]")
    assert limited.value.response.headers["retry-after"] == "3"


async def test_a_malformed_answer_is_json_the_sdks_build_an_empty_answer_from(
    faults: FaultServer, oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic
) -> None:
    faults.plan = only("malformed")
    # Neither SDK validates a 200's body: the missing fields come out as None.
    completion = await oai.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "x"}]
    )
    assert (completion.id, completion.object) == ("chatcmpl-faults", "chat.completion")
    assert completion.model_dump(exclude_none=True) == {
        "id": "chatcmpl-faults",
        "object": "chat.completion",
    }
    message = await ask_claude(claude, "x")
    assert message.model_dump(exclude_none=True) == {"type": "message"}
    stream = await oai.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "x"}], stream=True
    )
    assert [chunk.choices async for chunk in stream] == [None]
    events = await claude.messages.create(
        model="claude-test", max_tokens=16, messages=[{"role": "user", "content": "x"}], stream=True
    )
    seen = [event async for event in events]
    assert [event.type for event in seen] == ["message_start", "message_stop"]
    assert seen[0].message is None  # type: ignore[union-attr]
    assert faults.log.kinds_for("x") == ["malformed"] * 4


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_bad_json_fails_to_parse_in_both_sdks(
    faults: FaultServer, oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic, stream: bool
) -> None:
    with pytest.raises(json.JSONDecodeError):
        await (stream_openai if stream else ask_openai)(oai, "[[task:j]] [[badjson]]")
    with pytest.raises(json.JSONDecodeError):
        await (stream_claude if stream else ask_claude)(claude, "[[task:j]] [[badjson]]")
    faults.plan = only("badjson")
    raw = await oai.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "x"}]
    )
    assert raw.headers["content-type"] == "application/json"
    assert raw.content == b'{"id": "chatcmpl-faults", "cho'
    assert faults.log.kinds_for("j") == ["badjson", "badjson"]


# Good answers that are odd


async def test_a_lone_surrogate_arrives_as_one_in_the_text(
    faults: FaultServer, oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic
) -> None:
    prompt = "[[task:s]] [[surrogate]]"
    assert await ask_openai(oai, prompt) == "done:s \ud800"
    chunks = await stream_openai(oai, prompt)
    assert [content for content, _, _ in chunks] == ["", "done:", "s \ud800", None, None]
    assert chunks[-1][2] == (INPUT_TOKENS, OUTPUT_TOKENS)
    message = await ask_claude(claude, prompt)
    assert message.content[0].type == "text" and message.content[0].text == "done:s \ud800"
    assert "content_block_delta:s \ud800" in await stream_claude(claude, prompt)
    raw = await oai.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": prompt}]
    )
    assert b'"content": "done:s \\ud800"' in raw.content  # the escape, not UTF-8 bytes
    assert faults.log.kinds_for("s") == ["surrogate"] * 5


async def test_an_answer_without_usage_has_none(
    faults: FaultServer, oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic
) -> None:
    prompt = "[[task:n]] [[nousage]]"
    completion = await oai.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": prompt}]
    )
    assert completion.choices[0].message.content == "done:n"
    assert completion.usage is None and "usage" not in completion.model_fields_set
    assert await stream_openai(oai, prompt) == [  # no usage chunk, though asked for
        ("", None, None),
        ("done:", None, None),
        ("n", None, None),
        (None, "stop", None),
    ]
    message = await ask_claude(claude, prompt)
    assert message.content[0].type == "text" and message.content[0].text == "done:n"
    assert message.usage is None
    events = await claude.messages.create(
        model="claude-test",
        max_tokens=16,
        messages=[{"role": "user", "content": prompt}],
        stream=True,
    )
    seen = {event.type: event async for event in events}
    assert seen["message_start"].message.usage is None
    assert seen["message_delta"].usage is None
    assert "message_stop" in seen
    assert faults.log.kinds_for("n") == ["nousage"] * 4


# Usage in proportion to the prompt


async def test_chars_usage_counts_a_token_a_character_and_spends_max_tokens(
    faults: FaultServer, oai: openai.AsyncOpenAI
) -> None:
    faults.plan = FaultPlan(usage="chars")
    system, first, question = "Sé breve.", "こんにちは", "[[task:u]] 日本語で答えて"
    messages: list[Any] = [
        {"role": "system", "content": system},
        {"role": "user", "content": first},
        {"role": "assistant", "content": "はい"},
        {"role": "user", "content": [{"type": "text", "text": question}]},
    ]
    chars = 9 + 5 + 2 + 18  # characters, where UTF-8 has 63 bytes
    assert len((system + first + "はい" + question).encode()) == 63
    completion = await oai.chat.completions.create(
        model="gpt-test", messages=messages, max_completion_tokens=300
    )
    assert completion.choices[0].message.content == "done:u"  # the text is the same
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (chars, 300)
    assert completion.usage.total_tokens == chars + 300
    unlimited = await oai.chat.completions.create(model="gpt-test", messages=messages)
    assert unlimited.usage is not None
    assert unlimited.usage.completion_tokens == CHARS_OUTPUT_TOKENS == 4096
    old_style = await oai.chat.completions.create(
        model="gpt-test", messages=messages, max_tokens=50
    )
    assert old_style.usage is not None and old_style.usage.completion_tokens == 50
    stream = await oai.chat.completions.create(
        model="gpt-test",
        messages=messages,
        max_completion_tokens=70,
        stream=True,
        stream_options={"include_usage": True},
    )
    usages = [(c.usage.prompt_tokens, c.usage.completion_tokens) async for c in stream if c.usage]
    assert usages == [(chars, 70)]


async def test_chars_usage_counts_anthropic_s_system_prompt_in_either_form(
    faults: FaultServer, claude: anthropic.AsyncAnthropic
) -> None:
    faults.plan = FaultPlan(usage="chars")
    for system in (
        "Be brief.",
        [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
    ):
        message = await claude.messages.create(
            model="claude-test",
            max_tokens=64,
            system=system,  # type: ignore[arg-type]
            messages=[{"role": "user", "content": "¿Qué tal?"}],
        )
        assert (message.usage.input_tokens, message.usage.output_tokens) == (9 + 9, 64)
    events = await claude.messages.create(
        model="claude-test",
        max_tokens=64,
        messages=[{"role": "user", "content": "¿Qué tal?"}],
        stream=True,
    )
    seen = {event.type: event async for event in events}
    assert seen["message_start"].message.usage.input_tokens == 9  # type: ignore[union-attr]
    assert seen["message_delta"].usage.output_tokens == 64  # type: ignore[union-attr]


async def test_answer_tokens_set_the_output_count_up_to_max_tokens(
    faults: FaultServer, oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic
) -> None:
    async def spent(max_tokens: int | None) -> tuple[int, int]:
        completion = await oai.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": "abc"}],
            max_completion_tokens=openai.omit if max_tokens is None else max_tokens,
        )
        assert completion.usage is not None
        return completion.usage.prompt_tokens, completion.usage.completion_tokens

    faults.plan = FaultPlan(answer_tokens=120)
    assert [await spent(None), await spent(500), await spent(40)] == [
        (INPUT_TOKENS, 120),
        (INPUT_TOKENS, 120),
        (INPUT_TOKENS, 40),
    ]
    faults.plan = FaultPlan(usage="chars", answer_tokens=120)
    assert [await spent(None), await spent(40)] == [(3, 120), (3, 40)]
    message = await claude.messages.create(
        model="claude-test", max_tokens=16, messages=[{"role": "user", "content": "abc"}]
    )
    assert (message.usage.input_tokens, message.usage.output_tokens) == (3, 16)


# Determinism and the cap


def test_the_same_seed_gives_the_same_faults_and_another_seed_others() -> None:
    def sequence(seed: int) -> list[str]:
        plan = FaultPlan(rate=0.5, seed=seed)
        return [plan.pick(f"t{i}", attempt, 0) for i in range(50) for attempt in (1, 2)]

    assert sequence(1) == sequence(1)
    assert sequence(1) != sequence(2)
    assert set(sequence(1)) == {"ok", *DEFAULT_KINDS}  # the newer kinds are opt-in
    # A stable hash, not Python's salted one: the same picks in every process and run.
    plan = FaultPlan(rate=0.5, seed=1)
    assert [plan.pick("a", attempt, 0) for attempt in range(1, 9)] == [
        *["ok", "ok", "ok", "ok"],
        *["timeout", "cut", "ok", "429"],
    ]


def test_the_rate_and_the_weights_shape_the_mix() -> None:
    plan = FaultPlan(rate=0.3, kinds={"429": 3.0, "reset": 1.0, "cut": 0.0}, seed=7)
    picks = [plan.pick(f"t{i}", 1, 0) for i in range(4000)]
    faulted = [kind for kind in picks if kind != "ok"]
    assert 1100 < len(faulted) < 1300  # 30% of 4000
    assert set(faulted) == {"429", "reset"}
    assert 2.5 < faulted.count("429") / faulted.count("reset") < 3.5
    assert {FaultPlan(rate=0.0).pick(f"t{i}", 1, 0) for i in range(100)} == {"ok"}
    assert {FaultPlan(rate=1.0).pick(f"t{i}", 1, 0) for i in range(100)} <= set(RANDOM_KINDS)


def test_every_random_kind_can_be_weighed_in() -> None:
    assert set(DEFAULT_KINDS) < set(RANDOM_KINDS)
    assert {"malformed", "badjson", "502"} <= set(RANDOM_KINDS)
    plan = FaultPlan(rate=1.0, kinds=dict.fromkeys(RANDOM_KINDS, 1.0))
    assert {plan.pick(f"t{i}", 1, 0) for i in range(400)} == set(RANDOM_KINDS)


async def test_faults_per_key_do_not_depend_on_arrival_order(
    faults: FaultServer, oai: openai.AsyncOpenAI
) -> None:
    faults.plan = FaultPlan(rate=0.5, kinds={"429": 1.0, "500": 1.0, "reset": 1.0}, seed=3)
    keys = [f"k{i}" for i in range(8)]

    async def run(order: list[str]) -> dict[str, list[str]]:
        faults.log.clear()
        for _ in range(3):
            for key in order:
                with suppress(openai.APIError):
                    await ask_openai(oai, f"[[task:{key}]]")
        return {key: faults.log.kinds_for(key) for key in keys}

    forward = await run(keys)
    assert forward == await run(keys[::-1])
    assert {kind for kinds in forward.values() for kind in kinds} == {"ok", "429", "500", "reset"}


async def test_max_faults_per_key_lets_enough_attempts_succeed(
    faults: FaultServer, oai: openai.AsyncOpenAI
) -> None:
    faults.plan = FaultPlan(rate=1.0, max_faults_per_key=3, hang=0.01, seed=5)
    for key in ("a", "b", "c"):
        for _ in range(4):
            with suppress(openai.APIError):
                await stream_openai(oai, f"[[task:{key}]]")
    for key in ("a", "b", "c"):
        kinds = faults.log.kinds_for(key)
        assert kinds[3] == "ok"
        assert len(kinds) == 4
        assert all(kind in RANDOM_KINDS for kind in kinds[:3])
    assert faults.log.ok_keys() == {"a", "b", "c"}
    assert [call.attempt for call in faults.log.calls_for("b")] == [1, 2, 3, 4]


def test_a_plan_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ValueError, match=r"unknown fault kinds \['401'\].*\[\[401\]\]"):
        FaultPlan(kinds={"401": 1.0})
    with pytest.raises(ValueError, match="between 0 and 1"):
        FaultPlan(rate=1.5)
    with pytest.raises(ValueError, match="positive weight"):
        FaultPlan(rate=0.5, kinds={"429": 0.0})
    with pytest.raises(ValueError, match=r"unknown fault kinds \['nousage'\].*\[\[nousage\]\]"):
        FaultPlan(kinds={"nousage": 1.0})
    with pytest.raises(ValueError, match="retry_after_kinds must be among"):
        FaultPlan(retry_after_kinds=("429", "reset"))
    with pytest.raises(ValueError, match="usage must be 'fixed' or 'chars'"):
        FaultPlan(usage="tokens")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="answer_tokens cannot be negative"):
        FaultPlan(answer_tokens=-1)


# The call log


def test_the_log_counts_attempts_per_key_across_threads(tmp_path: Path) -> None:
    log = CallLog(tmp_path / "calls.jsonl")

    def admit(key: str) -> None:
        for _ in range(50):
            log.admit(key, "openai", False, lambda attempt, faults: "ok" if attempt % 2 else "500")

    threads = [threading.Thread(target=admit, args=(key,)) for key in ("a", "b", "c", "d")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    assert sorted(call.seq for call in log.calls) == list(range(200))
    assert [call.attempt for call in log.calls_for("c")] == list(range(1, 51))
    assert log.counts() == {"ok": 100, "500": 100}
    assert log.ok_keys() == {"a", "b", "c", "d"}
    assert len(log) == 200
    assert CallLog.load(tmp_path / "calls.jsonl").calls == log.calls


def test_loading_a_log_skips_a_half_written_last_line(tmp_path: Path) -> None:
    path = tmp_path / "calls.jsonl"
    record = {"seq": 0, "key": "a", "attempt": 1, "route": "anthropic"}
    record |= {"stream": True, "kind": "cut", "at": 1.5}
    path.write_text(json.dumps(record) + "\n" + '{"seq": 1, "ke')
    [call] = CallLog.load(path).calls
    assert (call.key, call.route, call.stream, call.kind, call.at) == (
        "a",
        "anthropic",
        True,
        "cut",
        1.5,
    )


# As a child process


@contextmanager
def serving(args: list[str]) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """The server as a child process on a free port, and its URL; killed if still running."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.faults", "--port", "0", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield process, f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture
def child(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    """The server as a child process: one fault per key, 429 or a hang; hangs last 10 min."""
    log = tmp_path / "calls.jsonl"
    args = ["--rate", "1", "--kinds", "429=1", "--retry-after", "0.25"]
    args += ["--max-faults-per-key", "1", "--hang", "600", "--latency", "0.001"]
    args += ["--seed", "1", "--log", str(log)]
    with serving(args) as (process, url):
        yield process, url, log


async def test_as_a_child_process_it_serves_logs_and_stops_on_sigterm(
    child: tuple[subprocess.Popen[str], str, Path],
) -> None:
    process, url, log = child
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0) as client:
        with pytest.raises(openai.RateLimitError) as limited:
            await ask_openai(client, "[[task:j1]]")
        assert limited.value.response.headers["retry-after"] == "0.25"
        assert await ask_openai(client, "[[task:j1]]") == "done:j1"
        with pytest.raises(openai.APITimeoutError):  # the server still holds this one
            await ask_openai(client.with_options(timeout=0.05), "[[task:j2]] [[timeout]]")
    lines = log.read_text().splitlines()
    assert [json.loads(line)["kind"] for line in lines] == ["429", "ok", "timeout"]
    calls = CallLog.load(log)
    assert [(c.seq, c.key, c.attempt, c.route, c.stream) for c in calls.calls] == [
        (0, "j1", 1, "openai", False),
        (1, "j1", 2, "openai", False),
        (2, "j2", 1, "openai", False),
    ]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


async def test_as_a_child_process_it_takes_the_newer_options() -> None:
    args = ["--rate", "1", "--kinds", "529=1", "--max-faults-per-key", "1"]
    args += ["--retry-after", "0.5", "--retry-after-kinds", "429,529"]
    args += ["--usage", "chars", "--answer-tokens", "20"]
    with serving(args) as (_, url):
        async with anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0) as client:
            with pytest.raises(anthropic.OverloadedError) as overloaded:
                await ask_claude(client, "[[task:c1]]")
            assert overloaded.value.response.headers["retry-after"] == "0.5"
            message = await ask_claude(client, "[[task:c1]]")  # max_tokens=16 caps the 20
            with pytest.raises(anthropic.InternalServerError) as proxy:
                await ask_claude(client, "[[task:c2]] [[502]]")
    assert (message.usage.input_tokens, message.usage.output_tokens) == (11, 16)
    assert proxy.value.response.headers["content-type"] == "text/html"
    assert "retry-after" not in proxy.value.response.headers
