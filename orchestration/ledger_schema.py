"""The run ledger's tables and its migrations.

Tables, one row each per:
  ``runs``            run (``id`` is the run id the CLI takes)
  ``run_tasks``       task definition of a run, as JSON (what a resume needs)
  ``task_runs``       task of a run: its latest status and result
  ``attempts``        try of a task, whatever the method; token columns follow the
                      OpenTelemetry GenAI names (input tokens include cached ones)
  ``schema_migrations`` migration applied to this database

Migrations are named functions applied in order on open and recorded in
``schema_migrations``; a database is never changed by anything else. Add a migration by
appending a function to ``MIGRATIONS``; never edit one that has shipped.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Connection, text
from sqlmodel import Field, SQLModel

__all__ = ["MIGRATIONS", "AttemptRow", "RunRow", "RunTaskRow", "TaskRunRow", "migrate"]


class RunRow(SQLModel, table=True):
    """One run of a DAG (or of a single ``execute``)."""

    __tablename__ = "runs"

    id: str = Field(primary_key=True)
    name: str | None = None
    status: str
    task_count: int
    started_at: datetime
    finished_at: datetime | None = None


class RunTaskRow(SQLModel, table=True):
    """A task definition as submitted, so that a run can be resumed."""

    __tablename__ = "run_tasks"

    run_id: str = Field(primary_key=True, foreign_key="runs.id")
    task_id: str = Field(primary_key=True)
    position: int
    definition: str  # AgentTask as JSON


class TaskRunRow(SQLModel, table=True):
    """The state and result of one task in one run."""

    __tablename__ = "task_runs"

    run_id: str = Field(primary_key=True, foreign_key="runs.id")
    task_id: str = Field(primary_key=True)
    agent: str
    status: str = Field(index=True)
    output: str | None = None
    error: str | None = None
    attempts: int = 0
    execution_method: str | None = None
    provider: str | None = None
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    latency_s: float | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class AttemptRow(SQLModel, table=True):
    """One try of a task."""

    __tablename__ = "attempts"

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True, foreign_key="runs.id")
    task_id: str
    agent: str
    attempt: int
    execution_method: str
    provider: str | None = None
    model: str | None = None
    status: str
    error_type: str | None = None
    error_message: str | None = None  # redacted
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    reasoning_output_tokens: int | None = None
    cost_usd: float | None = None
    price_source: str | None = None
    latency_s: float | None = None
    started_at: datetime
    finished_at: datetime


def _m001_initial_tables(connection: Connection) -> None:
    SQLModel.metadata.create_all(connection)


MIGRATIONS: list[tuple[str, Callable[[Connection], None]]] = [
    ("001_initial_tables", _m001_initial_tables),
]


def migrate(connection: Connection) -> list[str]:
    """Apply the migrations this database lacks, in order; return their names."""
    connection.execute(
        text(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(name TEXT PRIMARY KEY, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
        )
    )
    done = {row[0] for row in connection.execute(text("SELECT name FROM schema_migrations"))}
    applied = []
    for name, step in MIGRATIONS:
        if name in done:
            continue
        step(connection)
        connection.execute(text("INSERT INTO schema_migrations (name) VALUES (:n)"), {"n": name})
        applied.append(name)
    return applied
