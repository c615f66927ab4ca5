"""Errors raised by Orchestra.

Two families live under one root, and callers should treat them differently:
*configuration errors* are the user's mistakes (fix the input, retrying is pointless), while
*LLM errors* are failures of a provider (some of which are worth retrying).

```
OrchestraError
├── ConfigurationError (ValueError)        the user's input is wrong; nothing was spent
│   ├── UnknownProviderError (LookupError)  no provider by that name; suggests close matches
│   ├── ProviderNotInstalledError (ImportError)
│   │                                       the provider's SDK is missing; names the extra
│   ├── ProviderNotImplementedError         the name is known but not built in this version
│   ├── MissingCredentialsError             no API key; names the environment variable
│   ├── ModelFileError                      the local model file is missing or not GGUF
│   └── InvalidRequestError                 a request that fails validation
│       └── ModelNotFoundError              the provider has no such model (HTTP 404)
└── LLMError                                a provider failed to serve a request
    ├── LLMAuthenticationError              rejected credentials (never retried)
    ├── LLMRateLimitError                   429; carries ``retry_after`` seconds if known
    ├── LLMTimeoutError (TimeoutError)
    ├── LLMConnectionError (ConnectionError) the provider could not be reached
    ├── LLMServerError                      5xx; ``LLMOverloadedError`` for 529
    ├── LLMContextLengthError               prompt plus output exceed the context window
    ├── LLMContentFilterError               the provider refused or filtered the content
    └── LLMBadResponseError                 malformed or cut-off response
```

Each ``LLMError`` class says whether retrying can help (``retryable``); the executor's retry
policy reads that attribute rather than matching on messages.
"""

from __future__ import annotations

__all__ = [
    "install_hint",
    "ConfigurationError",
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
    "MissingCredentialsError",
    "ModelFileError",
    "ModelNotFoundError",
    "OrchestraError",
    "ProviderNotImplementedError",
    "ProviderNotInstalledError",
    "UnknownProviderError",
]


def install_hint(missing: str, extra: str | None) -> str:
    """The pip command that installs ``missing``: through its extra when it has one."""
    return f'pip install "orchestra[{extra}]"' if extra else f"pip install {missing}"


class OrchestraError(Exception):
    """Root of every error Orchestra raises on purpose."""


class ConfigurationError(OrchestraError, ValueError):
    """The user's configuration or input is wrong; fix it and try again."""


class UnknownProviderError(ConfigurationError, LookupError):
    """No provider is registered under the requested name."""

    def __init__(self, name: str, known: list[str], suggestions: list[str]) -> None:
        self.name = name
        self.known = known
        self.suggestions = suggestions
        hint = f" Did you mean {' or '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        super().__init__(
            f"Unknown provider {name!r}.{hint} Known providers: {', '.join(known)}. "
            "Register your own with LlmFactory.register_provider()."
        )

    def __reduce__(self) -> tuple[type, tuple[str, list[str], list[str]]]:
        # Pickled whole: raised on a cluster node, it is raised again in the driver.
        return type(self), (self.name, self.known, self.suggestions)

    def __str__(self) -> str:
        # LookupError would otherwise repr() the message like a missing key.
        return str(self.args[0])


class ProviderNotInstalledError(ConfigurationError, ImportError):
    """The SDK a provider needs is not installed."""

    def __init__(self, provider: str, missing: str, extra: str | None) -> None:
        self.provider = provider
        self.missing = missing
        self.extra = extra
        super().__init__(
            f"Provider {provider!r} needs the Python package {missing!r}, which is not "
            f"installed. Install it with: {install_hint(missing, extra)}"
        )

    def __reduce__(self) -> tuple[type, tuple[str, str, str | None]]:
        return type(self), (self.provider, self.missing, self.extra)


class ProviderNotImplementedError(ConfigurationError):
    """The provider name is reserved but this version of Orchestra does not ship it yet."""


class MissingCredentialsError(ConfigurationError):
    """A provider needs an API key and none was given or found in the environment."""

    def __init__(self, provider: str, env_vars: tuple[str, ...]) -> None:
        self.provider = provider
        self.env_vars = env_vars
        names = " or ".join(env_vars)
        super().__init__(
            f"Provider {provider!r} needs an API key: set {names} in the environment "
            "or pass api_key=."
        )

    def __reduce__(self) -> tuple[type, tuple[str, tuple[str, ...]]]:
        return type(self), (self.provider, self.env_vars)


class ModelFileError(ConfigurationError):
    """A local model path does not point at a readable GGUF file."""


class InvalidRequestError(ConfigurationError):
    """A request (messages, parameters) failed validation before anything was sent."""


class ModelNotFoundError(InvalidRequestError):
    """The provider does not have the requested model (HTTP 404): pull it, or name another.

    Still the caller's request, but another provider or model may serve it, so a fallback
    chain moves on.
    """


class LLMError(OrchestraError):
    """A provider failed to serve a request.

    Attributes:
        provider: The provider name (``"local"``, ``"anthropic-claude"``, ...), if known.
        retryable: Whether trying the same request again can succeed.
    """

    retryable = False

    def __init__(self, message: str, *, provider: str | None = None) -> None:
        super().__init__(message)
        self.provider = provider


class LLMAuthenticationError(LLMError):
    """The provider rejected the credentials or the caller lacks permission."""


class LLMRateLimitError(LLMError):
    """The provider asked us to slow down (HTTP 429).

    Attributes:
        retry_after: Seconds the provider asked us to wait, or None when it did not say.
    """

    retryable = True

    def __init__(
        self, message: str, *, provider: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, provider=provider)
        self.retry_after = retry_after


class LLMTimeoutError(LLMError, TimeoutError):
    """The provider did not answer in time."""

    retryable = True


class LLMConnectionError(LLMError, ConnectionError):
    """The provider could not be reached (refused, reset, DNS, server not running)."""

    retryable = True


class LLMServerError(LLMError):
    """The provider answered with a server-side error (HTTP 5xx).

    Attributes:
        status_code: The HTTP status, when there was one.
        retry_after: Seconds the provider asked us to wait (a 503 or 529 may say), or None.
    """

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, provider=provider)
        self.status_code = status_code
        self.retry_after = retry_after


class LLMOverloadedError(LLMServerError):
    """The provider is temporarily overloaded (Anthropic's 529)."""


class LLMContextLengthError(LLMError):
    """The prompt plus the requested output do not fit in the model's context window."""


class LLMContentFilterError(LLMError):
    """The provider refused the request or filtered its output."""


class LLMBadResponseError(LLMError):
    """The provider's answer was malformed, empty where it must not be, or cut off."""

    retryable = True
