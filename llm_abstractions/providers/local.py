"""The embedded provider: a GGUF model run in-process by llama.cpp.

Loading and generation run on the process's llama.cpp thread (see ``llama_engine``), so the
event loop stays free and calls queue there without holding a worker thread each. The
loaded model is shared by every instance and every event loop that asks for the same file
and settings. Results go back to the caller's event loop through a memory object stream,
scheduled on that loop without waiting for it, so decoding never stalls on a busy or
finished loop. A cancelled caller stops its generation at the next token; so does a stream
that is closed (``aclose()``, ``contextlib.aclosing``). A stream left behind by a ``break``
is closed when the event loop finalizes it, which asyncio does promptly. At interpreter exit
(Ctrl-C included) every generation stops and the models are freed only after the llama
thread has ended (``llama_engine.shutdown``); nothing needs to be called for that.

Constrained output is enforced while decoding, by llama.cpp's grammar sampler:
``response_format="json"`` through its JSON grammar, ``output_schema`` through
llama-cpp-python's JSON-schema-to-GBNF converter, ``grammar`` as the GBNF given. A grammar
llama.cpp cannot parse is an ``InvalidRequestError`` before any token is generated. A
grammar that parses but reaches a point no token can continue (an empty character class,
say) aborts the process inside llama.cpp: test hand-written grammars before relying on them.

Settings: ``model=`` or ``ORCHESTRA_LOCAL_MODEL`` (a .gguf path; default the bundled
SmolLM2-135M-Instruct), ``n_ctx=`` or ``ORCHESTRA_LOCAL_N_CTX`` (default 4096),
``n_threads=`` or ``ORCHESTRA_LOCAL_THREADS`` (default: the cores the load average leaves
free when the process first asks, at least one).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from pathlib import Path
from time import monotonic, perf_counter
from typing import ClassVar, NamedTuple

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectSendStream

from llm_abstractions.base import BaseLlm
from llm_abstractions.errors import (
    ConfigurationError,
    InvalidRequestError,
    LLMBadResponseError,
    LLMError,
)
from llm_abstractions.providers.gguf import resolve_model_path
from llm_abstractions.providers.llama_engine import (
    LLAMA_THREAD,
    Generation,
    GenerationCancelled,
    default_threads,
    get_engine,
    stopping,
)
from llm_abstractions.providers.local_tools import parse_calls
from llm_abstractions.types import LlmRequest, LlmResponse, StreamChunk, Usage

__all__ = ["LocalLlm"]

DEFAULT_N_CTX = 4096


class _Piece(NamedTuple):
    """Text decoded since the last hand-off, and how many tokens it took."""

    text: str
    tokens: int


_Item = _Piece | Generation | BaseException


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
        ConfigurationError: A size or thread setting is not a positive integer.
    """

    provider: ClassVar[str] = "local"
    can_stream: ClassVar[bool] = True
    is_local: ClassVar[bool] = True
    supports_output_schema: ClassVar[bool] = True
    supports_grammar: ClassVar[bool] = True
    supports_tools: ClassVar[bool] = True

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        n_ctx: int | None = None,
        n_threads: int | None = None,
    ) -> None:
        self.path: Path = resolve_model_path(model)
        super().__init__(self.path.stem)
        self.n_ctx = _positive("n_ctx", n_ctx, "ORCHESTRA_LOCAL_N_CTX", DEFAULT_N_CTX)
        self.n_threads = _positive(
            "n_threads", n_threads, "ORCHESTRA_LOCAL_THREADS", default_threads()
        )

    async def generate(self, request: LlmRequest) -> LlmResponse:
        """Answer on the llama thread; a cancelled caller stops generation at the next token.

        Raises:
            InvalidRequestError: llama.cpp cannot parse the request's grammar, or cannot turn
                its output schema into one.
            LLMContextLengthError: The prompt leaves no room in the context window.
        """
        _refuse_grammar_with_tools(request)
        started = perf_counter()
        async with aclosing(self._run(request, stream=False)) as items:
            async for item in items:
                if isinstance(item, Generation):
                    return self._response(item, perf_counter() - started, request)
        raise LLMBadResponseError("local generation ended without a result", provider="local")

    async def stream(self, request: LlmRequest) -> AsyncIterator[StreamChunk]:
        """Yield text as it is decoded; the last chunk carries the full response and usage.

        Raises:
            InvalidRequestError: As ``generate``, before the first chunk.
            LLMContextLengthError: As ``generate``.
        """
        _refuse_grammar_with_tools(request)
        started = perf_counter()
        held: list[_Piece] = []  # with tools: an answer is shown, calls are not
        async with aclosing(self._run(request, stream=True)) as items:
            async for item in items:
                if isinstance(item, _Piece):
                    if _may_call(request) and (held or item.text.lstrip()[:1] in ("<", "{")):
                        held.append(item)  # a tool call, whole at the end
                    else:
                        yield StreamChunk(delta=item.text, tokens=item.tokens)
                elif isinstance(item, Generation):
                    response = self._response(item, perf_counter() - started, request)
                    if held and response.text:  # held back, but an answer after all
                        yield StreamChunk(delta=response.text, tokens=sum(p.tokens for p in held))
                    yield StreamChunk(done=True, response=response)

    async def _run(
        self, request: LlmRequest, *, stream: bool
    ) -> AsyncGenerator[_Piece | Generation, None]:
        """Queue one generation on the llama thread and relay what it produces.

        Yields text pieces (only when ``stream``) and then exactly one ``Generation``.
        """
        send, receive = anyio.create_memory_object_stream[_Item](math.inf)
        cancelled = threading.Event()
        handoff = _Handoff(send, anyio.lowlevel.current_token(), cancelled)

        def job() -> None:
            # Runs on the llama thread. It ends by delivering one Generation or exception,
            # unless the caller left first. The stream is closed on the event loop's side:
            # closing it from this thread would not wake a receiver already waiting.
            try:
                engine = get_engine(self.path, self.n_ctx, self.n_threads)
                handoff.finish(engine.run(request, handoff.text if stream else None, cancelled))
            except GenerationCancelled:
                if stopping():  # the process is exiting; a caller may still be waiting
                    handoff.finish(_shut_down())
            except Exception as exc:  # raised in the caller's task, below
                handoff.finish(exc)

        try:
            async with send, receive:
                try:
                    LLAMA_THREAD.submit(job)
                except RuntimeError as exc:  # stopped by shutdown()
                    raise _shut_down() from exc
                async for item in receive:
                    if isinstance(item, BaseException):
                        raise item
                    yield item
                    if isinstance(item, Generation):
                        return
        finally:
            cancelled.set()

    def _response(self, result: Generation, latency: float, request: LlmRequest) -> LlmResponse:
        names = {tool.name for tool in request.tools}
        text, calls = parse_calls(result.text, names) if _may_call(request) else (result.text, ())
        return LlmResponse(
            text=text,
            provider=self.provider,
            model=self.model,
            tool_calls=calls,
            finish_reason="tool_calls" if calls else result.finish_reason,
            usage=Usage(input_tokens=result.prompt_tokens, output_tokens=result.completion_tokens),
            latency_s=latency,
            metadata={"model_path": str(self.path), "n_ctx": self.n_ctx},
        )


class _Handoff:
    """Carries one generation's output from the llama thread to the caller's event loop.

    Items are scheduled on the caller's loop without waiting for it (waiting stalled
    decoding: streaming ran at 0.88 of bare llama.cpp), and text is batched because every
    hand-off wakes the loop, which on a small machine steals cycles from decoding. Pieces
    are flushed at most every ``FLUSH_INTERVAL`` seconds, and always before the final
    result; the first piece goes at once, so the time to first token is unchanged.
    """

    FLUSH_INTERVAL = 0.05

    def __init__(
        self,
        send: MemoryObjectSendStream[_Item],
        token: anyio.lowlevel.EventLoopToken,
        cancelled: threading.Event,
    ) -> None:
        self._send = send
        self._token = token
        self._cancelled = cancelled
        self._pending: list[str] = []
        self._tokens = 0
        self._last_flush = -math.inf

    def text(self, piece: str, tokens: int) -> None:
        """Queue a piece of text and the tokens it took (llama thread)."""
        self._pending.append(piece)
        self._tokens += tokens
        now = monotonic()
        if now - self._last_flush >= self.FLUSH_INTERVAL:
            self._flush(now)

    def finish(self, item: Generation | BaseException) -> None:
        """Send what is pending, then the result or the error (llama thread)."""
        self._flush(monotonic())
        self._submit(item)

    def _flush(self, now: float) -> None:
        if self._pending:
            piece = _Piece("".join(self._pending), self._tokens)
            self._pending.clear()
            self._tokens = 0
            self._last_flush = now
            self._submit(piece)

    def _submit(self, item: _Item) -> None:
        if self._cancelled.is_set():
            return
        # anyio.from_thread.run_sync would block until the loop ran it; this does not.
        try:
            self._token.backend_class.run_sync_soon(
                self._receive, (item,), self._token.native_token
            )
        except (anyio.RunFinishedError, RuntimeError):
            self._cancelled.set()  # the caller's event loop is gone: stop generating

    def _receive(self, item: _Item) -> None:  # on the caller's event loop
        try:
            self._send.send_nowait(item)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._cancelled.set()  # the caller left: stop generating


def _shut_down() -> LLMError:
    return LLMError(
        "local: the embedded model was shut down (the process is exiting)", provider="local"
    )


def _positive(name: str, given: int | None, env: str, default: int) -> int:
    """The argument, else the environment variable, else the default; positive or an error."""
    if given is not None:
        raw: object = given
        source = f"{name}="
    else:
        raw = os.environ.get(env) or default
        source = env
    try:
        value = int(str(raw))
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigurationError(f"{source} must be a positive integer, not {raw!r}.")
    return value


def _may_call(request: LlmRequest) -> bool:
    """Whether the answer may be tool calls (decoded under ``local_tools.tool_grammar``)."""
    return bool(request.tools) and request.tool_choice != "none"


def _refuse_grammar_with_tools(request: LlmRequest) -> None:
    """A request may constrain its answer with a grammar, or offer tools: not both.

    Raises:
        InvalidRequestError: It does both.
    """
    if request.tools and (request.grammar is not None or request.response_format == "json"):
        raise InvalidRequestError(
            "local: tools and a grammar (or JSON mode) cannot go together: tool calls are "
            "decoded under a grammar of their own; describe the answer with output_schema"
        )
