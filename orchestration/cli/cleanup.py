"""``orchestra rm RUN...`` and ``orchestra prune --before WHEN``: forget recorded runs."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestration.cli.common import open_ledger_for_writing, resolve, since_time

__all__ = ["prune", "rm"]


def rm(
    runs: Annotated[list[str], typer.Argument(help="Run ids, or their first characters.")],
) -> None:
    """Remove runs and everything recorded of them (not a run a live process is running)."""
    from orchestration.ledger.history import resolve_run
    from orchestration.ledger.removal import remove_runs

    ledger = open_ledger_for_writing(create=False)
    try:
        removed = resolve(lambda: remove_runs(ledger, [resolve_run(ledger, r) for r in runs]))
    finally:
        ledger.close()
    typer.echo(f"removed {removed.runs} run(s) and their {removed.attempts} attempt(s)")


def prune(
    before: Annotated[
        str,
        typer.Option(help="Remove runs started before this: 2026-11-01, or 30d (ago)."),
    ],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask first.")] = False,
) -> None:
    """Remove every finished run started before a date (running ones are kept)."""
    from orchestration.ledger.removal import remove_runs, runs_before

    moment = resolve(lambda: since_time(before))
    ledger = open_ledger_for_writing(create=False)
    try:
        found = runs_before(ledger, moment)
        if not found:
            typer.echo(f"no finished run started before {moment:%Y-%m-%d %H:%M}")
            return
        if not yes and not typer.confirm(f"remove {len(found)} run(s)?", err=True):
            raise typer.Exit(1)
        removed = resolve(lambda: remove_runs(ledger, found))
    finally:
        ledger.close()
    typer.echo(f"removed {removed.runs} run(s) and their {removed.attempts} attempt(s)")
