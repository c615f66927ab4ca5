"""A command run on a pseudo-terminal, read as a user's screen gets it.

``isatty()`` is true for the command's stdin, stdout and stderr (one terminal for all
three, as in a shell), so it shows what it shows people: live tables, streamed answers,
colours. ``read_until`` waits for text to appear (the command's output so far is in the
failure message when it does not); ``finish`` reads to the end and returns the exit status.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["Terminal", "screen_text"]

_ESCAPES = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def screen_text(raw: bytes) -> str:
    """The text of terminal output without its escape sequences and carriage returns."""
    return _ESCAPES.sub(b"", raw).decode(errors="replace")


class Terminal:
    """``argv`` running on a pseudo-terminal of ``columns`` x ``rows``."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: Path,
        columns: int = 120,
        rows: int = 40,
    ) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        env = {**env, "TERM": "xterm-256color", "COLUMNS": str(columns), "LINES": str(rows)}
        self.process = subprocess.Popen(
            list(argv),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=cwd,
            start_new_session=True,  # its own session: the terminal is its controlling one
        )
        os.close(slave)
        self.master = master
        self.output = bytearray()
        self.closed = False

    def read_until(self, pattern: str, timeout: float = 60) -> str:
        """Read until the screen text matches ``pattern`` (a regex); return the text so far.

        Raises:
            AssertionError: The command ended, or ``timeout`` passed, first.
        """
        deadline = time.monotonic() + timeout
        while not re.search(pattern, screen_text(bytes(self.output))):
            if self.closed or not self._read(deadline - time.monotonic()):
                raise AssertionError(
                    f"{pattern!r} never appeared; the terminal shows:\n"
                    f"{screen_text(bytes(self.output))[-3000:]}"
                )
        return screen_text(bytes(self.output))

    def finish(self, timeout: float = 60) -> int:
        """Read to the end of the output; the command's exit status (killed after timeout)."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            if not self._read(deadline - time.monotonic()):
                self.kill()
                raise AssertionError(
                    f"still running after {timeout} s:\n{screen_text(bytes(self.output))[-3000:]}"
                )
        return self.process.wait(timeout=max(1.0, deadline - time.monotonic()))

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the command's process group, as a terminal's Ctrl-C does."""
        os.killpg(self.process.pid, signum)

    def kill(self) -> None:
        """Kill the command and everything it started; close the terminal."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        if not self.closed:
            os.close(self.master)
            self.closed = True

    @property
    def text(self) -> str:
        """Everything shown so far, without escape sequences."""
        return screen_text(bytes(self.output))

    def _read(self, timeout: float) -> bool:
        """Read what is there within ``timeout``; False when nothing came in time."""
        if timeout <= 0:
            return False
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: every process holding the terminal has closed it
            chunk = b""
        if not chunk:
            os.close(self.master)
            self.closed = True
        self.output += chunk
        return True
