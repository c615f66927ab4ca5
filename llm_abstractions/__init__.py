"""LLM interface, provider factory and error tree.

Importing this package loads no vendor SDK, and not even pydantic: public names are resolved
on first access (PEP 562), so ``import llm_abstractions`` stays cheap for CLIs and for the
subprocess scripts. Each provider's module (and its SDK) is imported when that provider is
first built through ``LlmFactory``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from llm_abstractions.errors import (
    ConfigurationError,
    InvalidRequestError,
    LLMAuthenticationError,
    LLMBadResponseError,
    LLMConnectionError,
    LLMContentFilterError,
    LLMContextLengthError,
    LLMError,
    LLMOverloadedError,
    LLMRateLimitError,
    LLMServerError,
    LLMTimeoutError,
    MissingCredentialsError,
    ModelFileError,
    OrchestraError,
    ProviderNotImplementedError,
    ProviderNotInstalledError,
    UnknownProviderError,
)

if TYPE_CHECKING:
    from llm_abstractions.base import BaseLlm
    from llm_abstractions.factory import LlmFactory, ProviderChoice, ProviderSpec, ProviderStatus
    from llm_abstractions.types import (
        HealthStatus,
        LlmRequest,
        LlmResponse,
        Message,
        StreamChunk,
        Usage,
    )

_LAZY = {
    "BaseLlm": "llm_abstractions.base",
    "LlmFactory": "llm_abstractions.factory",
    "ProviderChoice": "llm_abstractions.factory",
    "ProviderSpec": "llm_abstractions.factory",
    "ProviderStatus": "llm_abstractions.factory",
    "HealthStatus": "llm_abstractions.types",
    "LlmRequest": "llm_abstractions.types",
    "LlmResponse": "llm_abstractions.types",
    "Message": "llm_abstractions.types",
    "StreamChunk": "llm_abstractions.types",
    "Usage": "llm_abstractions.types",
}

__all__ = [
    "BaseLlm",
    "ConfigurationError",
    "HealthStatus",
    "InvalidRequestError",
    "LLMAuthenticationError",
    "LLMBadResponseError",
    "LLMConnectionError",
    "LLMContentFilterError",
    "LLMContextLengthError",
    "LLMError",
    "LLMOverloadedError",
    "LLMRateLimitError",
    "LLMServerError",
    "LLMTimeoutError",
    "LlmFactory",
    "LlmRequest",
    "LlmResponse",
    "Message",
    "MissingCredentialsError",
    "ModelFileError",
    "OrchestraError",
    "ProviderChoice",
    "ProviderNotImplementedError",
    "ProviderNotInstalledError",
    "ProviderSpec",
    "ProviderStatus",
    "StreamChunk",
    "UnknownProviderError",
    "Usage",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'llm_abstractions' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
