"""The specialists' output contract: files as fenced blocks, each after a ``FILE:`` line.

A well-formed answer looks like this (any text between files is ignored)::

    FILE: backend/server.py
    ```python
    print("hello")
    ```

Parsing is strict about what could write in the wrong place: a file's path must be a plain
relative path (letters, digits, ``._-/``; no ``..``, no absolute or home paths, no
backslashes) under one of the directories the role may write, and a fence that is opened
must be closed. A closing fence is a line of at least as many backticks as the opening one
and nothing else, as in CommonMark, so a Markdown file can hold code blocks when its own
fence is longer. Files with a bad path are refused one by one and reported; an answer whose
fences cannot be delimited, or that holds no file at all, is refused whole.

``write_files`` writes parsed files under an output directory and checks each resolved
path again, so that a symlink inside the directory cannot lead a file outside it.

A specialist on a coding CLI writes its files in a directory of its own instead, and its
answer ends with the diff of what it changed (``orchestration.runtime.coding``);
``files_of_diff`` reads that diff as files, the same paths checks applied.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from orchestration.runtime.coding.workdir import plain_env

__all__ = [
    "ContractError",
    "ParsedOutput",
    "files_of_diff",
    "parse_files",
    "path_problem",
    "write_files",
]

_FILE_LINE = re.compile(r"^\s*(?:\*\*)?FILE:\s*(?P<path>\S+?)(?:\*\*)?\s*$")
_OPENING = re.compile(r"^(?P<fence>`{3,})[\w+.#-]*\s*$")
_SAFE_PATH = re.compile(r"^[A-Za-z0-9._\-/]+$")
MAX_PATH = 200


class ContractError(ValueError):
    """An answer that cannot be used at all (no file, or fences that never close)."""


@dataclass
class ParsedOutput:
    """The files of one answer, and the ones refused with their reasons."""

    files: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def parse_files(text: str, allowed: Sequence[str] = ("",)) -> ParsedOutput:
    """Parse an answer under the contract.

    Args:
        text: The model's answer.
        allowed: Path prefixes the role may write (``"backend/"``, or ``""`` for anywhere
            under the output directory).

    Raises:
        ContractError: No usable file, or a fence that is never closed.
    """
    parsed = ParsedOutput()
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        match = _FILE_LINE.match(lines[index])
        index += 1
        if match is None:
            continue
        path = match["path"].strip("`")
        while index < len(lines) and not lines[index].strip():
            index += 1
        opening = _OPENING.match(lines[index]) if index < len(lines) else None
        if opening is None:
            parsed.problems.append(f"{path}: no fenced block after its FILE: line")
            continue
        body, index = _fenced_body(lines, index + 1, opening["fence"], path)
        problem = path_problem(path, allowed)
        if problem is not None:
            parsed.problems.append(f"{path}: {problem}")
        elif path in parsed.files:
            parsed.problems.append(f"{path}: given twice; the first one is kept")
        elif clash := _clash(path, parsed.files):
            parsed.problems.append(f"{path}: {clash} is already a file of this answer")
        else:
            parsed.files[path] = body
    if not parsed.files:
        reasons = "; ".join(parsed.problems) or "no `FILE: path` line before a fenced block"
        raise ContractError(f"no usable file in the answer: {reasons}")
    return parsed


def _clash(path: str, files: dict[str, str]) -> str | None:
    """A file of ``files`` that ``path`` would need as a directory, or the reverse."""
    for other in files:
        if path.startswith(other + "/") or other.startswith(path + "/"):
            return other
    return None


def _fenced_body(lines: list[str], start: int, fence: str, path: str) -> tuple[str, int]:
    for end in range(start, len(lines)):
        closing = lines[end].strip()
        if len(closing) >= len(fence) and set(closing) == {"`"}:
            return "\n".join(lines[start:end]) + "\n", end + 1
    raise ContractError(f"{path}: its code fence is never closed")


def path_problem(path: str, allowed: Sequence[str] = ("",)) -> str | None:
    """Why ``path`` may not be written (by a role writing under ``allowed``), or None."""
    if len(path) > MAX_PATH or not _SAFE_PATH.match(path):
        return "not a plain relative path (letters, digits, '._-/' only)"
    parts = PurePosixPath(path).parts
    if path.startswith("/") or any(part in ("", ".", "..") for part in parts):
        return "escapes the output directory"
    if path.endswith("/"):
        return "names a directory, not a file"
    if not any(path.startswith(prefix) for prefix in allowed):
        return f"outside what this role writes ({', '.join(allowed)})"
    return None


def write_files(files: dict[str, str], root: Path) -> list[Path]:
    """Write ``files`` under ``root``; return the paths written.

    Raises:
        ContractError: A path is unsafe or resolves outside ``root`` (then nothing is
            written), or the file system refused a write (a file where a directory must go,
            a full disk): the files before it are written.
    """
    base = root.resolve()
    targets = []
    for name, _ in files.items():
        problem = path_problem(name, ("",))
        target = (base / name).resolve()
        if problem is None and not target.is_relative_to(base):
            problem = "resolves outside the output directory"
        if problem is not None:
            raise ContractError(f"{name}: {problem}")
        targets.append(target)
    for index, (target, content) in enumerate(zip(targets, files.values(), strict=True)):
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content, encoding="utf-8")
        except OSError as exc:
            written = ", ".join(str(t.relative_to(base)) for t in targets[:index]) or "none"
            raise ContractError(
                f"{target.relative_to(base)}: cannot be written ({exc.strerror or exc}); "
                f"written before it: {written}"
            ) from exc
    return targets


_DIFF_FILE = re.compile(r"^diff --git a/(?P<old>\S+) b/(?P<new>\S+)$", re.MULTILINE)


def files_of_diff(text: str, base: Path, allowed: Sequence[str] = ("",)) -> ParsedOutput:
    """The files a coding CLI's answer changed, whole: its diff applied to ``base``'s.

    ``text`` is the CLI's answer: its final message, then the ``git diff`` of its directory,
    which started as a copy of ``base``. The diff is applied (``git apply``) to a scratch
    copy of the files it touches, never to ``base`` itself; deleted files are not returned.

    Raises:
        ContractError: The answer holds no diff, or one that does not apply to ``base``.
    """
    found = _DIFF_FILE.search(text)
    if found is None:
        raise ContractError("no file was changed")
    diff = text[found.start() :]
    parsed = ParsedOutput()
    paths = []
    for match in _DIFF_FILE.finditer(diff):
        path = match["new"]
        problem = path_problem(path, allowed)
        if problem is not None:
            parsed.problems.append(f"{path}: {problem}")
        elif path not in paths:
            paths.append(path)
    if not paths:
        return parsed  # it changed nothing its role may
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for path in paths:
            if (base / path).is_file():
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(base / path, root / path)
        done = subprocess.run(  # noqa: S603 - git, our arguments, the diff on stdin
            # Only what its role may change: the rest was reported above.
            ["git", "apply", "--whitespace=nowarn", *_only(paths), "-"],  # noqa: S607
            input=diff if diff.endswith("\n") else diff + "\n",
            cwd=root,
            # Outside any repository (git would apply only under the one it found).
            env={**plain_env(), "GIT_CEILING_DIRECTORIES": str(root.parent)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            said = (done.stderr.strip().splitlines() or ["(no message)"])[0]
            raise ContractError(f"its diff does not apply: {said}")
        for path in paths:
            if (root / path).is_file():
                parsed.files[path] = (root / path).read_text(encoding="utf-8", errors="replace")
    return parsed


def _only(paths: Sequence[str]) -> list[str]:
    """``git apply`` options applying the patches of ``paths`` alone (taken literally)."""
    return ["--include=" + _GLOB.sub(r"\\\1", path) for path in paths]


_GLOB = re.compile(r"([][*?\\])")  # wildmatch's special characters
