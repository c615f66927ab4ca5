"""SearchAugmentedLlm with constrained output: passed through, capabilities of the inner."""

from __future__ import annotations

import pytest

from llm_abstractions import LlmRequest
from llm_abstractions.base import BaseLlm
from llm_abstractions.providers.search import SearchAugmentedLlm, SearchResult
from llm_abstractions.testing import FunctionLlm
from llm_abstractions.types import OutputSchema

pytestmark = pytest.mark.anyio

SCHEMA = OutputSchema(
    name="Answer",
    json_schema={
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
    },
)
HIT = SearchResult("Rust 1.90 released", "https://blog.rust-lang.org/1.90", "Rust 1.90 is out.")


class OneHit:
    """A search backend that always finds the same page."""

    async def search(self, query: str, max_results: int) -> list[SearchResult]:
        return [HIT]

    async def aclose(self) -> None:
        pass


def able(schema: bool, grammar: bool) -> BaseLlm:
    """A double that follows schemas and grammars as told."""

    class Able(FunctionLlm):
        supports_output_schema = schema
        supports_grammar = grammar

    return Able(lambda request: "yes")


@pytest.mark.parametrize(
    ("schema", "grammar"),
    [(True, False), (False, True), (False, False)],
    ids=["schemas", "grammars", "neither"],
)
async def test_the_wrapper_reports_what_its_inner_provider_can_follow(
    schema: bool, grammar: bool
) -> None:
    async with SearchAugmentedLlm(able(schema, grammar), OneHit()) as llm:
        assert (llm.supports_output_schema, llm.supports_grammar) == (schema, grammar)


@pytest.mark.parametrize(
    "constraint",
    [{"output_schema": SCHEMA}, {"grammar": 'root ::= "yes" | "no"'}],
    ids=["output_schema", "grammar"],
)
async def test_constraints_reach_the_inner_provider_with_the_sources(
    constraint: dict[str, object],
) -> None:
    inner = FunctionLlm(lambda request: '{"answer": "1.90"}')
    request = LlmRequest.build("What is the latest Rust release?", **constraint)
    async with SearchAugmentedLlm(inner, OneHit()) as llm:
        response = await llm.generate(request)
        chunks = [c async for c in llm.stream(request)]
    assert response.metadata["search"]["used"] is True
    assert chunks[-1].response is not None
    assert chunks[-1].response.metadata["search"]["used"] is True
    for sent in inner.calls:
        assert sent.output_schema == request.output_schema
        assert sent.grammar == request.grammar
        assert sent.system is not None and HIT.url in sent.system
