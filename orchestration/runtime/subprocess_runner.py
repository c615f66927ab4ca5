"""Running a script agent: JSON in on stdin, JSON out on stdout, and hard limits.

Rules: an argument vector, never a shell; the prompt on stdin, never in argv (argv is
visible to every user of the machine); a minimal environment plus only the variables the
caller names; stdout and stderr read up to a bound, past which the script is killed. A
non-zero exit, a timeout, too much output or output that is not one JSON object is a
``ScriptError`` carrying the tail of stderr.

The script's answer is read when the script exits, not when its stdout reaches end of file:
a child it left behind may hold the pipe open for as long as it likes. Once the script has
exited, the pipes get ``EXIT_GRACE_S`` to deliver what is buffered, and reading stops.

Whatever the script started dies with it, however the run ends (answer, timeout, too much
output, cancellation). The script runs in a process group of its own, killed whole; and
since a child can leave the group (``setsid``, a double fork), every run also puts a cookie
of its own in the script's environment, which its descendants inherit: on Linux the
processes carrying it are found in ``/proc/*/environ`` and killed (Jenkins'
ProcessTreeKiller finds strays the same way). One scan reads the environment of each of our
user's processes (about 0.5 ms for 80 processes); it runs in a worker thread all the same. A
child that drops its environment *and* leaves the group escapes; elsewhere than Linux the
process group is all there is.

Our own ends of the pipes are read and written directly (non-blocking), not through
asyncio's subprocess transport, which on Python 3.11 does not report the exit of a process
until every pipe to it is closed.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread

__all__ = [
    "RUN_COOKIE",
    "ProcessOutcome",
    "ScriptError",
    "ScriptOutcome",
    "run_process",
    "run_script",
]

# Variables a well-behaved program needs to start; nothing else leaks in by default.
BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT", "TZ")
# The variable that marks a run's processes: its value ends with the run's own cookie
# (a script run by a script keeps the outer runs' cookies before its own).
RUN_COOKIE = "ORCHESTRA_SCRIPT_RUN"
STDERR_TAIL = 2000
EXIT_GRACE_S = 0.2  # for the pipes to deliver what a script wrote just before it exited
_CHUNK = 65536
_SCAN_ROUNDS = 5  # a child forked while its parent was being killed is found by the next


class ScriptError(Exception):
    """A script attempt failed; ``kind`` says how (exit, timeout, output, protocol)."""

    def __init__(self, kind: str, message: str, stderr: str = "") -> None:
        self.kind = kind
        tail = stderr[-STDERR_TAIL:]
        if len(stderr) > STDERR_TAIL:  # start at a word: a cut key is not recognizable
            tail = tail.split(None, 1)[-1] if " " in tail or "\n" in tail else ""
        self.stderr_tail = tail
        detail = f"; stderr: {self.stderr_tail.strip()}" if self.stderr_tail.strip() else ""
        self.message = message  # without the stderr tail
        super().__init__(f"{message}{detail}")

    def __reduce__(self) -> tuple[type[ScriptError], tuple[str, str, str]]:
        # Pickled whole (a script run on a Ray worker fails with it in the driver).
        return ScriptError, (self.kind, self.message, self.stderr_tail)


@dataclass(frozen=True)
class ScriptOutcome:
    """A script's parsed answer."""

    answer: dict[str, Any]
    stderr: str


@dataclass
class _Output:
    """What the script wrote, up to ``limit`` bytes a stream; ``overflow`` says if it wrote more."""

    limit: int
    out: bytearray = field(default_factory=bytearray)
    err: bytearray = field(default_factory=bytearray)
    overflow: list[str] = field(default_factory=list)


class _Fds:
    """File descriptors we own, each closed exactly once."""

    def __init__(self) -> None:
        self._open: set[int] = set()

    def pipe(self) -> tuple[int, int]:
        read, write = os.pipe()  # not inheritable: only the dup'ed 0, 1, 2 reach the script
        self._open.update((read, write))
        return read, write

    def close(self, *fds: int) -> None:
        for fd in fds:
            if fd in self._open:
                self._open.discard(fd)
                os.close(fd)

    def close_all(self) -> None:
        self.close(*list(self._open))


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
    ran = await run_process(
        argv,
        json.dumps(payload).encode(),
        timeout_s=timeout_s,
        max_output_bytes=max_output_bytes,
        env=env,
        cwd=cwd,
    )
    return ScriptOutcome(_parse(ran.stdout, ran.code, ran.stderr), ran.stderr)


@dataclass(frozen=True)
class ProcessOutcome:
    """How a process ended: its exit status, what it wrote on stdout, the tail of stderr."""

    code: int
    stdout: bytes
    stderr: str


async def run_process(
    argv: Sequence[str],
    stdin: bytes,
    *,
    timeout_s: float,
    max_output_bytes: int,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> ProcessOutcome:
    """Run ``argv`` under the rules above, ``stdin`` as its input; how it ended.

    The environment is ``BASE_ENV`` from ours plus ``env``, nothing else. Whatever the
    process started is killed when it ends.

    Raises:
        ScriptError: It timed out (``timeout``) or printed too much (``output``).
    """
    cookie = uuid.uuid4().hex
    child_env = {k: os.environ[k] for k in BASE_ENV if k in os.environ}
    child_env.update(env or {})
    outer = os.environ.get(RUN_COOKIE)
    child_env[RUN_COOKIE] = f"{outer} {cookie}" if outer else cookie
    fds = _Fds()
    output = _Output(max_output_bytes)
    try:
        (feeding, feed), (drain_out, stdout), (drain_err, stderr) = (
            fds.pipe(),
            fds.pipe(),
            fds.pipe(),
        )
        process = await anyio.open_process(
            list(argv),
            stdin=feeding,
            stdout=stdout,
            stderr=stderr,
            env=child_env,
            cwd=cwd,
            start_new_session=True,
        )
    except BaseException:
        fds.close_all()
        raise
    fds.close(feeding, stdout, stderr)  # the process's ends: end of file comes when it lets go
    for fd in (feed, drain_out, drain_err):
        os.set_blocking(fd, False)
    try:
        with anyio.fail_after(timeout_s):
            code = await _communicate(process, fds, (feed, drain_out, drain_err), stdin, output)
    except TimeoutError:
        message = f"{Path(argv[0]).name} timed out after {timeout_s} s"
        raise ScriptError("timeout", message, _text(output.err)) from None
    finally:
        with anyio.CancelScope(shield=True):
            await _kill_tree(process.pid, cookie)
            await process.aclose()
            fds.close_all()
    if output.overflow:
        raise ScriptError("output", output.overflow[0], _text(output.err))
    return ProcessOutcome(code, bytes(output.out), _text(output.err))


async def _communicate(
    process: anyio.abc.Process,
    fds: _Fds,
    ends: tuple[int, int, int],
    data: bytes,
    output: _Output,
) -> int:
    """Feed stdin and read stdout and stderr until the script exits; its exit status."""
    feed, drain_out, drain_err = ends
    drained = anyio.Event()

    async def drain_both() -> None:
        async with anyio.create_task_group() as readers:
            readers.start_soon(_drain, process.pid, drain_out, output.out, "stdout", output)
            readers.start_soon(_drain, process.pid, drain_err, output.err, "stderr", output)
        drained.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(_feed, fds, feed, data)
        tg.start_soon(drain_both)
        code = await process.wait()
        with anyio.move_on_after(EXIT_GRACE_S):  # a child of the script may hold the pipes
            await drained.wait()
        tg.cancel_scope.cancel()
    return code


def _parse(out: bytes, code: int, stderr: str) -> dict[str, Any]:
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


async def _feed(fds: _Fds, fd: int, data: bytes) -> None:
    rest = memoryview(data)
    try:
        while rest:
            await anyio.wait_writable(fd)
            try:
                rest = rest[os.write(fd, rest) :]
            except BlockingIOError:
                continue
    except BrokenPipeError:
        pass  # the script did not read its input; its exit status will tell
    finally:
        fds.close(fd)  # end of input


async def _drain(pgid: int, fd: int, sink: bytearray, name: str, output: _Output) -> None:
    while True:
        await anyio.wait_readable(fd)
        try:
            chunk = os.read(fd, _CHUNK)
        except BlockingIOError:
            continue
        if not chunk:
            return
        sink.extend(chunk[: output.limit + 1 - len(sink)])
        if len(sink) > output.limit:
            output.overflow.append(f"script wrote more than {output.limit} bytes on {name}")
            _kill_group(pgid)  # the script exits, and reading stops
            return


async def _kill_tree(pgid: int, cookie: str) -> None:
    """Kill the script's process group, then (on Linux) every process carrying its cookie."""
    _kill_group(pgid)
    if sys.platform == "linux":
        await anyio.to_thread.run_sync(_kill_marked, cookie.encode())


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # already gone


def _kill_marked(cookie: bytes) -> None:
    """SIGKILL every process whose environment holds ``cookie``."""
    for _ in range(_SCAN_ROUNDS):  # until a scan finds none: each kill may race a fork
        marked = [pid for pid in _pids() if _carries(pid, cookie)]
        for pid in marked:
            _kill_if_carrying(pid, cookie)
        if not marked:
            return


def _pids() -> list[int]:
    try:
        names = os.listdir("/proc")
    except OSError:  # no /proc mounted: the process group is all there is
        return []
    me = os.getpid()
    return [int(name) for name in names if name.isdigit() and int(name) != me]


def _carries(pid: int, cookie: bytes) -> bool:
    # A zombie's environment cannot be read (ESRCH): a killed process is not found twice.
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            return cookie in environ.read()
    except OSError:  # another user's process (PermissionError), a zombie, or gone since
        return False


def _kill_if_carrying(pid: int, cookie: bytes) -> None:
    """SIGKILL ``pid`` if it still carries ``cookie``, through a pidfd that pins it."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:  # a kernel without pidfds: the pid could be reused in between, barely
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return
    try:
        if _carries(pid, cookie):  # the same process: the pidfd keeps its pid from reuse
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)


def _text(data: bytearray) -> str:
    return data[-STDERR_TAIL * 4 :].decode("utf-8", "replace")
