"""One provider instance used from two event loops in turn, as two ``asyncio.run`` calls do."""

from __future__ import annotations

import asyncio
import gc

from llm_abstractions import LlmRequest
from llm_abstractions.base import BaseLlm


def answers_from_two_event_loops(provider: BaseLlm) -> tuple[tuple[str, str], ...]:
    """A stream and a generate in one loop, then both again in a second loop, then close.

    Returns each loop's (streamed text, generated text). A client or socket left open by
    the first loop would warn at the ``gc.collect()``, and the tests turn warnings into
    errors.
    """

    async def ask() -> tuple[str, str]:
        chunks = [chunk async for chunk in provider.stream(LlmRequest.build("hi"))]
        answer = await provider.generate(LlmRequest.build("hi"))  # leaves a pooled connection
        assert chunks[-1].response is not None
        return chunks[-1].response.text, answer.text

    first = asyncio.run(ask())
    second = asyncio.run(ask())  # the first loop is closed now
    asyncio.run(provider.aclose())
    gc.collect()
    return first, second
