"""One HTTP client per event loop, closed when that loop shuts down.

An aiohttp session or an httpx client belongs to the event loop it was first used on: its
pooled connections are that loop's transports, and using them from another loop fails
("Event loop is closed", "attached to a different loop"). A provider built once and called
from two ``asyncio.run(...)`` (two CLI commands, two tests, a thread with a loop of its own)
therefore keeps its client in a ``LoopBound``: one client per running loop, made there on
first use.

Closing follows the loop. On first use in a loop, ``LoopBound`` starts a small async
generator there that closes the client when it is closed itself, and keeps it alive.
``asyncio.run``, ``asyncio.Runner`` and anyio close every live async generator of a loop
(``loop.shutdown_asyncgens()``) before closing the loop, so the client is closed while its
loop can still run the close: no "Unclosed client session", no unclosed socket. A client
whose loop has closed is only forgotten, never awaited on that loop. A loop closed by hand
without ``shutdown_asyncgens`` leaves its client to the garbage collector, with the
warnings its library gives for any client nobody closed.

``aclose`` closes the running loop's client at once and asks the other running loops to
close theirs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["LoopBound"]

T = TypeVar("T")


class _Bound(Generic[T]):
    """A client, and the async generator that closes it with its loop."""

    def __init__(self, client: T, close: Callable[[T], Awaitable[object]]) -> None:
        self.client = client
        # Shared with the closer, which must hold no reference back to this object: a
        # cycle would leave a forgotten closer to the cycle collector instead of freeing it.
        self._ended: list[bool] = []
        self.closer = _close_with_loop(client, close, self._ended)

    @property
    def closed(self) -> bool:
        """Whether the closer has run (the loop shut down, or ``aclose``)."""
        return bool(self._ended)

    async def close(self) -> None:
        await self.closer.aclose()


async def _close_with_loop(
    client: T, close: Callable[[T], Awaitable[object]], ended: list[bool]
) -> AsyncGenerator[None]:
    try:
        yield
    finally:
        ended.append(True)
        await close(client)


class LoopBound(Generic[T]):
    """A client per running event loop (see the module docstring).

    Args:
        make: Builds a client; called inside the loop that will use it.
        close: Closes a client; awaited in that client's loop.
        first: A client built already (to fail at construction, not at first use); the
            first loop to ask takes it.
    """

    def __init__(
        self,
        make: Callable[[], T],
        close: Callable[[T], Awaitable[object]],
        *,
        first: T | None = None,
    ) -> None:
        self._make, self._close, self._first = make, close, first
        self._bound: dict[asyncio.AbstractEventLoop, _Bound[T]] = {}
        self._lock = threading.Lock()  # loops in other threads share the table

    async def get(self) -> T:
        """The running loop's client, made (and tied to the loop's end) on first use."""
        loop = asyncio.get_running_loop()
        with self._lock:
            for gone in [old for old in self._bound if old.is_closed()]:
                del self._bound[gone]  # closed with its loop, or past closing: forget it
            bound = self._bound.get(loop)
            if bound is not None and not bound.closed:
                return bound.client
            first, self._first = self._first, None
            bound = _Bound(self._make() if first is None else first, self._close)
            self._bound[loop] = bound
        # Runs to the generator's ``yield`` without suspending; the loop now tracks it.
        await anext(bound.closer)
        return bound.client

    async def aclose(self) -> None:
        """Close the running loop's client now; other running loops close theirs soon."""
        with self._lock:
            bound, self._bound, self._first = self._bound, {}, None
        here = asyncio.get_running_loop()
        for loop, each in bound.items():
            if loop is here:
                await each.close()
            elif loop.is_running():
                asyncio.run_coroutine_threadsafe(each.close(), loop)
            # An idle loop closes it when it runs again, or with its async generators.
