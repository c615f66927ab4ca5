from __future__ import annotations

import pytest

from llm_abstractions import LLMRateLimitError, LlmRequest, LlmResponse
from llm_abstractions.testing import FunctionLlm, ScriptedLlm, ScriptExhaustedError

pytestmark = pytest.mark.anyio


async def test_scripted_answers_in_order_and_records_calls() -> None:
    err = LLMRateLimitError("slow down", retry_after=2.0)
    llm = ScriptedLlm(["one two", err, "three"])
    first = await llm.generate(LlmRequest.build("a b c"))
    assert first.text == "one two"
    assert (first.usage.input_tokens, first.usage.output_tokens) == (4, 2)  # "user: a b c"
    with pytest.raises(LLMRateLimitError) as info:
        await llm.generate_content_async("again")
    assert info.value.retry_after == 2.0
    assert (
        await llm.generate_content_async([{"role": "user", "content": "x"}], max_tokens=3)
        == "three"
    )
    assert [c.messages[-1].content for c in llm.calls] == ["a b c", "again", "x"]
    assert llm.calls[2].max_tokens == 3
    assert llm.remaining == 0
    with pytest.raises(ScriptExhaustedError):
        await llm.generate(LlmRequest.build("more"))


async def test_scripted_repeat_last_and_full_responses() -> None:
    canned = LlmResponse(text="canned", provider="x", model="y", finish_reason="length")
    llm = ScriptedLlm([canned, "again"], repeat_last=True)
    assert await llm.generate(LlmRequest.build("q")) is canned
    for _ in range(3):
        assert await llm.generate_content_async("q") == "again"


async def test_stream_pieces_join_to_the_generated_text() -> None:
    text = "Hello  there,\nworld "
    llm = ScriptedLlm([text])
    chunks = [c async for c in llm.stream(LlmRequest.build("q"))]
    assert chunks[-1].done and chunks[-1].response is not None
    assert "".join(c.delta for c in chunks[:-1]) == text == chunks[-1].response.text
    assert len(chunks) > 2


async def test_function_llm_sync_and_async_handlers() -> None:
    def shout(request: LlmRequest) -> str:
        return request.messages[-1].content.upper()

    async def echo(request: LlmRequest) -> str:
        return request.system or "none"

    assert await FunctionLlm(shout).generate_content_async("hey") == "HEY"
    assert await FunctionLlm(echo).generate_content_async("hey", system="sys") == "sys"


async def test_latency_is_applied_and_close_is_recorded() -> None:
    import anyio

    llm = ScriptedLlm(["a", "b"], latency=0.05)
    async with llm:
        with anyio.fail_after(5):
            start = anyio.current_time()
            await llm.generate_content_async("q")
            assert anyio.current_time() - start >= 0.05
    assert llm.closed


async def test_health_check_reports_success_and_provider_failure() -> None:
    healthy = await ScriptedLlm(["pong"]).health_check()
    assert (healthy.ok, healthy.provider, healthy.detail) == (True, "scripted", "scripted-model")
    down = await ScriptedLlm([LLMRateLimitError("quota exhausted")]).health_check()
    assert (down.ok, down.detail) == (False, "quota exhausted")


async def test_streaming_is_optional_and_says_so() -> None:
    from tests.support.echo_provider import EchoLlm

    llm = EchoLlm()
    assert not llm.can_stream
    with pytest.raises(NotImplementedError, match="not supported by EchoLlm"):
        async for _ in llm.stream(LlmRequest.build("q")):
            pass
