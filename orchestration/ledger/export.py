"""A run as JSON records, one per line (``orchestra export RUN``), for other tools to load.

Records come in this order, each with a ``type``: the ``run``; its ``agent``s (as
configured, keys never included); its ``task``s in definition order (the definition, and
how the task ended, ``pending`` for one that never started); its ``attempt``s in the order
they ended, with the request sent and the answer got (secrets were masked when they were
recorded); its ``tool_call``s in the order they ended. Times are ISO 8601 in UTC; JSON the
ledger holds as text (definitions, requests, typed values) is parsed, so a reader needs no
second decoding.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlmodel import SQLModel, col, select

from orchestration.ledger.history import shown_status
from orchestration.ledger.schema import (
    AttemptRow,
    RunAgentRow,
    RunRow,
    RunTaskRow,
    TaskRunRow,
    ToolCallRow,
)

if TYPE_CHECKING:
    from orchestration.ledger.store import Ledger

__all__ = ["run_records"]

# Columns holding JSON as text, parsed in the records.
_JSON_COLUMNS = ("definition", "contract", "value", "request", "arguments")


def run_records(ledger: Ledger, run_id: str) -> Iterator[dict[str, Any]]:
    """The records of run ``run_id`` (which must exist), in the order described above."""
    with ledger.session() as session:
        run = session.exec(select(RunRow).where(col(RunRow.id) == run_id)).one()
        agents = session.exec(
            select(RunAgentRow)
            .where(col(RunAgentRow.run_id) == run_id)
            .order_by(col(RunAgentRow.name))
        ).all()
        definitions = session.exec(
            select(RunTaskRow)
            .where(col(RunTaskRow.run_id) == run_id)
            .order_by(col(RunTaskRow.position))
        ).all()
        states = {
            state.task_id: state
            for state in session.exec(select(TaskRunRow).where(col(TaskRunRow.run_id) == run_id))
        }
        attempts = session.exec(
            select(AttemptRow).where(col(AttemptRow.run_id) == run_id).order_by(col(AttemptRow.id))
        ).all()
        tool_calls = session.exec(
            select(ToolCallRow)
            .where(col(ToolCallRow.run_id) == run_id)
            .order_by(col(ToolCallRow.id))
        ).all()
    shown = _record("run", run) | {"status": shown_status(run.status, run.pid, run.host)}
    yield shown
    for agent in agents:
        yield _record("agent", agent)
    for definition in definitions:
        state = states.pop(definition.task_id, None)
        task = _record("task", definition)
        if state is None:
            yield task | {"status": "pending"}
        else:
            yield task | _fields(state)
    for state in states.values():  # recorded without a definition (none is expected)
        yield _record("task", state)
    for attempt in attempts:
        yield _record("attempt", attempt)
    for call in tool_calls:
        yield _record("tool_call", call)


def _record(kind: str, row: SQLModel) -> dict[str, Any]:
    return {"type": kind, **_fields(row)}


def _fields(row: SQLModel) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name in type(row).model_fields:  # in the table's column order
        value = getattr(row, name)
        if isinstance(value, datetime):  # stored in UTC; SQLite gives it back naive
            value = (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
        elif name in _JSON_COLUMNS and isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:  # not JSON after all: kept as the text it is
                pass
        fields[name] = value
    return fields
