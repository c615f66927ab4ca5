"""A provider module that the factory tests have the factory import lazily."""

from __future__ import annotations

from llm_abstractions import BaseLlm, LlmRequest, LlmResponse


class EchoLlm(BaseLlm):
    provider = "echo"

    async def generate(self, request: LlmRequest) -> LlmResponse:
        return LlmResponse(text=request.messages[-1].content, provider="echo", model=self.model)
