"""What every provider's structured-output tests do alike, against that provider's fake."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from llm_abstractions import BaseLlm, InvalidRequestError, LlmRequest, LlmResponse, StreamChunk
from llm_abstractions.types import OutputSchema


class Todo(BaseModel):
    """The type the providers' structured-output tests ask for."""

    title: str
    done: bool = False


TODO = OutputSchema(name="Todo", json_schema=Todo.model_json_schema())
TODO_JSON = '{"title": "Buy milk", "done": true}'


async def generate_and_stream(
    provider: BaseLlm, request: LlmRequest
) -> tuple[LlmResponse, list[StreamChunk]]:
    """The provider's answer to ``request``, then its stream of the same request."""
    response = await provider.generate(request)
    return response, [chunk async for chunk in provider.stream(request)]


def assert_same_text(text: str, response: LlmResponse, chunks: list[StreamChunk]) -> None:
    """``generate``, the joined stream and the stream's final response all say ``text``."""
    assert response.text == text
    assert "".join(chunk.delta for chunk in chunks[:-1]) == text
    assert chunks[-1].response is not None and chunks[-1].response.text == text


async def refuses_grammar(provider: BaseLlm) -> None:
    """A grammar is refused, by ``generate`` and by ``stream``, naming the embedded model."""
    request = LlmRequest.build("yes or no", grammar='root ::= "yes" | "no"')
    with pytest.raises(InvalidRequestError, match="embedded model"):
        await provider.generate(request)
    with pytest.raises(InvalidRequestError, match="`local`"):
        async for _ in provider.stream(request):
            pass
