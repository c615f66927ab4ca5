"""What every ``orchestra`` command does alike: open the ledger, turn user errors into exits.

Exit statuses: 1 when there is no ledger yet (read commands but ``runs``, which lists no
runs); 2 for a user error, and for a
ledger that cannot be opened or written, said in one line (``orchestra: cannot open the
run ledger at URL: what is wrong; what to do``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal, NoReturn, TypeVar, overload

import typer

if TYPE_CHECKING:
    from orchestration.ledger.store import Ledger

__all__ = [
    "exit_if_no_ledger",
    "fail",
    "no_ledger_yet",
    "open_ledger",
    "open_ledger_for_writing",
    "resolve",
    "since_time",
]

T = TypeVar("T")


def resolve(call: Callable[[], T]) -> T:
    """Run ``call``; a configuration or ledger error becomes one line and exit code 2."""
    from llm_abstractions.errors import ConfigurationError
    from orchestration.model.errors import LedgerError

    try:
        return call()
    except ConfigurationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except LedgerError as exc:
        fail(exc)


def fail(error: Exception) -> NoReturn:
    """Print ``error`` on one line of stderr and exit 2."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    typer.echo(f"orchestra: {lines[0] if lines else type(error).__name__}", err=True)
    raise typer.Exit(2)


@overload
def open_ledger() -> Ledger: ...


@overload
def open_ledger(missing_ok: Literal[True]) -> Ledger | None: ...


def open_ledger(missing_ok: bool = False) -> Ledger | None:
    """The ledger the read commands read, opened read-only (nothing is written to it).

    Exits 1 when there is none yet (nothing has run there; None with ``missing_ok``), 2
    when it cannot be opened. A ledger whose schema is older than this version's is brought
    up to date once, as a run would, when it can be written; when it cannot, the message
    says to run a write command.
    """
    from orchestration.ledger.store import Ledger, LedgerError, LedgerOutdatedError, default_db_url

    url = default_db_url()
    if missing_ok and no_ledger_yet(url):
        return None
    exit_if_no_ledger(url)
    try:
        return Ledger(url, read_only=True)
    except LedgerOutdatedError as outdated:
        try:
            Ledger(url).close()  # migrates it
        except LedgerError:
            fail(outdated)
    except LedgerError as exc:
        fail(exc)
    return resolve(lambda: Ledger(url, read_only=True))


def open_ledger_for_writing(create: bool = True) -> Ledger:
    """The ledger a run records into (brought up to date); exits 2 when it cannot be opened.

    Without ``create``, exits 1 when there is no ledger yet instead of making one.
    """
    from orchestration.ledger.store import Ledger, default_db_url

    url = default_db_url()
    if not create:
        exit_if_no_ledger(url)
    return resolve(lambda: Ledger(url))


def no_ledger_yet(url: str) -> bool:
    """Whether the SQLite file of ``url`` is missing, but a run could create it."""
    from orchestration.ledger.store import location_problem, sqlite_file

    path = sqlite_file(url)
    return path is not None and not path.exists() and location_problem(path, create=False) is None


def exit_if_no_ledger(url: str) -> None:
    """Exit 1 when the SQLite file of ``url`` is missing but a run could create it."""
    from orchestration.ledger.store import sqlite_file

    if no_ledger_yet(url):
        typer.echo(f"No ledger at {sqlite_file(url)} yet: run something first.", err=True)
        raise typer.Exit(1)


_AGO = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def since_time(text: str) -> datetime:
    """A moment from ``--since``: an ISO date or time (local unless it says), or ``2h`` ago.

    Raises:
        ConfigurationError: Neither.
    """
    from llm_abstractions.errors import ConfigurationError

    ago = _AGO.fullmatch(text.strip())
    if ago is not None:
        seconds = int(ago.group(1)) * _UNITS[ago.group(2)]
        return datetime.now(UTC) - timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigurationError(
            f"--since {text!r} is neither a date or time (2026-12-01, 2026-12-01T09:30) nor "
            "a time ago (30m, 2h, 3d, 1w)"
        ) from None
    return moment if moment.tzinfo is not None else moment.astimezone()
