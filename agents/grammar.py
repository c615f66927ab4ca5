r"""A GBNF grammar for the file contract, so that a constrained model can only answer in it.

The grammar admits one or more blocks, each a ``FILE: <path>`` line naming one of the given
paths, then a fenced block: an opening line of three backticks and an optional language
tag, the file's lines, and a closing line of three backticks. Blocks are separated by a
line break and at most one blank line; nothing else may come before, between or after them.

Every answer the grammar admits must parse under ``agents.contract.parse_files``, which
closes a fence at the first line that is nothing but three or more backticks once stripped
of whitespace. So a body line may not be whitespace followed by three backticks: such a line
is not admitted at all, which rules out fences inside a file (a Markdown file cannot hold a
fenced code block). Four-backtick outer fences would allow them, but a small model that
opens with four backticks and closes with three never ends its file under the grammar: it
writes until ``max_tokens``. A body line may also not hold any character that
``str.splitlines`` breaks at besides ``\n`` (``\r``, ``\x0b``, ``\u2028``...), since the
parser would see a line the grammar did not.

The grammar is plain text for llama.cpp (``LlmRequest(grammar=...)`` on the ``local``
provider); building it needs no third-party package.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["file_contract_grammar"]

# str.splitlines breaks at these besides "\n": none may appear inside a line.
LINE_BREAKS = (0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029)
# What str.strip removes that is not a line break: a line of these and three backticks closes.
BLANKS = (0x09, 0x20, 0x1F, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x202F, 0x205F, 0x3000)
BACKTICK = 0x60
MAX_CODE_POINT = 0x10FFFF
MAX_LANGUAGE_TAG = 16
MAX_PATH = 200
_PLAIN_PATH = re.compile(r"[A-Za-z0-9._\-/]+")


def file_contract_grammar(paths: Iterable[str], *, each_once: bool = False) -> str:
    """A GBNF grammar admitting only answers that write some of ``paths`` under the contract.

    Args:
        paths: The exact files the role may write (``"app/models.py"``), in any order; a
            path given twice counts once.
        each_once: Admit only answers that write every path once, in the order given, and
            end there. A small model under the plain grammar tends to write the same file
            again and again until ``max_tokens``; this bounds the answer to its files.

    Returns:
        The grammar, with ``root`` as its start rule.

    Raises:
        ValueError: No path was given, or one is not a plain relative file path (letters,
            digits and ``._-/``, no empty, ``.`` or ``..`` part), which the contract's parser
            would refuse.
    """
    unique = list(dict.fromkeys(paths))
    if not unique:
        raise ValueError("give at least one file path")
    for path in unique:
        problem = _path_problem(path)
        if problem is not None:
            raise ValueError(f"{path!r}: {problem}")
    line_end = {0x0A, *LINE_BREAKS}
    if each_once:
        names = [f"file{index}" for index in range(len(unique))]
        files = [
            f'{name} ::= "FILE: {path}\\n```" lang "\\n" line* "```"'
            for name, path in zip(names, unique, strict=True)
        ]
        start = ["root ::= " + ' "\\n" "\\n"? '.join(names) + ' "\\n"?', *files]
    else:
        alternatives = " | ".join(f'"{path}"' for path in unique)
        start = [
            'root ::= file ("\\n" "\\n"? file)* "\\n"?',
            'file ::= "FILE: " path "\\n```" lang "\\n" line* "```"',
            f"path ::= {alternatives}",
        ]
    return "\n".join(
        [
            *start,
            f"lang ::= [A-Za-z0-9_+.#-]{{0,{MAX_LANGUAGE_TAG}}}",
            # A line whose first visible character is not a backtick, or that starts with
            # one or two backticks and something else: never a closing fence, stripped.
            'line ::= blank* text? "\\n"',
            'text ::= first rest* | "`" | "``"',
            'first ::= visible | "`" other | "``" other',
            f"visible ::= {_all_but({BACKTICK, *BLANKS, *line_end})}",
            f"other ::= {_all_but({BACKTICK, *line_end})}",
            f"rest ::= {_all_but(line_end)}",
            f"blank ::= [{''.join(_escape(code) for code in BLANKS)}]",
            "",
        ]
    )


def _path_problem(path: str) -> str | None:
    if len(path) > MAX_PATH or not _PLAIN_PATH.fullmatch(path):
        return "not a plain relative path (letters, digits, '._-/' only)"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return "an absolute path, a directory, or one with an empty, '.' or '..' part"
    return None


def _all_but(excluded: set[int]) -> str:
    """A character class of every character but NUL and ``excluded``, as positive ranges.

    ``[^...]`` would say the same, but llama.cpp refuses a token that ends inside a
    multi-byte character when any character it could complete to is excluded (so with
    U+2028 excluded, no token could end in the first byte of "✓"); a positive class lets the
    token through when any completion is allowed.
    """
    ranges, start = [], 1
    for code in sorted(excluded | {0}):
        if code > start:
            ranges.append(_escape(start) + (f"-{_escape(code - 1)}" if code - 1 > start else ""))
        start = max(start, code + 1)
    ranges.append(f"{_escape(start)}-{_escape(MAX_CODE_POINT)}")
    return f"[{''.join(ranges)}]"


def _escape(code: int) -> str:
    if code < 0x100:
        return f"\\x{code:02X}"
    return f"\\u{code:04X}" if code < 0x10000 else f"\\U{code:08X}"
