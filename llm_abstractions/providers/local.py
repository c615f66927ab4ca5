"""The embedded provider: a GGUF model run in-process by llama.cpp.

Generation runs in a worker thread so the event loop stays free. Calls to one model are
serialized twice over: per event loop by an ``anyio`` semaphore (so queued calls wait
without holding a worker thread) and per process by the engine's lock (a llama.cpp context
is not thread-safe, and the model is shared by every instance and every loop).

Settings: ``model=`` or ``ORCHESTRA_LOCAL_MODEL`` (a .gguf path; default the bundled
SmolLM2-135M-Instruct), ``n_ctx=`` or ``ORCHESTRA_LOCAL_N_CTX`` (default 4096),
``n_threads=`` or ``ORCHESTRA_LOCAL_THREADS`` (default: every core).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from time import perf_counter
from typing import ClassVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from anyio.lowlevel import RunVar

from llm_abstractions.base import BaseLlm
from llm_abstractions.errors import ConfigurationError
from llm_abstractions.providers.gguf import resolve_model_path
from llm_abstractions.providers.llama_engine import (
    Generation,
    GenerationCancelled,
    LlamaEngine,
    default_threads,
    get_engine,
)
from llm_abstractions.types import LlmRequest, LlmResponse, StreamChunk, Usage

__all__ = ["LocalLlm"]

DEFAULT_N_CTX = 4096

# One turnstile per (event loop, engine); a RunVar is scoped to the running event loop. A
# semaphore rather than a lock or limiter: a stream abandoned by its consumer is closed by the
# loop's async-generator finalizer, in another task, and must still be able to release it.
_turnstiles: RunVar[dict[int, anyio.Semaphore]] = RunVar("orchestra_local_turnstiles")


class LocalLlm(BaseLlm):
    """An embedded llama.cpp model; needs no key, no server and no network.

    Args:
        model: Path to a .gguf file; ``ORCHESTRA_LOCAL_MODEL`` or the bundled SmolLM2 when
            None.
        n_ctx: Context window in tokens.
        n_threads: CPU threads for generation.

    Raises:
        ModelFileError: The model file is missing or is not GGUF (checked here, before
            llama.cpp sees it).
    """

    provider: ClassVar[str] = "local"
    can_stream: ClassVar[bool] = True
    is_local: ClassVar[bool] = True

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        n_ctx: int | None = None,
        n_threads: int | None = None,
    ) -> None:
        self.path: Path = resolve_model_path(model)
        super().__init__(self.path.stem)
        self.n_ctx = n_ctx or _int_env("ORCHESTRA_LOCAL_N_CTX", DEFAULT_N_CTX)
        self.n_threads = n_threads or _int_env("ORCHESTRA_LOCAL_THREADS", default_threads())

    async def generate(self, request: LlmRequest) -> LlmResponse:
        """Answer in a worker thread; a cancelled caller stops generation at the next token."""
        engine = await self._engine()
        cancelled = threading.Event()
        started = perf_counter()
        try:
            async with self._turnstile(engine):
                result = await anyio.to_thread.run_sync(
                    engine.run, request, None, cancelled, abandon_on_cancel=True
                )
        finally:
            cancelled.set()
        return self._response(result, perf_counter() - started)

    async def stream(self, request: LlmRequest) -> AsyncIterator[StreamChunk]:
        """Yield text as it is decoded; the last chunk carries the full response and usage."""
        engine = await self._engine()
        cancelled = threading.Event()
        started = perf_counter()
        send, receive = anyio.create_memory_object_stream[str | Generation | BaseException](
            math.inf
        )
        token = anyio.lowlevel.current_token()

        def deliver(item: str | Generation | BaseException) -> None:
            try:
                anyio.from_thread.run_sync(send.send_nowait, item, token=token)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, RuntimeError):
                cancelled.set()  # the consumer or its event loop is gone: stop generating

        def produce() -> None:
            # Ends with exactly one Generation or exception unless the consumer left first.
            # The stream is closed on the event loop's side: closing it from this thread
            # would not wake a receiver that is already waiting.
            try:
                deliver(engine.run(request, deliver, cancelled))
            except GenerationCancelled:
                pass
            except Exception as exc:  # handed to the consumer, raised there
                deliver(exc)

        try:
            async with self._turnstile(engine), send, receive:
                threading.Thread(target=produce, name="orchestra-local", daemon=True).start()
                async for item in receive:
                    if isinstance(item, str):
                        yield StreamChunk(delta=item)
                        continue
                    if isinstance(item, BaseException):
                        raise item
                    response = self._response(item, perf_counter() - started)
                    yield StreamChunk(done=True, response=response)
                    return
        finally:
            cancelled.set()

    async def _engine(self) -> LlamaEngine:
        # Loading takes a while (and allocates the context): keep it off the event loop.
        return await anyio.to_thread.run_sync(get_engine, self.path, self.n_ctx, self.n_threads)

    @staticmethod
    def _turnstile(engine: LlamaEngine) -> anyio.Semaphore:
        try:
            turnstiles = _turnstiles.get()
        except LookupError:
            turnstiles = {}
            _turnstiles.set(turnstiles)
        if id(engine) not in turnstiles:
            turnstiles[id(engine)] = anyio.Semaphore(1)
        return turnstiles[id(engine)]

    def _response(self, result: Generation, latency: float) -> LlmResponse:
        return LlmResponse(
            text=result.text,
            provider=self.provider,
            model=self.model,
            finish_reason=result.finish_reason,
            usage=Usage(input_tokens=result.prompt_tokens, output_tokens=result.completion_tokens),
            latency_s=latency,
            metadata={"model_path": str(self.path), "n_ctx": self.n_ctx},
        )


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigurationError(f"{name} must be a positive integer, not {raw!r}.")
    return value
