"""What the listing commands print: a table for a person, plain rows for a pipe, or JSON.

``--format table`` draws a table that wraps what does not fit (an error, its advice
included, is never cut) and shows run ids by their first 12 characters, which every command
accepts as a prefix. ``--format plain`` prints a header and one line per row, fields
separated by tabs, every value whole (full run ids, full errors on one line): what ``grep``,
``cut`` and ``awk`` expect. ``--format json`` prints the records. Without ``--format``, a
terminal gets the table and a pipe or a file gets plain rows; ``--json`` is
``--format json``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Any

import typer

__all__ = [
    "PREVIEW",
    "SHORT_ID",
    "Format",
    "FormatOption",
    "JsonOption",
    "chosen",
    "emit",
    "one_line",
    "preview",
]

SHORT_ID = 12  # characters of a run id a table shows
PREVIEW = 40  # characters of an answer a listing shows


class Format(StrEnum):
    """How a listing is printed."""

    TABLE = "table"
    PLAIN = "plain"
    JSON = "json"


FormatOption = Annotated[
    Format | None,
    typer.Option(
        "--format",
        help="table, plain (tab-separated, whole values) or json; default: a table in a "
        "terminal, plain rows in a pipe.",
        case_sensitive=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (--format json).")]


def chosen(form: Format | None, as_json: bool) -> Format:
    """The format asked for, else JSON for ``--json``, else by where stdout goes."""
    if as_json:
        return Format.JSON
    if form is not None:
        return form
    return Format.TABLE if sys.stdout.isatty() else Format.PLAIN


def one_line(text: str | None) -> str:
    """A value on one line: its lines joined by spaces, tabs made spaces. Never cut."""
    lines = (line.strip() for line in (text or "").replace("\t", " ").splitlines())
    return " ".join(line for line in lines if line)


def preview(text: str | None) -> str:
    """The start of an answer, on one line: ``PREVIEW`` characters, then an ellipsis."""
    flat = one_line(text)
    return flat if len(flat) <= PREVIEW else flat[: PREVIEW - 1] + "…"


def emit(
    form: Format,
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    records: Any,
    id_columns: Sequence[int] = (),
) -> None:
    """Print ``rows`` under ``columns`` as ``form`` says (``records`` for JSON).

    ``id_columns`` hold run ids: a table shortens them to ``SHORT_ID`` characters.
    """
    if form is Format.JSON:
        typer.echo(json.dumps(records, indent=2))
    elif form is Format.PLAIN:
        typer.echo("\t".join(columns))
        for row in rows:
            typer.echo("\t".join(one_line(value) for value in row))
    else:
        _table(title, columns, rows, id_columns)


def _table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], id_columns: Sequence[int]
) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for index, column in enumerate(columns):
        # Folded, never cut with an ellipsis: a narrow terminal gets taller rows.
        table.add_column(column, overflow="fold", no_wrap=index in id_columns)
    for row in rows:
        table.add_row(
            *(value[:SHORT_ID] if index in id_columns else value for index, value in enumerate(row))
        )
    Console().print(table)
