"""Ctrl-C (SIGINT) and SIGTERM stop ``orchestra run`` and ``orchestra resume`` cleanly.

The run goes on under ``stoppable``: the first SIGINT or SIGTERM cancels it, and the
executor ends it as it ends any cancelled run (tasks in flight and queued end
``cancelled``, what was paid for is recorded, the run is recorded ``cancelled``). Then
``Stopped`` is raised, and the command says how to resume and exits with 128 plus the
signal's number, as a shell reports a process the signal ended: 130 for SIGINT, 143 for
SIGTERM. A second signal while the run winds down ends the process at once, by the signal's
own default action.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import anyio
from anyio.abc import TaskStatus

__all__ = ["STOP_SIGNALS", "Stopped", "exit_stopped", "stoppable"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
T = TypeVar("T")


class Stopped(Exception):  # noqa: N818 - a signal received, not an error
    """A run was stopped by ``signum``; ``exit_code`` is the status to exit with."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_code(self) -> int:
        """128 plus the signal's number: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


async def stoppable(body: Callable[[], Awaitable[T]]) -> T:
    """Await ``body``; SIGINT or SIGTERM cancels it and raises ``Stopped``.

    Signals are only caught in the main thread (elsewhere, ``body`` runs unguarded).
    """
    if threading.current_thread() is not threading.main_thread() or sys.platform == "win32":
        return await body()
    received: list[int] = []
    done: list[T] = []
    run_scope = anyio.CancelScope()

    async def watch(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
            task_status.started()
            async for signum in signals:
                if received:  # asked twice: stop now, as the signal would have
                    signal.signal(signum, signal.SIG_DFL)
                    os.kill(os.getpid(), signum)
                received.append(signum)
                run_scope.cancel()

    failed: list[Exception] = []
    async with anyio.create_task_group() as group:
        await group.start(watch)
        try:
            with run_scope:
                done.append(await body())
        except Exception as exc:  # raised as itself below, not in a task group's ExceptionGroup
            failed.append(exc)
        group.cancel_scope.cancel()  # the run is over: stop watching
    if failed:
        raise failed[0]
    if done:  # it ended before a signal could stop it
        return done[0]
    raise Stopped(received[0])


def exit_stopped(stop: Stopped, run_id: str, recorded: bool = True) -> NoReturn:
    """Say how to go on with a stopped run (on stderr), and exit with ``stop.exit_code``."""
    import typer

    if recorded:
        typer.echo(f"interrupted; resume with `orchestra resume {run_id}`", err=True)
    else:
        typer.echo("interrupted before the run started; nothing was recorded", err=True)
    raise typer.Exit(stop.exit_code)
