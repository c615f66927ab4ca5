"""Dedicated threads, and waiting for their work from async code without borrowing a thread.

``SerialWorker`` runs jobs one at a time on a thread of its own (the llama.cpp thread, the
ledger writer). ``LoopCompletion`` lets such a thread hand a result back to the event loop
that is waiting for it: the loop waits on an ``anyio.Event``, and the thread sets it with
``run_sync_soon``, which schedules without blocking. (``anyio.from_thread.run_sync`` blocks
the calling thread until the loop has run the call, and ``anyio.to_thread.run_sync`` would
hold one of anyio's worker threads for the whole wait.)
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel
from anyio.lowlevel import EventLoopToken

__all__ = ["LoopCompletion", "SerialWorker", "loop_token"]

T = TypeVar("T")
_log = logging.getLogger(__name__)
_tokens: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, EventLoopToken] = (
    weakref.WeakKeyDictionary()
)


def loop_token() -> EventLoopToken:
    """``anyio.lowlevel.current_token()``, kept per asyncio loop.

    Building it costs about 1.5 us (finding the async library, then the loop), several
    times a task on the executor's path; looking up the running loop costs a sixth of that.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio (trio): anyio knows
        return anyio.lowlevel.current_token()
    token = _tokens.get(loop)
    if token is None:
        token = anyio.lowlevel.current_token()
        if token.native_token is loop:
            _tokens[loop] = token
    return token


class SerialWorker:
    """A daemon thread that runs submitted jobs one at a time, in order.

    A job reports its own result; an exception escaping one is a bug and must not kill the
    thread that every later job depends on. ``stop`` ends the thread after the job it is
    running, and the worker takes no job after that.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stopped = False

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job``; the thread starts on first use.

        Raises:
            RuntimeError: The worker was stopped.
        """
        with self._start_lock:
            if self._stopped:
                raise RuntimeError(f"{self.name} was stopped (the process is shutting down)")
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
                self._thread.start()
            self._jobs.put(job)

    def stop(self, timeout: float) -> bool:
        """Take no more jobs, and wait up to ``timeout`` seconds for the thread to end.

        The job running now is not interrupted, and jobs already queued still run: tell
        them to stop first. Returns whether the thread has ended (True if it never started).
        """
        with self._start_lock:
            self._stopped = True
            thread = self._thread
            if thread is None:
                return True
            self._jobs.put(None)
        if thread is threading.current_thread():
            return False  # a job cannot wait for itself
        thread.join(timeout)
        return not thread.is_alive()

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception:  # the job owns error reporting; this is a bug, keep serving
                _log.exception("job on %s raised", self.name)


class LoopCompletion(Generic[T]):
    """A result that another thread delivers to the event loop that created this object.

    Create it in async code, hand it to a thread, ``await wait()`` (or give it callbacks,
    which run on the loop when it is done). The thread calls ``set_result`` or
    ``set_exception`` once; if the loop is gone by then, the result is dropped. The loop's
    own thread may deliver it too (from a callback): then it completes at once.
    """

    def __init__(self) -> None:
        self._token = loop_token()
        self._loop_thread = threading.get_ident()
        self._done = False
        self._event: anyio.Event | None = None  # made for the first waiter: most have none
        self._result: T | None = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[LoopCompletion[T]], None]] = []

    def set_result(self, value: T) -> None:
        """Deliver a value (from any thread)."""
        self._result = value
        self._wake()

    def set_exception(self, error: BaseException) -> None:
        """Deliver an exception, raised by ``wait`` (from any thread)."""
        self._error = error
        self._wake()

    async def wait(self) -> T:
        """Wait for the result; raise the delivered exception, if any."""
        await self.settled()
        return self.result()

    async def settled(self) -> None:
        """Wait until it is done, whichever way (its callbacks have run by then)."""
        if self._done:
            await anyio.lowlevel.checkpoint()
            return
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()

    def done(self) -> bool:
        """Whether it is done (on the loop: its callbacks have run)."""
        return self._done

    def failed(self) -> BaseException | None:
        """The exception delivered, if any (None while it is not done)."""
        return self._error

    def result(self) -> T:
        """The result of a completion that is done; raise its exception, if any."""
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]

    def add_done_callback(self, callback: Callable[[LoopCompletion[T]], None]) -> None:
        """Call ``callback(self)`` on the loop once it is done (at once if it is)."""
        if self._done:
            callback(self)
        else:
            self._callbacks.append(callback)

    def _complete(self) -> None:
        self._done = True
        if self._event is not None:
            self._event.set()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)

    def _wake(self) -> None:
        if threading.get_ident() == self._loop_thread:  # delivered by the loop itself
            self._complete()
            return
        try:
            self._token.backend_class.run_sync_soon(self._complete, (), self._token.native_token)
        except (anyio.RunFinishedError, RuntimeError):
            pass  # the waiting loop is gone: nobody to tell
