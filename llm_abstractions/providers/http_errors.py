"""From an HTTP failure to the error tree, for every provider that speaks HTTP.

Vendors agree on status codes more than on anything else, so one table maps them: 401 and
403 are authentication, 429 a rate limit (with ``Retry-After`` parsed), 529 overload, other
5xx server errors, 408 a timeout. A 400 is the caller's mistake (``InvalidRequestError``)
unless its message says the context window was exceeded or the content was refused, which
have classes of their own because the executor acts on them differently. Each provider
module calls ``error_from_status`` from its own mapping function, most specific first.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Mapping
from types import ModuleType

from llm_abstractions.errors import (
    InvalidRequestError,
    LLMAuthenticationError,
    LLMConnectionError,
    LLMContentFilterError,
    LLMContextLengthError,
    LLMOverloadedError,
    LLMRateLimitError,
    LLMServerError,
    LLMTimeoutError,
    ModelNotFoundError,
    OrchestraError,
)

__all__ = ["caused_by", "error_from_status", "retry_after", "sdk_transport_error"]

_CONTEXT = re.compile(
    r"context[ _-]?(length|window)|maximum context|too many tokens|prompt is too long"
    r"|input is too long|exceeds the (model's )?(maximum|limit)",
    re.IGNORECASE,
)
_REFUSED = re.compile(r"content[ _-]?(filter|policy|management)|safety|refus", re.IGNORECASE)


def retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds to wait, from ``retry-after-ms``, or ``Retry-After`` in seconds or as a date."""
    if not headers:
        return None
    lowered = {key.lower(): value for key, value in headers.items()}
    millis = lowered.get("retry-after-ms")
    if millis is not None:
        try:
            return max(float(millis) / 1000.0, 0.0)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(moment.timestamp() - (time.time() if now is None else now), 0.0)


def error_from_status(
    status: int,
    message: str,
    *,
    provider: str,
    headers: Mapping[str, str] | None = None,
    code: str | None = None,
) -> OrchestraError:
    """The error for an HTTP failure; ``code`` is the vendor's error code, when it gave one."""
    text = f"{provider}: HTTP {status}: {message}"
    hint = f"{code or ''} {message}"
    if status in (401, 403):
        return LLMAuthenticationError(
            f"{text} (check the API key: its environment variable or api_key=)", provider=provider
        )
    if status == 429:
        return LLMRateLimitError(text, provider=provider, retry_after=retry_after(headers))
    if status == 529:
        return LLMOverloadedError(
            text, provider=provider, status_code=status, retry_after=retry_after(headers)
        )
    if status == 408:
        return LLMTimeoutError(text, provider=provider)
    if status >= 500:
        return LLMServerError(
            text, provider=provider, status_code=status, retry_after=retry_after(headers)
        )
    if _CONTEXT.search(hint):
        return LLMContextLengthError(text, provider=provider)
    if _REFUSED.search(hint):
        return LLMContentFilterError(text, provider=provider)
    if status == 404:
        return ModelNotFoundError(f"{text} (is the model name right, and the model available?)")
    return InvalidRequestError(f"{text} (the request was refused as invalid)")


def caused_by(
    exc: BaseException, kind: type[BaseException], unless: tuple[type[BaseException], ...] = ()
) -> bool:
    """Whether ``exc`` or anything in its chain of causes is a ``kind`` (and not ``unless``)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, kind) and not isinstance(cause, unless):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def sdk_transport_error(
    exc: Exception, sdk: ModuleType, provider: str, base_url: str | None
) -> OrchestraError | None:
    """A timeout or connection error of the ``openai`` or ``anthropic`` SDK, mapped; else None.

    Both SDKs' aiohttp transports report a refused connection as a connect timeout: a
    timeout caused by a ``ConnectionError`` is a connection error.
    """
    if isinstance(exc, sdk.APITimeoutError) and not caused_by(exc, ConnectionError):
        return LLMTimeoutError(f"{provider}: timed out", provider=provider)
    if isinstance(exc, sdk.APIConnectionError):
        return LLMConnectionError(
            f"{provider}: cannot reach {base_url or 'the API'}: {exc}", provider=provider
        )
    return None
