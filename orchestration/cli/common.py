"""What every ``orchestra`` command does alike: open the ledger, turn user errors into exits."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import typer

if TYPE_CHECKING:
    from orchestration.ledger.store import Ledger

__all__ = ["open_ledger", "resolve"]

T = TypeVar("T")


def resolve(call: Callable[[], T]) -> T:
    """Run ``call``; a configuration error becomes a clear message and exit code 2."""
    from llm_abstractions.errors import ConfigurationError

    try:
        return call()
    except ConfigurationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def open_ledger() -> Ledger:
    """The ledger the commands read; a clear message and exit 1 when there is none yet."""
    from orchestration.ledger.store import Ledger, LedgerError, default_db_url, sqlite_file

    url = default_db_url()
    path = sqlite_file(url)
    if path is not None and not path.exists():
        typer.echo(f"No ledger at {path} yet: run something first.", err=True)
        raise typer.Exit(1)
    try:
        return Ledger(url)
    except LedgerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
