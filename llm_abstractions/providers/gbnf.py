"""The grammars the embedded model decodes under, checked by llama.cpp before they are used.

Constrained output (``response_format="json"``, ``output_schema``, ``grammar``) becomes a
GBNF grammar that llama.cpp's grammar sampler enforces token by token. Each engine keeps the
grammars it has checked, by text (``GrammarCache``): llama.cpp must see a grammar before
generation starts, because ``Llama.generate`` adds a grammar it cannot parse to its sampler
chain as a null sampler and the process then crashes at the first token. Like everything
that calls llama.cpp, it runs on the llama thread only.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import llama_cpp
from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar, json_schema_to_gbnf

from llm_abstractions.errors import InvalidRequestError
from llm_abstractions.providers.local_tools import tool_grammar
from llm_abstractions.types import LlmRequest

__all__ = ["GrammarCache"]


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
        if request.tools and request.tool_choice != "none":  # calls, or the answer
            return self.get("gbnf", tool_grammar(request))
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


@contextmanager
def llama_log_captured() -> Iterator[list[bytes]]:
    """What llama.cpp logs meanwhile, kept in the list given (and not printed).

    Only on the llama thread: the sink is one per process.
    """
    saved_log, saved_data = llama_cpp.llama_log_callback(), ctypes.c_void_p()
    llama_cpp.llama_log_get(ctypes.byref(saved_log), ctypes.byref(saved_data))
    _log_lines.clear()
    llama_cpp.llama_log_set(_LOG_SINK, None)
    try:
        yield _log_lines
    finally:
        llama_cpp.llama_log_set(saved_log, saved_data)


def _parse_problem(vocab: llama_cpp.llama_vocab_p, text: str) -> str | None:
    """Why llama.cpp rejects the GBNF ``text`` for ``vocab``, or None when it accepts it.

    llama.cpp reports a syntax error on stderr and a missing root or a left-recursive rule
    through its log; both are caught here so that they become the exception's message. For
    the parse (a fraction of a millisecond, on a cache miss only) file descriptor 2 points
    at a temporary file: what other threads write there meanwhile is written back after.
    """
    with tempfile.TemporaryFile() as stderr:
        with _fd_redirected(2, stderr.fileno()), llama_log_captured() as logged:
            sampler = llama_cpp.llama_sampler_init_grammar(vocab, text.encode(), b"root")
        stderr.seek(0)
        printed = stderr.read()
    if sampler:
        llama_cpp.llama_sampler_free(sampler)
        if printed and sys.stderr is not None:  # someone else's, written in the meantime
            sys.stderr.write(printed.decode("utf-8", "replace"))
        return None
    said = b"".join([printed, *logged]).decode("utf-8", "replace")
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
