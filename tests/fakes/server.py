"""An aiohttp application served on a loopback port from a thread of its own.

Each fake vendor API is an ``aiohttp.web.Application``; ``LoopbackServer`` runs it on
127.0.0.1 in a background event loop, so tests on any loop (or none) can call it. A test
scripts what the next requests get with ``server.script(...)``; unscripted requests get the
fake's default answer. Every request body is kept in ``server.requests``.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web


@dataclass
class Scripted:
    """What one request gets, instead of the default answer.

    Attributes:
        status: HTTP status for an error answer (None: a normal answer).
        body: The error's JSON body, or raw bytes for a malformed answer.
        headers: Extra response headers (``Retry-After``...).
        text: The normal answer's text.
        usage: Usage numbers for the normal answer, in the vendor's own fields.
        finish: The vendor's finish reason.
        cut: For a stream: stop after this many events, without the final ones.
        delay: Seconds to wait before answering.
        hold: For a stream: after its first word, wait until this is set (30 s at most), so
            a test can see what a client shows of an answer still being generated.
        tool_calls: Tools the answer asks for, as (name, arguments) pairs: arguments as a
            dict (sent as the vendor sends them), or a string sent as it is (malformed JSON).
            The answer's text, if any, comes before them.
    """

    status: int | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    text: str = "Hello from the loopback server."
    usage: dict[str, Any] | None = None
    finish: str | None = None
    cut: int | None = None
    delay: float = 0.0
    hold: threading.Event | None = None
    tool_calls: list[tuple[str, dict[str, Any] | str]] | None = None


class LoopbackServer:
    """Serve ``make_app(self)`` on a free loopback port until ``close``."""

    def __init__(self, make_app: Callable[[LoopbackServer], web.Application]) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._script: deque[Scripted] = deque()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._app = make_app(self)
        self._thread = threading.Thread(target=self._serve, name="loopback", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        self.url = f"http://127.0.0.1:{self.port}"

    def script(self, *answers: Scripted) -> None:
        """Queue what the next requests get, in order."""
        self._script.extend(answers)

    def reset(self) -> None:
        """Forget scripted answers and recorded requests."""
        self._script.clear()
        self.requests.clear()
        self.headers.clear()

    def next_answer(self, body: dict[str, Any], headers: dict[str, str]) -> Scripted:
        """Record a request and say what it gets."""
        self.requests.append(body)
        self.headers.append(headers)
        return self._script.popleft() if self._script else Scripted()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        runner = web.AppRunner(self._app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._runner = runner
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    def close(self) -> None:
        """Stop serving."""
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


async def answer_error(scripted: Scripted) -> web.Response:
    """An error answer: JSON body, or raw bytes when the body is bytes."""
    assert scripted.status is not None
    if isinstance(scripted.body, bytes):
        return web.Response(status=scripted.status, body=scripted.body, headers=scripted.headers)
    return web.json_response(scripted.body or {}, status=scripted.status, headers=scripted.headers)


def loopback_fixtures(make_app: Callable[[LoopbackServer], web.Application]) -> tuple[Any, Any]:
    """The ``server`` fixture (one per session) and ``api`` (reset around each test) for an app.

    A test module binds them by name: ``server, api = loopback_fixtures(openai_app)``.
    """

    @pytest.fixture(scope="session", name="server")
    def server() -> Iterator[LoopbackServer]:
        loopback = LoopbackServer(make_app)
        yield loopback
        loopback.close()

    @pytest.fixture(name="api")
    def api(server: LoopbackServer) -> Iterator[LoopbackServer]:
        server.reset()
        yield server
        server.reset()

    return server, api
