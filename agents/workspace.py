"""Tools for the specialists, confined to the app's output directory.

``workspace_tools(root)`` gives a model ``list_files``, ``read_file``, ``write_file`` and
``run_tests``, each working under ``root`` only: a path is a plain relative path (the file
contract's own rule, ``contract.path_problem``), resolved and refused if it lands outside
(a symlink out of the directory included); ``write_file`` writes only where the role
writes (``allowed``, its path prefixes). ``run_tests`` runs ``tests/test_*.py`` the way the
demo's ``qa-run`` does (``scripts/run_tests.py``: a copy of the app, a child interpreter, a
timeout, its own process group) with the script agents' minimal environment: no keys. That
is the whole of its confinement: it runs code a model wrote, as this user, and is no
sandbox.

The specialists' answers stay the contract: what a specialist writes with ``write_file`` is
a draft, and the files of its checked answer are written over it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from agents.contract import ContractError, path_problem, write_files
from orchestration.model.tools import Tool
from orchestration.runtime.subprocess_runner import BASE_ENV

__all__ = ["MAX_READ_CHARS", "RUN_TESTS", "workspace_tools"]

RUN_TESTS = Path(__file__).resolve().parent.parent / "scripts" / "run_tests.py"
MAX_READ_CHARS = 60_000


def workspace_tools(
    root: Path, *, test_timeout_s: float = 60.0, allowed: Sequence[str] = ("",)
) -> list[Tool]:
    """``list_files``, ``read_file``, ``write_file`` and ``run_tests`` under ``root``.

    ``allowed`` are the path prefixes ``write_file`` may write (a role's ``writes``).
    """
    base = root.resolve()

    def inside(path: str, prefixes: Sequence[str] = ("",)) -> Path:
        problem = path_problem(path, prefixes)
        target = (base / path).resolve()
        if problem is None and not target.is_relative_to(base):
            problem = "resolves outside the output directory"
        if problem is not None:
            raise ValueError(f"{path}: {problem}")
        return target

    def list_files() -> list[str]:
        """List the app's files (paths relative to its directory)."""
        return sorted(
            str(p.relative_to(base))
            for p in base.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.resolve().is_relative_to(base)
        )

    def read_file(path: str) -> str:
        """Read one of the app's files.

        Args:
            path: Its path relative to the app's directory, such as `server.py`.
        """
        target = inside(path)
        if not target.is_file():
            raise FileNotFoundError(f"{path}: no such file; list_files says what there is")
        text = target.read_text(encoding="utf-8", errors="replace")
        if len(text) > MAX_READ_CHARS:
            return f"{text[:MAX_READ_CHARS]}\n[cut: {len(text) - MAX_READ_CHARS} more characters]"
        return text

    def write_file(path: str, content: str) -> str:
        """Write one of the app's files (a draft: your answer's files are written over it).

        Args:
            path: Its path relative to the app's directory, such as `tests/test_app.py`.
            content: The whole file.
        """
        inside(path, allowed)
        try:
            write_files({path: content}, base)
        except ContractError as exc:
            raise ValueError(str(exc)) from None
        return f"wrote {path} ({len(content.encode())} bytes)"

    def run_tests() -> str:
        """Run the app's unittest suite (tests/test_*.py); its verdict and the log's end."""
        done = subprocess.run(  # noqa: S603 - our interpreter, our script
            [sys.executable, "-I", str(RUN_TESTS)],
            input=json.dumps({"timeout_s": test_timeout_s}),
            capture_output=True,
            text=True,
            cwd=base,
            env={name: os.environ[name] for name in BASE_ENV if name in os.environ},
            start_new_session=True,  # the runner kills its suite's group; this is another
            timeout=test_timeout_s + 15,
            check=False,
        )
        try:
            return str(json.loads(done.stdout)["output"])
        except (ValueError, KeyError):
            raise RuntimeError(f"the test runner failed: {done.stderr[-500:]}") from None

    timeout = test_timeout_s + 20
    return [
        Tool.of(list_files, idempotent=True),
        Tool.of(read_file, idempotent=True),
        Tool.of(write_file, idempotent=True),  # the same content again changes nothing
        Tool.of(run_tests, timeout_s=timeout, idempotent=True),
    ]
