"""LM Studio, or any server speaking OpenAI's chat completions API on this network.

The address comes from ``base_url=``, else ``ORCHESTRA_LMSTUDIO_URL``, else LM Studio's
default ``http://localhost:1234/v1``. Models run on the user's own machine: they cost 0.
Structured output goes in OpenAI's ``json_schema`` shape, which LM Studio takes; pass
``schema_format="json_object"`` for llama-cpp-python's server (see ``OpenAICompatibleLlm``).
"""

from __future__ import annotations

from typing import ClassVar

from llm_abstractions.providers.openai import OpenAICompatibleLlm
from llm_abstractions.specs import LMSTUDIO_DEFAULT_URL

__all__ = ["LmStudioLlm"]


class LmStudioLlm(OpenAICompatibleLlm):
    """LM Studio's OpenAI-compatible server (``lms server start``)."""

    provider: ClassVar[str] = "lmstudio"
    base_url_env: ClassVar[str] = "ORCHESTRA_LMSTUDIO_URL"

    def _default_base_url(self) -> str | None:
        return LMSTUDIO_DEFAULT_URL
