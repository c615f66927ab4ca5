"""``orchestra export RUN...``: runs as JSON Lines, for other tools to load."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated

import typer

from orchestration.cli.common import open_ledger, resolve

__all__ = ["export"]


class ExportFormat(StrEnum):
    """What ``orchestra export`` writes."""

    JSONL = "jsonl"


def export(
    runs: Annotated[list[str], typer.Argument(help="Run ids, or their first characters.")],
    form: Annotated[
        ExportFormat,
        typer.Option("--format", case_sensitive=False, help="jsonl: one JSON record a line."),
    ] = ExportFormat.JSONL,
) -> None:
    """Print runs as JSON Lines: the run, its agents, tasks and attempts, one record a line.

    Each record has a "type" (run, agent, task, attempt) and the ledger's columns, with
    prompts and answers as recorded (secrets masked). Load it with `jq`, pandas
    (`read_json(lines=True)`) or any warehouse.
    """
    from orchestration.ledger.export import run_records
    from orchestration.ledger.history import resolve_run

    ledger = open_ledger()
    try:
        found = resolve(lambda: [resolve_run(ledger, run) for run in runs])
        for run_id in found:
            for record in run_records(ledger, run_id):
                typer.echo(json.dumps(record, ensure_ascii=False))
    finally:
        ledger.close()
