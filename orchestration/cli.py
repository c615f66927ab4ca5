"""The ``orchestra`` command line.

Heavy modules (SDKs, the ledger's ORM) are imported inside commands, never at module level,
so ``orchestra --help`` answers at once.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

app = typer.Typer(
    name="orchestra",
    help="Run teams of LLM agents and inspect what they did.",
    no_args_is_help=True,
    add_completion=False,
)


def _version_callback(value: bool) -> None:
    if value:
        try:
            typer.echo(version("orchestra"))
        except PackageNotFoundError:
            typer.echo("unknown (not installed)")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Run teams of LLM agents and inspect what they did."""


@app.command()
def providers(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show each provider: installed, credentials present, reachable, default model."""
    from rich.console import Console
    from rich.table import Table

    from llm_abstractions import ConfigurationError, LlmFactory

    statuses = LlmFactory.available()
    if as_json:
        typer.echo(json.dumps([asdict(s) for s in statuses], indent=2))
        return
    table = Table(title="Providers")
    table.add_column("provider", no_wrap=True)
    for column in ("ready", "installed", "key", "reachable", "default model", "note"):
        table.add_column(column)
    for s in statuses:
        table.add_row(
            s.name,
            _mark(s.ok),
            _mark(s.installed),
            _mark(s.credentials),
            _mark(s.reachable),
            s.default_model or "",
            s.reason,
        )
    Console().print(table)
    try:
        choice = LlmFactory.resolve_default()
    except ConfigurationError as exc:
        typer.echo(f"default provider: none ({exc})", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"default provider: {choice.name} ({choice.reason})")


def _mark(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def main() -> None:
    """Entry point of the ``orchestra`` script."""
    app()
