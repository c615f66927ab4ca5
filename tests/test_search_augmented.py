"""SearchAugmentedLlm: deciding, injecting sources, and answering without search on failure."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from typing import Any

import pytest
from ddgs.exceptions import DDGSException

from llm_abstractions import LlmRequest
from llm_abstractions.errors import ConfigurationError, MissingCredentialsError
from llm_abstractions.providers.search import (
    DuckDuckGoSearch,
    GoogleSearch,
    SearchAugmentedLlm,
    SearchResult,
)
from llm_abstractions.testing import FunctionLlm
from tests.fakes.ddg_proxy import DDG_HOST, RATELIMIT_PAGE, DuckDuckGoProxy
from tests.fakes.search_api import search_app
from tests.fakes.server import LoopbackServer, Scripted, loopback_fixtures

pytestmark = pytest.mark.anyio


server, api = loopback_fixtures(search_app)


@pytest.fixture(scope="session")
def ddg_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DuckDuckGoProxy]:
    proxy = DuckDuckGoProxy(tmp_path_factory.mktemp("ddg-ca"))
    yield proxy
    proxy.close()


@pytest.fixture
def ddg(ddg_proxy: DuckDuckGoProxy, monkeypatch: pytest.MonkeyPatch) -> Iterator[DuckDuckGoProxy]:
    """The DuckDuckGo fake, reset around each test.

    ddgs's HTTP client opens its sockets in Rust, out of the network guard's reach: the
    proxy is always given explicitly, and no variable may replace it or exempt a host.
    """
    for var in ("NO_PROXY", "no_proxy", "DDGS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    ddg_proxy.reset()
    yield ddg_proxy
    ddg_proxy.reset()


def duckduckgo(ddg: DuckDuckGoProxy, **options: Any) -> DuckDuckGoSearch:
    return DuckDuckGoSearch(proxy=ddg.url, verify=ddg.ca_file, **options)


class StaticSearch:
    """A backend answering from a list (or raising), recording its queries."""

    def __init__(self, results: list[SearchResult] | Exception) -> None:
        self.results = results
        self.queries: list[tuple[str, int]] = []
        self.closed = False

    async def search(self, query: str, max_results: int) -> list[SearchResult]:
        self.queries.append((query, max_results))
        if isinstance(self.results, Exception):
            raise self.results
        return self.results

    async def aclose(self) -> None:
        self.closed = True


HITS = [
    SearchResult("Rust 1.90 released", "https://blog.rust-lang.org/1.90", "Rust 1.90 is out."),
    SearchResult("Rust changelog", "https://example.com/changelog", "All changes."),
]


def google(api: LoopbackServer, **options: Any) -> GoogleSearch:
    return GoogleSearch(api_key="gkey", engine_id="engine-1", base_url=api.url, **options)


async def test_a_question_about_the_latest_thing_searches_and_injects_the_sources() -> None:
    inner = FunctionLlm(lambda request: "Rust 1.90 [1].")
    backend = StaticSearch(HITS)
    llm = SearchAugmentedLlm(inner, backend, max_results=3)
    request = LlmRequest.build("What is the latest Rust release?", system="Be brief.")
    response = await llm.generate(request)
    assert response.text == "Rust 1.90 [1]."
    assert backend.queries == [("What is the latest Rust release?", 3)]
    system = inner.calls[0].system or ""
    assert system.startswith("Be brief.")
    assert "[1] Rust 1.90 released (https://blog.rust-lang.org/1.90)" in system
    assert "Rust 1.90 is out." in system and "[2] Rust changelog" in system
    assert "[n]" in system
    assert response.metadata["search"] == {
        "used": True,
        "query": "What is the latest Rust release?",
        "sources": [
            {"title": "Rust 1.90 released", "url": "https://blog.rust-lang.org/1.90"},
            {"title": "Rust changelog", "url": "https://example.com/changelog"},
        ],
    }
    assert (llm.provider, llm.model) == (inner.provider, inner.model)


async def test_a_plain_question_does_not_search() -> None:
    inner = FunctionLlm(lambda request: "4")
    backend = StaticSearch(HITS)
    response = await SearchAugmentedLlm(inner, backend).generate(
        LlmRequest.build("What is 2+2?", system="Be brief.")
    )
    assert backend.queries == []
    assert inner.calls[0].system == "Be brief."
    assert "search" not in response.metadata


@pytest.mark.parametrize(
    ("prompt", "forced", "searched"),
    [("What is 2+2?", True, True), ("Latest news today?", False, False)],
)
async def test_metadata_forces_the_decision_either_way(
    prompt: str, forced: bool, searched: bool
) -> None:
    inner = FunctionLlm(lambda request: "ok")
    backend = StaticSearch(HITS)
    llm = SearchAugmentedLlm(inner, backend)
    response = await llm.generate(LlmRequest.build(prompt, metadata={"search": forced}))
    assert bool(backend.queries) is searched
    assert ("search" in response.metadata) is searched


async def test_a_custom_decision_replaces_the_heuristic() -> None:
    backend = StaticSearch(HITS)
    llm = SearchAugmentedLlm(FunctionLlm(lambda r: "ok"), backend, decide=lambda r: True)
    await llm.generate(LlmRequest.build("What is 2+2?"))
    assert backend.queries == [("What is 2+2?", 5)]


async def test_a_failing_backend_still_answers_and_says_why() -> None:
    inner = FunctionLlm(lambda request: "From memory.")
    llm = SearchAugmentedLlm(inner, StaticSearch(RuntimeError("quota exhausted")))
    response = await llm.generate(LlmRequest.build("Who is the current UN secretary-general?"))
    assert response.text == "From memory."
    assert response.metadata["search"] == {"used": False, "error": "quota exhausted"}
    assert inner.calls[0].system is None


async def test_google_returns_results_and_sends_key_cx_and_query(api: LoopbackServer) -> None:
    backend = google(api)
    try:
        results = await backend.search("latest rust release", 2)
    finally:
        await backend.aclose()
    assert [r.url for r in results] == ["https://example.com/1", "https://example.com/2"]
    assert results[0] == SearchResult(
        "Result 1 for latest rust release", "https://example.com/1", "Snippet 1."
    )
    assert api.requests == [{"cx": "engine-1", "q": "latest rust release", "num": "2"}]
    assert api.headers[0]["X-Goog-Api-Key"] == "gkey"  # never in the URL


async def test_google_reads_its_settings_from_the_environment(
    api: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_API_KEY", "env-key")
    monkeypatch.setenv("GOOGLE_SEARCH_ENGINE_ID", "env-cx")
    monkeypatch.setenv("ORCHESTRA_GOOGLE_SEARCH_URL", api.url)
    backend = GoogleSearch()
    try:
        await backend.search("news", 1)
    finally:
        await backend.aclose()
    assert (api.headers[0]["X-Goog-Api-Key"], api.requests[0]["cx"]) == ("env-key", "env-cx")


async def test_google_without_key_or_engine_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(MissingCredentialsError, match="GOOGLE_SEARCH_API_KEY"):
        GoogleSearch(engine_id="cx")
    monkeypatch.setenv("GOOGLE_SEARCH_API_KEY", "k")
    with pytest.raises(ConfigurationError, match="GOOGLE_SEARCH_ENGINE_ID"):
        GoogleSearch()


async def test_a_google_server_error_answers_without_search(api: LoopbackServer) -> None:
    api.script(Scripted(status=500))
    inner = FunctionLlm(lambda request: "From memory.")
    async with SearchAugmentedLlm(inner, google(api)) as llm:
        response = await llm.generate(LlmRequest.build("What is the latest Python?"))
    assert response.text == "From memory."
    search = response.metadata["search"]
    assert search["used"] is False
    assert "HTTP 500" in search["error"] and "Backend Error" in search["error"]
    assert inner.calls[0].system is None
    assert inner.closed


@pytest.mark.parametrize("where", ["backend", "wrapper"])
async def test_a_search_timeout_answers_without_search(api: LoopbackServer, where: str) -> None:
    api.script(Scripted(delay=1.0))
    backend = google(api, timeout=0.2 if where == "backend" else 10.0)
    timeout = 0.2 if where == "wrapper" else 15.0
    inner = FunctionLlm(lambda request: "From memory.")
    async with SearchAugmentedLlm(inner, backend, search_timeout=timeout) as llm:
        response = await llm.generate(LlmRequest.build("Bitcoin price today?"))
    assert response.text == "From memory."
    assert response.metadata["search"]["used"] is False
    assert response.metadata["search"]["error"]


async def test_stream_puts_the_search_metadata_on_the_last_chunk(api: LoopbackServer) -> None:
    inner = FunctionLlm(lambda request: "Python 3.14 [1].")
    async with SearchAugmentedLlm(inner, google(api), max_results=1) as llm:
        chunks = [c async for c in llm.stream(LlmRequest.build("Latest Python version?"))]
    assert "".join(c.delta for c in chunks) == "Python 3.14 [1]."
    assert all(c.response is None for c in chunks[:-1])
    final = chunks[-1].response
    assert chunks[-1].done and final is not None
    assert final.metadata["search"]["used"] is True
    assert final.metadata["search"]["sources"] == [
        {"title": "Result 1 for Latest Python version?", "url": "https://example.com/1"}
    ]
    assert "[1] Result 1" in (inner.calls[0].system or "")


async def test_aclose_closes_the_backend_and_the_inner_provider() -> None:
    inner, backend = FunctionLlm(lambda r: "ok"), StaticSearch(HITS)
    await SearchAugmentedLlm(inner, backend).aclose()
    assert inner.closed and backend.closed


async def test_duckduckgo_runs_the_real_ddgs_through_the_proxy(ddg: DuckDuckGoProxy) -> None:
    results = await duckduckgo(ddg).search("latest rust release", 2)
    assert results == [
        SearchResult("Result 1 for latest rust release", "https://example.com/1", "Snippet 1."),
        SearchResult("Result 2 for latest rust release", "https://example.com/2", "Snippet 2."),
    ]  # and not the ad that heads the page
    assert ddg.tunnels == [f"{DDG_HOST}:443"]
    assert ddg.queries == [{"q": "latest rust release", "b": "", "l": "us-en"}]


async def test_duckduckgo_sends_the_region(ddg: DuckDuckGoProxy) -> None:
    await duckduckgo(ddg, region="de-de").search("aktuelle Nachrichten", 1)
    assert ddg.queries == [{"q": "aktuelle Nachrichten", "b": "", "l": "de-de"}]


async def test_duckduckgo_checks_the_certificate_against_verify(ddg: DuckDuckGoProxy) -> None:
    # Without the test CA the intercepting certificate is refused: verify= reaches ddgs.
    backend = DuckDuckGoSearch(proxy=ddg.url, timeout=5)
    with pytest.raises(DDGSException, match="certificate"):
        await backend.search("latest news", 1)
    assert ddg.tunnels == [f"{DDG_HOST}:443"]
    assert ddg.queries == []


async def test_auto_backend_lets_ddgs_try_other_engines_which_the_proxy_refuses(
    ddg: DuckDuckGoProxy,
) -> None:
    results = await duckduckgo(ddg, backend="auto").search("latest rust release", 1)
    assert [r.url for r in results] == ["https://example.com/1"]
    # ddgs asks Wikipedia first in "auto" mode; only DuckDuckGo got past the proxy.
    assert "en.wikipedia.org:443" in ddg.tunnels
    assert len(ddg.queries) == 1


async def test_search_augmented_with_duckduckgo_injects_the_sources(ddg: DuckDuckGoProxy) -> None:
    inner = FunctionLlm(lambda request: "ok [1]")
    async with SearchAugmentedLlm(inner, duckduckgo(ddg), max_results=2) as llm:
        response = await llm.generate(LlmRequest.build("What happened in the news today?"))
    assert ddg.queries[0]["q"] == "What happened in the news today?"
    assert response.metadata["search"] == {
        "used": True,
        "query": "What happened in the news today?",
        "sources": [
            {
                "title": "Result 1 for What happened in the news today?",
                "url": "https://example.com/1",
            },
            {
                "title": "Result 2 for What happened in the news today?",
                "url": "https://example.com/2",
            },
        ],
    }
    system = inner.calls[0].system or ""
    assert (
        "[2] Result 2 for What happened in the news today? (https://example.com/2)\nSnippet 2."
        in system
    )
    assert "ads.example" not in system


@pytest.mark.parametrize(
    "answer",
    [
        Scripted(status=202, body=RATELIMIT_PAGE),
        Scripted(status=500, body=b"<html>Internal Server Error</html>"),
        Scripted(body=b"<html><body>No results.</body></html>"),
    ],
    ids=["ratelimit-202", "server-error-500", "empty-page"],
)
async def test_a_duckduckgo_failure_answers_without_search(
    ddg: DuckDuckGoProxy, answer: Scripted
) -> None:
    ddg.script(answer)
    inner = FunctionLlm(lambda request: "From memory.")
    async with SearchAugmentedLlm(inner, duckduckgo(ddg)) as llm:
        response = await llm.generate(LlmRequest.build("What is the latest Python?"))
    assert [q["q"] for q in ddg.queries] == ["What is the latest Python?"]
    assert response.text == "From memory."
    # ddgs does not keep the status: a blocked, failed or empty page all read this way.
    assert response.metadata["search"] == {"used": False, "error": "No results found."}
    assert inner.calls[0].system is None


async def test_a_slow_duckduckgo_still_obeys_the_search_timeout(ddg: DuckDuckGoProxy) -> None:
    ddg.script(Scripted(delay=1.5))
    inner = FunctionLlm(lambda request: "ok")
    llm = SearchAugmentedLlm(inner, duckduckgo(ddg), search_timeout=0.2)
    response = await llm.generate(LlmRequest.build("What is the latest news?"))
    # Not waited for: the answer came without search, and says the search timed out.
    assert response.metadata["search"]["used"] is False
    assert "tim" in response.metadata["search"]["error"].lower()
    assert inner.calls[0].system is None


def test_one_google_backend_serves_two_event_loops(api: LoopbackServer) -> None:
    backend = google(api)
    first = asyncio.run(backend.search("first loop", 1))
    # The first session's loop is closed now; the backend makes another for this one.
    second = asyncio.run(backend.search("second loop", 1))
    asyncio.run(backend.aclose())
    gc.collect()  # a session or socket left open would warn here, and warnings are errors
    assert [r.title for r in first + second] == [
        "Result 1 for first loop",
        "Result 1 for second loop",
    ]
    assert [r["q"] for r in api.requests] == ["first loop", "second loop"]
