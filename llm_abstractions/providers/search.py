"""Web search as a wrapper around any provider: ``SearchAugmentedLlm``.

The wrapper is composition, not a new provider: it holds an ``inner`` ``BaseLlm`` (any of
them) and a ``SearchBackend``, and reports the inner provider's name and model as its own.
For each request it decides whether the last user message needs current information (a
keyword heuristic, or ``metadata["search"]`` set to True or False to force it); if so it
asks the backend, puts the numbered results into the system prompt with an instruction to
cite them as ``[n]``, and calls the inner provider with that request.

Search is an aid, never a point of failure: when the backend fails or times out the
question is answered without search, and the response says so in
``metadata["search"] = {"used": False, "error": ...}``. A used search is reported as
``{"used": True, "query": ..., "sources": [{"title", "url"}, ...]}``.

Constrained output and tools pass through: ``output_schema``, ``grammar`` and ``tools``
reach the inner provider untouched (only the system prompt changes), and the wrapper reports
the inner provider's ``supports_output_schema``, ``supports_grammar`` and ``supports_tools``
as its own, set on the instance like its name, since the class cannot know what it will
wrap.

Two backends ship: ``DuckDuckGoSearch`` (the synchronous ``ddgs`` package, run in a worker
thread; no key needed) and ``GoogleSearch`` (the Custom Search JSON API over aiohttp).
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import anyio
import anyio.to_thread

from llm_abstractions.base import BaseLlm
from llm_abstractions.errors import (
    ConfigurationError,
    MissingCredentialsError,
    ProviderNotInstalledError,
)
from llm_abstractions.providers._loop_bound import LoopBound
from llm_abstractions.providers.http_errors import error_from_status
from llm_abstractions.types import LlmRequest, LlmResponse, StreamChunk

if TYPE_CHECKING:
    from ddgs import DDGS

__all__ = [
    "DuckDuckGoSearch",
    "GoogleSearch",
    "SearchAugmentedLlm",
    "SearchBackend",
    "SearchResult",
    "needs_search",
]

_CURRENT = re.compile(
    r"\b(latest|current(ly)?|today|tonight|news|prices?|202[56])\b|\bwho is\b|\bwhat happened\b",
    re.IGNORECASE,
)
GOOGLE_DEFAULT_URL = "https://www.googleapis.com"


@dataclass(frozen=True)
class SearchResult:
    """One web search hit."""

    title: str
    url: str
    snippet: str


class SearchBackend(Protocol):
    """A web search engine the wrapper can query."""

    async def search(self, query: str, max_results: int) -> list[SearchResult]:
        """Return at most ``max_results`` hits for ``query``; raise on failure."""
        ...

    async def aclose(self) -> None:
        """Release the backend's clients."""
        ...


def _last_user_message(request: LlmRequest) -> str:
    return next((m.content for m in reversed(request.messages) if m.role == "user"), "")


def needs_search(request: LlmRequest) -> bool:
    """The default decision: forced by ``metadata["search"]``, else the keyword heuristic."""
    forced = request.metadata.get("search")
    if isinstance(forced, bool):
        return forced
    return bool(_CURRENT.search(_last_user_message(request)))


def _system_with_sources(system: str | None, results: list[SearchResult]) -> str:
    lines = [
        "Web search results for the user's question follow. Use them for current facts and "
        "cite the sources you use as [n].",
    ]
    for n, hit in enumerate(results, start=1):
        lines.append(f"[{n}] {hit.title} ({hit.url})\n{hit.snippet}")
    block = "\n\n".join(lines)
    return f"{system}\n\n{block}" if system else block


class SearchAugmentedLlm(BaseLlm):
    """Answer with web search results added to the system prompt when they help.

    Args:
        inner: The provider that answers; closed by ``aclose``.
        backend: The search engine; closed by ``aclose``.
        max_results: How many hits to put in the prompt.
        decide: Whether a request needs search; ``needs_search`` when None.
        search_timeout: Seconds a search may take before the answer goes on without it.
    """

    def __init__(
        self,
        inner: BaseLlm,
        backend: SearchBackend,
        *,
        max_results: int = 5,
        decide: Callable[[LlmRequest], bool] | None = None,
        search_timeout: float = 15.0,
    ) -> None:
        super().__init__(inner.model)
        self.inner = inner
        self.backend = backend
        self.max_results = max_results
        self.decide = decide or needs_search
        self.search_timeout = search_timeout
        self.provider = inner.provider  # type: ignore[misc]  # the wrapper reports its inner's
        self.can_stream = inner.can_stream  # type: ignore[misc]
        self.is_local = inner.is_local  # type: ignore[misc]
        self.supports_output_schema = inner.supports_output_schema  # type: ignore[misc]
        self.supports_grammar = inner.supports_grammar  # type: ignore[misc]
        self.supports_tools = inner.supports_tools  # type: ignore[misc]

    async def _augment(self, request: LlmRequest) -> tuple[LlmRequest, dict[str, Any] | None]:
        """The request to send inner, and the search metadata (None when not searched)."""
        if not self.decide(request):
            return request, None
        query = _last_user_message(request)
        try:
            with anyio.fail_after(self.search_timeout):
                results = await self.backend.search(query, self.max_results)
        except TimeoutError as exc:
            reason = str(exc) or f"search timed out after {self.search_timeout}s"
            return request, {"used": False, "error": reason}
        except Exception as exc:  # noqa: BLE001 - any search failure means "answer without"
            return request, {"used": False, "error": str(exc) or type(exc).__name__}
        results = results[: self.max_results]
        augmented = request.model_copy(
            update={"system": _system_with_sources(request.system, results)}
        )
        sources = [{"title": hit.title, "url": hit.url} for hit in results]
        return augmented, {"used": True, "query": query, "sources": sources}

    @staticmethod
    def _tag(response: LlmResponse, search: dict[str, Any] | None) -> LlmResponse:
        if search is None:
            return response
        return response.model_copy(update={"metadata": {**response.metadata, "search": search}})

    async def generate(self, request: LlmRequest) -> LlmResponse:
        """Search if needed, then answer with the inner provider."""
        augmented, search = await self._augment(request)
        return self._tag(await self.inner.generate(augmented), search)

    async def stream(self, request: LlmRequest) -> AsyncIterator[StreamChunk]:
        """Search if needed, then stream the inner answer; the last chunk carries the search."""
        augmented, search = await self._augment(request)
        async for chunk in self.inner.stream(augmented):
            if chunk.done and chunk.response is not None:
                chunk = chunk.model_copy(update={"response": self._tag(chunk.response, search)})
            yield chunk

    async def aclose(self) -> None:
        """Close the backend, then the inner provider (even if the first close fails)."""
        try:
            await self.backend.aclose()
        finally:
            await self.inner.aclose()


class DuckDuckGoSearch:
    """DuckDuckGo through the ``ddgs`` package, in a worker thread; no key needed.

    ``ddgs`` reports every failure the same way: a blocked or failed page (DuckDuckGo
    answers bots with a 202 page) and an empty one both raise "No results found.", so the
    wrapper answers without search either way.

    Args:
        proxy: ``http://``, ``https://`` or ``socks5://`` proxy URL (``"tb"`` for Tor
            Browser's); ddgs reads ``DDGS_PROXY`` when None.
        verify: True to check TLS certificates, False not to, or the path of a PEM file
            of CA certificates to trust (a company proxy's, say).
        timeout: Seconds ddgs gives one search.
        backend: The ddgs engine(s): ``"duckduckgo"``, a comma-separated list, or
            ``"auto"`` for ddgs's own mix (Wikipedia and Grokipedia first, then other
            engines in random order).
        region: DuckDuckGo's region code (``"us-en"``, ``"uk-en"``, ``"de-de"``...).
    """

    def __init__(
        self,
        *,
        proxy: str | None = None,
        verify: bool | str = True,
        timeout: int = 5,
        backend: str = "duckduckgo",
        region: str = "us-en",
    ) -> None:
        self.proxy, self.verify, self.timeout = proxy, verify, timeout
        self.backend, self.region = backend, region

    async def search(self, query: str, max_results: int) -> list[SearchResult]:
        """Run the synchronous search in a thread and convert its hits."""
        ddgs_class = _ddgs_class()

        def run() -> list[dict[str, Any]]:
            client = ddgs_class(proxy=self.proxy, timeout=self.timeout, verify=self.verify)
            return client.text(
                query, max_results=max_results, backend=self.backend, region=self.region
            )

        # Abandoned on cancellation, so that the wrapper's search timeout holds for a
        # blocking client too (the thread finishes on its own; its answer is dropped).
        hits = await anyio.to_thread.run_sync(run, abandon_on_cancel=True)
        return [
            SearchResult(
                title=str(hit.get("title", "")),
                url=str(hit.get("href") or hit.get("url", "")),
                snippet=str(hit.get("body") or hit.get("snippet", "")),
            )
            for hit in hits[:max_results]
        ]

    async def aclose(self) -> None:
        """Nothing is held between searches."""


def _ddgs_class() -> type[DDGS]:
    try:
        from ddgs import DDGS
    except ImportError as exc:
        raise ProviderNotInstalledError("duckduckgo", "ddgs", "search") from exc
    return DDGS


class GoogleSearch:
    """Google's Custom Search JSON API (``GET /customsearch/v1``) over aiohttp.

    Args:
        api_key: ``GOOGLE_SEARCH_API_KEY`` or ``GOOGLE_API_KEY`` when None.
        engine_id: The search engine id (``cx``); ``GOOGLE_SEARCH_ENGINE_ID`` when None.
        base_url: ``ORCHESTRA_GOOGLE_SEARCH_URL`` or ``https://www.googleapis.com`` when None.
        timeout: Seconds one search may take.

    Raises:
        MissingCredentialsError: No API key was given or found.
        ConfigurationError: No engine id was given or found.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        engine_id: str | None = None,
        base_url: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        key = api_key or os.environ.get("GOOGLE_SEARCH_API_KEY") or os.environ.get("GOOGLE_API_KEY")
        if not key:
            raise MissingCredentialsError(
                "google-search", ("GOOGLE_SEARCH_API_KEY", "GOOGLE_API_KEY")
            )
        cx = engine_id or os.environ.get("GOOGLE_SEARCH_ENGINE_ID")
        if not cx:
            raise ConfigurationError(
                "Google search needs an engine id: set GOOGLE_SEARCH_ENGINE_ID or pass engine_id="
            )
        self._key, self._cx = key, cx
        url = base_url or os.environ.get("ORCHESTRA_GOOGLE_SEARCH_URL") or GOOGLE_DEFAULT_URL
        self.base_url = url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        # A session belongs to the loop it was made on; the backend may outlive that loop
        # (two ``asyncio.run`` calls), so each loop gets its own, closed when it shuts down.
        self._sessions = LoopBound(self._new_session, aiohttp.ClientSession.close)

    def _new_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(timeout=self._timeout)

    async def search(self, query: str, max_results: int) -> list[SearchResult]:
        """Query the API; HTTP errors raise the error tree's class for their status."""
        session = await self._sessions.get()
        params = {"cx": self._cx, "q": query, "num": str(min(max_results, 10))}
        # The key travels in a header: aiohttp quotes the full URL in some errors, and those
        # end up in response metadata, ledgers and logs.
        headers = {"X-Goog-Api-Key": self._key}
        url = f"{self.base_url}/customsearch/v1"
        async with session.get(url, params=params, headers=headers) as resp:
            if resp.status >= 400:
                message = (await resp.text())[:200]
                raise error_from_status(
                    resp.status, message, provider="google-search", headers=resp.headers
                )
            body = await resp.json(content_type=None)
        items = (body.get("items") or []) if isinstance(body, dict) else []
        return [
            SearchResult(
                title=str(item.get("title", "")),
                url=str(item.get("link", "")),
                snippet=str(item.get("snippet", "")),
            )
            for item in items[:max_results]
        ]

    async def aclose(self) -> None:
        """Close the aiohttp sessions opened (other loops close theirs soon)."""
        await self._sessions.aclose()
