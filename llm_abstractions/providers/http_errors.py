"""From an HTTP failure to the error tree, for every provider that speaks HTTP.

Vendors agree on status codes more than on anything else, so one table maps them: 401 and
403 are authentication, 429 a rate limit (with ``Retry-After`` parsed), 529 overload, other
5xx server errors, 408 a timeout. A 400 is the caller's mistake (``InvalidRequestError``)
unless its message says the context window was exceeded or the content was refused, which
have classes of their own because the executor acts on them differently. Each provider
module calls ``error_from_status`` from its own mapping function, most specific first.

Transport failures are named from their root cause, not from the wrapper the transport put
around it (``connection_error``): the ``openai`` SDK reports a refused connection as a
connect timeout, "Request timed out.", which sends people looking for a slow server when
none is running. A refused connection is an ``LLMConnectionError`` that says so, names the
URL and what to check; it stays retryable, as the server may be starting.
"""

from __future__ import annotations

import email.utils
import re
import socket
import ssl
import time
from collections.abc import Iterator, Mapping
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

__all__ = [
    "caused_by",
    "connection_error",
    "error_from_status",
    "retry_after",
    "sdk_transport_error",
]

_CONTEXT = re.compile(
    r"context[ _-]?(length|window)|maximum context|too many tokens|prompt is too long"
    r"|input is too long|exceeds the (model's )?(maximum|limit)",
    re.IGNORECASE,
)
_REFUSED = re.compile(r"content[ _-]?(filter|policy|management)|safety|refus", re.IGNORECASE)
# The transports' "could not connect" classes (aiohttp's ClientConnectorError, httpx's and
# httpcore's ConnectError and ConnectTimeout, also as vendored by the SDKs), by name: which
# of them is installed differs between SDK releases.
_CONNECT_PHASE = re.compile(r"Connect(or)?(Error|Timeout)$")


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


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what caused it, and so on (each once)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        yield cause
        cause = cause.__cause__ or cause.__context__


def caused_by(
    exc: BaseException, kind: type[BaseException], unless: tuple[type[BaseException], ...] = ()
) -> bool:
    """Whether ``exc`` or anything in its chain of causes is a ``kind`` (and not ``unless``)."""
    return any(isinstance(c, kind) and not isinstance(c, unless) for c in _chain(exc))


def connection_error(
    exc: BaseException, *, provider: str, url: str, remedy: str
) -> LLMConnectionError:
    """The error for a connection that could not be made or was lost, named by its root cause.

    Args:
        exc: The transport's exception.
        provider: The provider's name.
        url: Where the provider tried to connect.
        remedy: What to check when no connection could be made ("Is the server running?
            Check OPENAI_BASE_URL ...").
    """
    causes = list(_chain(exc))
    what = _problem(causes)
    if any(_CONNECT_PHASE.search(type(c).__name__) for c in causes) or what in _NEVER_CONNECTED:
        message = f"{provider}: could not connect to {url}: {what}. {remedy}"
    else:
        message = f"{provider}: the connection to {url} failed: {what}"
    return LLMConnectionError(message, provider=provider)


_NEVER_CONNECTED = ("connection refused", "unknown host")


def _problem(causes: list[BaseException]) -> str:
    """What went wrong, in a few words, from the most telling exception of the chain."""
    for cause in causes:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "unknown host"
        if isinstance(cause, ConnectionResetError):
            return "connection reset by the server"
        if isinstance(cause, ssl.SSLError):
            return f"TLS failed ({cause.reason or cause})"
    for cause in reversed(causes):  # the deepest system error: "No route to host"...
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
    return f"{type(causes[0]).__name__}: {causes[0]}"


def sdk_transport_error(
    exc: Exception, sdk: ModuleType, provider: str, base_url: str | None, env: str
) -> OrchestraError | None:
    """A timeout or connection error of the ``openai`` or ``anthropic`` SDK, mapped; else None.

    Both SDKs' aiohttp transports may report a refused connection as a connect timeout
    (``APITimeoutError`` is an ``APIConnectionError``): a timeout caused by a
    ``ConnectionError`` is a connection error. ``env`` is the variable that sets the URL.
    """
    if isinstance(exc, sdk.APITimeoutError) and not caused_by(exc, ConnectionError):
        return LLMTimeoutError(f"{provider}: timed out", provider=provider)
    if isinstance(exc, sdk.APIConnectionError):
        request = getattr(exc, "request", None)  # the SDK's default URL when none was set
        url = base_url or str(getattr(request, "url", None) or "the API")
        remedy = f"Is the server running, and the address right? Check {env} or base_url=."
        return connection_error(exc, provider=provider, url=url, remedy=remedy)
    return None
