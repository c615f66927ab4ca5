"""The thread side of the embedded provider: the llama.cpp thread, engines, the decode loop.

Every llama.cpp call in the process runs on one dedicated thread (``LLAMA_THREAD``).
That serializes access to contexts, which are not thread-safe, and it is also much faster:
llama.cpp's CPU backend runs on OpenMP, which keeps a thread team per calling thread, and
once two threads have called into it the second runs at a fraction of the speed (measured
here: 80 tokens/s from one thread, 16-35 from the next; see docs/PROJECT-PLAN.md). Engines
are shared per (path, context size, threads) through ``get_engine``: loading the same GGUF
twice would double the memory and the start-up time for nothing.

The decode loop is ours rather than ``Llama.create_chat_completion`` for three reasons:
usage must be exact in streaming too (llama-cpp-python reports it only without streaming),
streamed and non-streamed answers must be the same text by construction, and a cancelled
caller must be able to stop generation between two tokens. The prompt is evaluated here
too, in chunks of ``PROMPT_CHUNK`` tokens, so that a long one can be stopped between chunks.

Repeatable requests (``temperature=0``, or a ``seed``) give the same text every time in a
process, whatever ran before. Reusing the part of the KV cache that matches the prompt
(llama-cpp-python's way) broke that: the rest of the prompt was evaluated in other batch
shapes than a start from empty would use, the floating-point sums came out differently, and
the same greedy request gave another text the second time. So the prompt is evaluated in
chunks on a fixed grid (``PROMPT_CHUNK`` tokens from position 0), and a repeatable request
keeps only whole grid chunks that were evaluated as such: exactly what an empty context
would compute. Other requests keep any matching prefix. Measured (SmolLM2, one thread on a
busy machine, 16 tokens generated, medians of 5, two series): a 1,537-token prompt asked
again takes 0.32-0.33 s this way, as with llama-cpp-python's reuse, against 6.0-6.3 s from an
empty context; a 37-token prompt, shorter than a chunk, is evaluated again: 350-470 ms
against 220-290 ms.

Stopping: generation stops between two tokens (or two prompt chunks) when its caller went
away or the process is exiting. At interpreter exit ``shutdown`` (registered with
``atexit``) sets the stop flag, waits for the llama thread to end, and only then frees the
models: freeing a model while llama.cpp computes with it on the llama thread crashed the
process (SIGSEGV in libggml-cpu) when Ctrl-C arrived during a long prompt.

Constrained output runs under a GBNF grammar that llama.cpp has checked first (``gbnf``).
"""

from __future__ import annotations

import atexit
import codecs
import ctypes
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from time import monotonic
from typing import Any, cast

import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llama_cpp.llama_grammar import LlamaGrammar

from llm_abstractions.errors import LLMContextLengthError, LLMError, ModelFileError
from llm_abstractions.providers.gbnf import GrammarCache, llama_log_captured
from llm_abstractions.providers.local_tools import template_messages
from llm_abstractions.threads import SerialWorker
from llm_abstractions.types import FinishReason, LlmRequest

__all__ = [
    "LLAMA_THREAD",
    "PROMPT_CHUNK",
    "Generation",
    "free_cores",
    "GenerationCancelled",
    "GrammarCache",
    "LlamaEngine",
    "get_engine",
    "shutdown",
    "stopping",
]

PROVIDER = "local"
DEFAULT_TEMPERATURE = 0.2  # llama-cpp-python's chat default
# Prompt tokens evaluated in one llama.cpp call: a stop waits for one chunk at most. Chunks
# of 128, 256 and 512 evaluated a 2,037-token prompt at the same speed (210 tokens/s).
PROMPT_CHUNK = 128
SHUTDOWN_TIMEOUT = 30.0  # seconds ``shutdown`` waits for the llama thread at exit
# Used only for GGUF files that carry no chat template of their own.
_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class GenerationCancelled(Exception):  # noqa: N818 - a signal, not an error
    """The caller went away or the process is exiting; generation stopped between tokens."""


# Set once, by ``shutdown``: every generation stops at its next token and none starts.
_stopping = threading.Event()


def stopping() -> bool:
    """Whether the process is shutting the embedded models down (``shutdown`` was called)."""
    return _stopping.is_set()


@dataclass(frozen=True)
class Generation:
    """What one run of the decode loop produced."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


class LlamaEngine:
    """One loaded GGUF model; only ever touched from the llama thread."""

    def __init__(self, path: Path, n_ctx: int, n_threads: int) -> None:
        self.path = path
        try:
            with _streams_left_alone(), llama_log_captured() as logged:
                self.llama = llama_cpp.Llama(
                    model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, verbose=False
                )
        except (ValueError, RuntimeError) as exc:
            said = _last_error(logged)
            raise ModelFileError(
                f"llama.cpp could not load {path}: {exc}{said}. The file may be truncated or "
                "made for a newer llama.cpp: download it again or pick another .gguf."
            ) from exc
        # llama.cpp may round the context up (to 256 at least) while llama-cpp-python keeps
        # buffers of the size asked for: the smaller of the two is the real limit.
        self.n_ctx = min(self.llama.n_ctx(), n_ctx)
        self.model_name = path.stem
        self._formatter = self._chat_formatter()
        template = str(self.llama.metadata.get("tokenizer.chat_template", ""))
        self._template_takes_tools = "tools" in template and "tool_call" in template
        # llama.cpp knows which tokens end a turn (eos, eot, im_end...); ask it, as
        # llama-cpp-python's own completion loop does.
        self._vocab = self.llama._model.vocab
        self.grammars = GrammarCache(self._vocab)
        # The leading context positions evaluated as whole chunks on the PROMPT_CHUNK grid.
        self._aligned = 0

    def _chat_formatter(self) -> Jinja2ChatFormatter:
        model = self.llama._model
        eos, bos = self.llama.token_eos(), self.llama.token_bos()
        return Jinja2ChatFormatter(
            template=self.llama.metadata.get("tokenizer.chat_template", _CHATML),
            eos_token=model.token_get_text(eos) if eos != -1 else "",
            bos_token=model.token_get_text(bos) if bos != -1 else "",
        )

    def prompt_tokens(self, request: LlmRequest) -> list[int]:
        """Render the chat template and tokenize it exactly as llama-cpp-python would.

        Tools, and the turns that call them, are rendered by the template when it takes
        them, else written into the turns in the same format (``local_tools``).
        """
        messages, tools = template_messages(request, self._template_takes_tools)
        # Plain dicts of the shapes llama-cpp-python's TypedDicts describe.
        rendered = self._formatter(messages=cast(Any, messages), tools=cast(Any, tools))
        return self.llama.tokenize(
            rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True
        )

    def run(
        self,
        request: LlmRequest,
        emit: Callable[[str, int], None] | None,
        cancelled: threading.Event,
    ) -> Generation:
        """Generate an answer, calling ``emit`` with each new piece of text and its tokens.

        Returns when the model ends its turn, a stop sequence appears, the token budget is
        spent, or ``cancelled`` is set (then raises ``GenerationCancelled``).

        Raises:
            InvalidRequestError: The request's grammar or output schema cannot be used.
            LLMContextLengthError: The prompt leaves no room in the context window.
            LLMError: llama.cpp failed.
        """
        if cancelled.is_set() or _stopping.is_set():
            raise GenerationCancelled
        grammar = self.grammars.for_request(request)
        try:
            return self._decode(request, grammar, emit, cancelled)
        except (GenerationCancelled, LLMError):
            raise
        except Exception as exc:
            raise LLMError(f"local model failed: {exc}", provider=PROVIDER) from exc

    def _decode(
        self,
        request: LlmRequest,
        grammar: LlamaGrammar | None,
        emit: Callable[[str, int], None] | None,
        cancelled: threading.Event,
    ) -> Generation:
        llama = self.llama
        prompt = self.prompt_tokens(request)
        room = self.n_ctx - len(prompt)
        if room <= 0:
            raise LLMContextLengthError(
                f"the prompt is {len(prompt)} tokens and the context window {self.n_ctx}; "
                "shorten the prompt or raise ORCHESTRA_LOCAL_N_CTX",
                provider=PROVIDER,
            )
        budget = min(request.max_tokens or room, room)
        repeatable = request.temperature == 0 or request.seed is not None
        self._evaluate(prompt, repeatable=repeatable, cancelled=cancelled)
        llama.set_seed(request.seed if request.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED)
        text = _TextAssembler(request.stop or (), emit)
        completion: list[int] = []
        finish: FinishReason = "length"
        # The whole prompt is in the context now, its logits fresh: generate samples at once.
        for token in llama.generate(
            prompt,
            temp=request.temperature if request.temperature is not None else DEFAULT_TEMPERATURE,
            top_p=request.top_p if request.top_p is not None else 0.95,
            repeat_penalty=1.0,
            grammar=grammar,
        ):
            if cancelled.is_set() or _stopping.is_set():
                raise GenerationCancelled
            if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                finish = "stop"
                break
            completion.append(token)
            # Token by token is exact here: llama-cpp-python's detokenize ignores prev_tokens.
            if text.add(llama.detokenize([token])):
                finish = "stop"
                break
            if len(completion) >= budget:
                break
        return Generation(text.finish(), finish, len(prompt), len(completion))

    def _evaluate(self, prompt: list[int], *, repeatable: bool, cancelled: threading.Event) -> None:
        """Bring the context to exactly ``prompt``, a chunk at a time, stopping between chunks.

        The longest prefix of the prompt still in the KV cache is kept and only the rest
        evaluated (the last token always is: sampling needs its logits). For a ``repeatable``
        request only whole grid chunks are kept: what a start from empty would compute.
        """
        llama = self.llama
        common = _common_prefix(llama.input_ids[: llama.n_tokens].tolist(), prompt)
        keep = min(common, len(prompt) - 1)
        if repeatable:
            keep = min(keep, self._aligned) // PROMPT_CHUNK * PROMPT_CHUNK
        # A model whose memory cannot be cut at a position (recurrent) starts from empty.
        if keep == 0 or not llama._ctx.kv_cache_seq_rm(-1, keep, -1):
            llama.reset()  # type: ignore[no-untyped-call]
            keep = 0
        llama.n_tokens = keep
        self._aligned = min(keep, self._aligned) // PROMPT_CHUNK * PROMPT_CHUNK
        for start in range(keep, len(prompt), PROMPT_CHUNK):
            if cancelled.is_set() or _stopping.is_set():
                raise GenerationCancelled
            llama.eval(prompt[start : start + PROMPT_CHUNK])
            if start == self._aligned and start + PROMPT_CHUNK <= len(prompt):
                self._aligned += PROMPT_CHUNK  # a whole chunk, on the grid

    def close(self) -> None:
        """Free the model; only once nothing computes with it (see ``shutdown``)."""
        self.llama.close()


class _LeaveStreamsAlone:
    """A stand-in for llama-cpp-python's ``suppress_stdout_stderr`` that does nothing."""

    def __init__(self, disable: bool = True) -> None:
        del disable

    def __enter__(self) -> _LeaveStreamsAlone:
        return self

    def __exit__(self, *_: object) -> None:
        return None


def _last_error(logged: list[bytes]) -> str:
    """The last line llama.cpp logged about an error, as `` (...)``; empty when none."""
    lines = b"".join(logged).decode("utf-8", "replace").splitlines()
    errors = [line.strip() for line in lines if "error" in line.lower() and line.strip()]
    return f" ({errors[-1]})" if errors else ""


@contextmanager
def _streams_left_alone() -> Iterator[None]:
    """Load a model without pointing the process's stdout and stderr at ``/dev/null``.

    With ``verbose=False`` llama-cpp-python silences a load by ``dup2``-ing ``/dev/null``
    onto file descriptors 1 and 2, for the whole process: what any other thread printed
    meanwhile was lost (the CLI's "interrupted; resume with ..." line after a Ctrl-C during a
    load, log lines; 10 of 14 lines in a test). llama.cpp's own log is captured meanwhile
    instead (``gbnf.llama_log_captured``), its last error line added to a failed load's
    message. Only the llama thread loads.
    """
    import llama_cpp._internals
    import llama_cpp.llama

    modules = [llama_cpp.llama, llama_cpp._internals]
    saved = [getattr(module, "suppress_stdout_stderr", None) for module in modules]
    for module in modules:
        module.suppress_stdout_stderr = _LeaveStreamsAlone  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module, original in zip(modules, saved, strict=True):
            if original is not None:
                module.suppress_stdout_stderr = original  # type: ignore[attr-defined]


def _common_prefix(cached: list[int], prompt: list[int]) -> int:
    """How many tokens at the start of ``prompt`` are ``cached`` already."""
    for index, (held, wanted) in enumerate(zip(cached, prompt, strict=False)):
        if held != wanted:
            return index
    return min(len(cached), len(prompt))


class _TextAssembler:
    """Decodes token bytes incrementally, cuts at stop sequences, emits safe text.

    Each piece emitted comes with the number of tokens added since the last one (text held
    back for a possible stop sequence is counted with the piece that releases it).
    """

    def __init__(self, stops: tuple[str, ...], emit: Callable[[str, int], None] | None) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = tuple(s for s in stops if s)
        # Text that could still turn out to be the start of a stop sequence is held back.
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self._emit = emit
        self._text = ""
        self._emitted = 0
        self._stopped = False
        self._tokens = 0  # added and not yet emitted

    def add(self, piece: bytes) -> bool:
        """Append token bytes; return True when a stop sequence was reached."""
        self._tokens += 1
        start = max(0, len(self._text) - self._hold)
        self._text += self._decoder.decode(piece)
        cut = min((i for s in self._stops if (i := self._text.find(s, start)) >= 0), default=-1)
        if cut >= 0:
            self._text = self._text[:cut]
            self._stopped = True
            return True
        self._flush(len(self._text) - self._hold)
        return False

    def finish(self) -> str:
        """Flush what is held back and return the whole text."""
        if not self._stopped:  # bytes after a stop sequence are not part of the answer
            self._text += self._decoder.decode(b"", final=True)
        self._flush(len(self._text))
        return self._text

    def _flush(self, upto: int) -> None:
        if self._emit is not None and upto > self._emitted:
            self._emit(self._text[self._emitted : upto], self._tokens)
            self._emitted, self._tokens = upto, 0


_engines: dict[tuple[Path, int, int], LlamaEngine] = {}


def get_engine(path: Path, n_ctx: int, n_threads: int) -> LlamaEngine:
    """The shared engine for this model file and settings, loading it on first use.

    Call it on the llama thread only (it is not locked).

    Raises:
        GenerationCancelled: The process is shutting down (``shutdown``): nothing is loaded.
    """
    if _stopping.is_set():
        raise GenerationCancelled
    key = (path, n_ctx, n_threads)
    engine = _engines.get(key)
    if engine is None:
        engine = _engines[key] = LlamaEngine(path, n_ctx, n_threads)
    return engine


LLAMA_THREAD = SerialWorker("orchestra-llama")


def shutdown(timeout: float = SHUTDOWN_TIMEOUT) -> bool:
    """Stop every generation, end the llama thread, then free the models; runs at exit.

    Each generation stops at its next token or prompt chunk and the llama thread ends after
    the job it is running; only then are the models freed, since freeing one under a
    running computation crashes the process. A second Ctrl-C meanwhile does not cut the
    wait short. If the thread has not ended within ``timeout`` seconds the models are never
    freed (the operating system reclaims them at exit). The embedded provider serves nothing
    afterwards; calling this again does nothing more.

    Returns:
        Whether the llama thread ended (and the models were freed).
    """
    _stopping.set()
    deadline = monotonic() + timeout
    while True:
        try:
            ended = LLAMA_THREAD.stop(max(deadline - monotonic(), 0.0))
            break
        except KeyboardInterrupt:  # freeing now could crash: keep waiting, to the deadline
            if monotonic() >= deadline:
                ended = False
                break
    engines = list(_engines.values())
    _engines.clear()
    if not ended:
        for engine in engines:  # a reference that is never dropped: never freed, not even
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(engine))  # when modules are torn down
        return False
    for engine in engines:
        engine.close()
    return True


atexit.register(shutdown)


def default_threads() -> int:
    """The cores that are free now, decided once a process (at least one).

    The cores this process may use (affinity, not ``os.cpu_count()``: in a CPU-limited
    container that counts the host's) less the one-minute load average: llama.cpp's threads
    wait for one another at every token, so one thread that has a core to itself beats two
    that share theirs (measured here: 6.7 against 1.6 tokens/s beside a busy neighbour).
    Decided once, so that every provider of the process shares one engine.
    """
    if not _threads:
        _threads.append(free_cores(_usable_cores(), _load_average()))
    return _threads[0]


def free_cores(usable: int, load: float | None) -> int:
    """``usable`` cores less those the load keeps busy (rounded down), at least one."""
    if load is None:
        return max(usable, 1)
    return max(usable - int(load), 1)


_threads: list[int] = []


def _usable_cores() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:  # not available on this system
        return None
