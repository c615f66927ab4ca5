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
caller must be able to stop generation between two tokens.

Constrained output (``response_format="json"``, ``output_schema``, ``grammar``) becomes a
GBNF grammar that llama.cpp's grammar sampler enforces token by token. Each engine keeps the
grammars it has checked, by text (``GrammarCache``): llama.cpp must see a grammar before
generation starts, because ``Llama.generate`` adds a grammar it cannot parse to its sampler
chain as a null sampler and the process then crashes at the first token.
"""

from __future__ import annotations

import codecs
import ctypes
import json
import os
import sys
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar, json_schema_to_gbnf

from llm_abstractions.errors import (
    InvalidRequestError,
    LLMContextLengthError,
    LLMError,
    ModelFileError,
)
from llm_abstractions.threads import SerialWorker
from llm_abstractions.types import FinishReason, LlmRequest

__all__ = [
    "LLAMA_THREAD",
    "Generation",
    "free_cores",
    "GenerationCancelled",
    "GrammarCache",
    "LlamaEngine",
    "get_engine",
]

PROVIDER = "local"
DEFAULT_TEMPERATURE = 0.2  # llama-cpp-python's chat default
# Used only for GGUF files that carry no chat template of their own.
_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class GenerationCancelled(Exception):  # noqa: N818 - a signal, not an error
    """The caller went away; generation stopped between two tokens."""


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
            self.llama = llama_cpp.Llama(
                model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, verbose=False
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelFileError(
                f"llama.cpp could not load {path}: {exc}. The file may be truncated or made "
                "for a newer llama.cpp: download it again or pick another .gguf."
            ) from exc
        # llama.cpp may round the context up (to 256 at least) while llama-cpp-python keeps
        # buffers of the size asked for: the smaller of the two is the real limit.
        self.n_ctx = min(self.llama.n_ctx(), n_ctx)
        self.model_name = path.stem
        self._formatter = self._chat_formatter()
        # llama.cpp knows which tokens end a turn (eos, eot, im_end...); ask it, as
        # llama-cpp-python's own completion loop does.
        self._vocab = self.llama._model.vocab
        self.grammars = GrammarCache(self._vocab)

    def _chat_formatter(self) -> Jinja2ChatFormatter:
        model = self.llama._model
        eos, bos = self.llama.token_eos(), self.llama.token_bos()
        return Jinja2ChatFormatter(
            template=self.llama.metadata.get("tokenizer.chat_template", _CHATML),
            eos_token=model.token_get_text(eos) if eos != -1 else "",
            bos_token=model.token_get_text(bos) if bos != -1 else "",
        )

    def prompt_tokens(self, request: LlmRequest) -> list[int]:
        """Render the chat template and tokenize it exactly as llama-cpp-python would."""
        messages: list[Any] = (
            [{"role": "system", "content": request.system}] if request.system else []
        )
        messages += [{"role": m.role, "content": m.content} for m in request.messages]
        rendered = self._formatter(messages=messages)
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
        if cancelled.is_set():
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
        llama.set_seed(request.seed if request.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED)
        text = _TextAssembler(request.stop or (), emit)
        completion: list[int] = []
        finish: FinishReason = "length"
        for token in llama.generate(
            prompt,
            temp=request.temperature if request.temperature is not None else DEFAULT_TEMPERATURE,
            top_p=request.top_p if request.top_p is not None else 0.95,
            repeat_penalty=1.0,
            grammar=grammar,
        ):
            if cancelled.is_set():
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


class GrammarCache:
    """The grammars one model's vocabulary has accepted, by source; least recently used go.

    Only ever touched from the llama thread. A miss converts the source to GBNF (for a JSON
    schema) and has llama.cpp parse it once; ``compiled`` counts the misses.
    """

    SIZE = 64

    def __init__(self, vocab: llama_cpp.llama_vocab_p) -> None:
        self._vocab = vocab
        self._grammars: OrderedDict[tuple[str, str], LlamaGrammar] = OrderedDict()
        self.compiled = 0

    def for_request(self, request: LlmRequest) -> LlamaGrammar | None:
        """The grammar that constrains this request's answer, if any.

        Raises:
            InvalidRequestError: llama.cpp cannot parse the grammar, or cannot convert the
                output schema into one.
        """
        if request.grammar is not None:
            return self.get("gbnf", request.grammar)
        if request.output_schema is not None:
            try:
                schema = json.dumps(request.output_schema.json_schema)
            except (TypeError, ValueError) as exc:
                raise InvalidRequestError(f"output_schema is not JSON: {exc}") from exc
            return self.get("schema", schema)
        if request.response_format == "json":
            return self.get("gbnf", JSON_GBNF)
        return None

    def get(self, kind: Literal["gbnf", "schema"], source: str) -> LlamaGrammar:
        """The checked grammar for ``source``: GBNF text (``gbnf``) or a JSON schema (``schema``).

        Raises:
            InvalidRequestError: The source cannot be used (nothing is cached then).
        """
        key = (kind, source)
        grammar = self._grammars.get(key)
        if grammar is not None:
            self._grammars.move_to_end(key)
            return grammar
        self.compiled += 1
        text = _schema_to_gbnf(source) if kind == "schema" else source
        problem = _parse_problem(self._vocab, text)
        if problem is not None:
            what = "the GBNF grammar made from output_schema" if kind == "schema" else "grammar"
            raise InvalidRequestError(f"llama.cpp cannot parse the {what}: {problem}")
        grammar = self._grammars[key] = LlamaGrammar.from_string(text, verbose=False)
        if len(self._grammars) > self.SIZE:
            self._grammars.popitem(last=False)
        return grammar


def _schema_to_gbnf(schema: str) -> str:
    try:
        text: str = json_schema_to_gbnf(schema)
    except Exception as exc:  # the converter raises bare ValueError, KeyError, TypeError...
        raise InvalidRequestError(
            f"llama.cpp's JSON-schema converter cannot use output_schema: {exc!r}. Simplify "
            "the schema, or pass a GBNF grammar instead."
        ) from exc
    return text


# Only one llama.cpp log sink exists per process: it may be swapped only on the llama thread.
_log_lines: list[bytes] = []
_LOG_SINK = llama_cpp.llama_log_callback(lambda _level, text, _data: _log_lines.append(text or b""))


def _parse_problem(vocab: llama_cpp.llama_vocab_p, text: str) -> str | None:
    """Why llama.cpp rejects the GBNF ``text`` for ``vocab``, or None when it accepts it.

    llama.cpp reports a syntax error on stderr and a missing root or a left-recursive rule
    through its log; both are caught here so that they become the exception's message. For
    the parse (a fraction of a millisecond, on a cache miss only) file descriptor 2 points
    at a temporary file: what other threads write there meanwhile is written back after.
    """
    saved_log, saved_data = llama_cpp.llama_log_callback(), ctypes.c_void_p()
    llama_cpp.llama_log_get(ctypes.byref(saved_log), ctypes.byref(saved_data))
    _log_lines.clear()
    with tempfile.TemporaryFile() as stderr:
        with _fd_redirected(2, stderr.fileno()):
            llama_cpp.llama_log_set(_LOG_SINK, None)
            try:
                sampler = llama_cpp.llama_sampler_init_grammar(vocab, text.encode(), b"root")
            finally:
                llama_cpp.llama_log_set(saved_log, saved_data)
        stderr.seek(0)
        printed = stderr.read()
    if sampler:
        llama_cpp.llama_sampler_free(sampler)
        if printed and sys.stderr is not None:  # someone else's, written in the meantime
            sys.stderr.write(printed.decode("utf-8", "replace"))
        return None
    said = b"".join([printed, *_log_lines]).decode("utf-8", "replace")
    reason = said.split("\n\n", 1)[0].replace("parse: error parsing grammar: ", "").strip()
    return reason or "no `root` rule, or a left-recursive rule (llama.cpp gives no reason)"


@contextmanager
def _fd_redirected(fd: int, target: int) -> Iterator[None]:
    """Point file descriptor ``fd`` at ``target`` meanwhile: C code writes there directly."""
    if sys.stderr is not None:
        sys.stderr.flush()
    try:
        saved = os.dup(fd)
    except OSError:  # no such descriptor (a detached process): nothing to keep apart
        yield
        return
    os.dup2(target, fd)
    try:
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


_engines: dict[tuple[Path, int, int], LlamaEngine] = {}


def get_engine(path: Path, n_ctx: int, n_threads: int) -> LlamaEngine:
    """The shared engine for this model file and settings, loading it on first use.

    Call it on the llama thread only (it is not locked).
    """
    key = (path, n_ctx, n_threads)
    engine = _engines.get(key)
    if engine is None:
        engine = _engines[key] = LlamaEngine(path, n_ctx, n_threads)
    return engine


LLAMA_THREAD = SerialWorker("orchestra-llama")


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
