"""LLM interface, provider factory and error tree.

Importing this package loads no vendor SDK: each provider's module (and its SDK) is imported
when that provider is first built through ``LlmFactory``.
"""

from llm_abstractions.base import BaseLlm
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
from llm_abstractions.factory import LlmFactory, ProviderChoice, ProviderSpec, ProviderStatus
from llm_abstractions.types import (
    HealthStatus,
    LlmRequest,
    LlmResponse,
    Message,
    StreamChunk,
    Usage,
)

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
