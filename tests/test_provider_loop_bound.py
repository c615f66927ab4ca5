"""LoopBound: one client per event loop, closed by its own loop before that loop shuts down."""

from __future__ import annotations

import asyncio
import gc
import threading

from llm_abstractions.providers._loop_bound import LoopBound


class Client:
    """Records the loop it was made on and the loop that closed it."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.closed_on: asyncio.AbstractEventLoop | None = None

    async def close(self) -> None:
        assert self.closed_on is None, "closed twice"
        self.closed_on = asyncio.get_running_loop()


def test_each_loop_gets_its_own_client_closed_by_that_loop() -> None:
    bound = LoopBound(Client, Client.close)

    async def use() -> Client:
        client = await bound.get()
        assert await bound.get() is client  # one per loop, reused
        return client

    first, second = asyncio.run(use()), asyncio.run(use())
    assert first is not second
    assert first.closed_on is first.loop and second.closed_on is second.loop


def test_aclose_closes_the_running_loops_client_at_once() -> None:
    bound = LoopBound(Client, Client.close)

    async def use_then_close() -> tuple[Client, Client]:
        client = await bound.get()
        await bound.aclose()
        assert client.closed_on is asyncio.get_running_loop()
        return client, await bound.get()  # a closed LoopBound opens anew when asked

    closed, fresh = asyncio.run(use_then_close())
    assert fresh is not closed and fresh.closed_on is fresh.loop  # the new one, at loop end


def test_a_client_built_up_front_goes_to_the_first_loop() -> None:
    made: list[str] = []

    def make() -> str:
        made.append("made")
        return f"client {len(made)}"

    async def noop(client: str) -> None:
        pass

    bound = LoopBound(make, noop, first=make())
    assert asyncio.run(bound.get()) == "client 1"
    assert asyncio.run(bound.get()) == "client 2"
    assert made == ["made", "made"]


def test_a_loop_closed_by_hand_is_forgotten_never_awaited() -> None:
    bound = LoopBound(Client, Client.close)
    loop = asyncio.new_event_loop()
    stranded = loop.run_until_complete(bound.get())
    loop.close()  # no shutdown_asyncgens: the client cannot be closed on it any more
    fresh = asyncio.run(bound.get())
    gc.collect()  # the forgotten closer is freed without touching its closed loop
    assert fresh is not stranded and stranded.closed_on is None


def test_a_loop_in_another_thread_keeps_its_client_and_closes_it_on_aclose() -> None:
    bound = LoopBound(Client, Client.close)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        theirs = asyncio.run_coroutine_threadsafe(bound.get(), loop).result(5)

        async def here() -> Client:
            mine = await bound.get()
            assert mine is not theirs and theirs.closed_on is None  # still in use there
            await bound.aclose()
            return mine

        mine = asyncio.run(here())
        # The other loop was asked to close its own; wait for it there.
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(5)
        assert mine.closed_on is mine.loop and theirs.closed_on is loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
