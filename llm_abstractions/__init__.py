"""LLM interface, provider factory and error tree.

Importing this package loads no vendor SDK, and not even pydantic: public names are resolved
on first access (PEP 562), so ``import llm_abstractions`` stays cheap for CLIs and for the
subprocess scripts. Each provider's module (and its SDK) is imported when that provider is
first built through ``LlmFactory``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
    ModelNotFoundError,
    OrchestraError,
    ProviderNotImplementedError,
    ProviderNotInstalledError,
    UnknownProviderError,
)
from llm_abstractions.lazy import lazy_exports

if TYPE_CHECKING:
    from llm_abstractions.availability import ProviderChoice, ProviderStatus
    from llm_abstractions.base import BaseLlm
    from llm_abstractions.factory import LlmFactory
    from llm_abstractions.providers.search import SearchAugmentedLlm
    from llm_abstractions.specs import ProviderSpec
    from llm_abstractions.types import (
        HealthStatus,
        LlmRequest,
        LlmResponse,
        Message,
        OutputSchema,
        StreamChunk,
        Usage,
    )

_LAZY = {
    "BaseLlm": "llm_abstractions.base",
    "LlmFactory": "llm_abstractions.factory",
    "ProviderChoice": "llm_abstractions.availability",
    "ProviderSpec": "llm_abstractions.specs",
    "ProviderStatus": "llm_abstractions.availability",
    "HealthStatus": "llm_abstractions.types",
    "LlmRequest": "llm_abstractions.types",
    "LlmResponse": "llm_abstractions.types",
    "Message": "llm_abstractions.types",
    "StreamChunk": "llm_abstractions.types",
    "Usage": "llm_abstractions.types",
    "OutputSchema": "llm_abstractions.types",
    "SearchAugmentedLlm": "llm_abstractions.providers.search",
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
    "ModelNotFoundError",
    "OrchestraError",
    "OutputSchema",
    "ProviderChoice",
    "ProviderNotImplementedError",
    "ProviderNotInstalledError",
    "ProviderSpec",
    "ProviderStatus",
    "SearchAugmentedLlm",
    "StreamChunk",
    "UnknownProviderError",
    "Usage",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
