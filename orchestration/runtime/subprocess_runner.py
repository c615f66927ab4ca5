"""Running a script agent: JSON in on stdin, JSON out on stdout, and hard limits.

Rules: an argument vector, never a shell; the prompt on stdin, never in argv (argv is
visible to every user of the machine); a minimal environment plus only the variables the
caller names; its own process group, killed whole at the timeout (a script's children
die with it); stdout and stderr read up to a bound, past which the script is killed. A
non-zero exit, a timeout, too much output or output that is not one JSON object is a
``ScriptError`` carrying the tail of stderr.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc

__all__ = ["ScriptError", "ScriptOutcome", "run_script"]

# Variables a well-behaved program needs to start; nothing else leaks in by default.
BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT", "TZ")
STDERR_TAIL = 2000


class ScriptError(Exception):
    """A script attempt failed; ``kind`` says how (exit, timeout, output, protocol)."""

    def __init__(self, kind: str, message: str, stderr: str = "") -> None:
        self.kind = kind
        tail = stderr[-STDERR_TAIL:]
        if len(stderr) > STDERR_TAIL:  # start at a word: a cut key is not recognizable
            tail = tail.split(None, 1)[-1] if " " in tail or "\n" in tail else ""
        self.stderr_tail = tail
        detail = f"; stderr: {self.stderr_tail.strip()}" if self.stderr_tail.strip() else ""
        super().__init__(f"{message}{detail}")


@dataclass(frozen=True)
class ScriptOutcome:
    """A script's parsed answer."""

    answer: dict[str, Any]
    stderr: str


async def run_script(
    argv: Sequence[str],
    payload: Mapping[str, Any],
    *,
    timeout_s: float,
    max_output_bytes: int,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> ScriptOutcome:
    """Run ``argv`` with ``payload`` as JSON on stdin; return its JSON answer.

    Raises:
        ScriptError: The script timed out, exited non-zero, printed too much, or did not
            print one JSON object.
    """
    child_env = {k: os.environ[k] for k in BASE_ENV if k in os.environ}
    child_env.update(env or {})
    process = await anyio.open_process(list(argv), env=child_env, cwd=cwd, start_new_session=True)
    out = bytearray()
    err = bytearray()
    overflow: list[str] = []
    try:
        with anyio.fail_after(timeout_s):
            async with anyio.create_task_group() as tg:
                tg.start_soon(_feed, process, json.dumps(payload).encode())
                for stream, sink, name in (
                    (process.stdout, out, "stdout"),
                    (process.stderr, err, "stderr"),
                ):
                    tg.start_soon(_drain, process, stream, sink, max_output_bytes, name, overflow)
            code = await process.wait()
    except TimeoutError:
        raise ScriptError("timeout", f"script timed out after {timeout_s} s", _text(err)) from None
    finally:
        with anyio.CancelScope(shield=True):
            _kill_group(process)  # also ends children the script left behind
            await process.aclose()
    if overflow:
        raise ScriptError("output", overflow[0], _text(err))
    stderr = _text(err)
    answer = _parse(out, code, stderr)
    return ScriptOutcome(answer, stderr)


def _parse(out: bytearray, code: int, stderr: str) -> dict[str, Any]:
    try:
        answer = json.loads(out.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        answer = None
    if code != 0:
        if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
            error = answer["error"]
            raise ScriptError(str(error.get("type", "exit")), str(error.get("message")), stderr)
        raise ScriptError("exit", f"script exited with status {code}", stderr)
    if not isinstance(answer, dict):
        raise ScriptError("protocol", "script did not print one JSON object on stdout", stderr)
    return answer


async def _feed(process: anyio.abc.Process, data: bytes) -> None:
    assert process.stdin is not None  # noqa: S101 - opened with a pipe
    try:
        await process.stdin.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass  # the script did not read its input; its exit status will tell
    finally:
        await process.stdin.aclose()


async def _drain(
    process: anyio.abc.Process,
    stream: anyio.abc.ByteReceiveStream | None,
    sink: bytearray,
    limit: int,
    name: str,
    overflow: list[str],
) -> None:
    if stream is None:
        return
    async for chunk in stream:
        sink.extend(chunk[: limit + 1 - len(sink)])
        if len(sink) > limit:
            overflow.append(f"script wrote more than {limit} bytes on {name}")
            _kill_group(process)  # its pipes close, and the other readers end
            return


def _kill_group(process: anyio.abc.Process) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # already gone


def _text(data: bytearray) -> str:
    return data[-STDERR_TAIL * 4 :].decode("utf-8", "replace")
