"""The run ledger's tables and its migrations.

Tables, one row each per:
  ``runs``            run (``id`` is the run id the CLI takes)
  ``run_tasks``       task definition of a run, as JSON (what a resume needs)
  ``task_runs``       task of a run: its latest status and result
  ``attempts``        try of a task, whatever the method; token columns follow the
                      OpenTelemetry GenAI names (input tokens include cached ones)
  ``tool_calls``      tool call a model made in an attempt's tool loop
  ``run_agents``      agent a run could use, as JSON without its key (what a resume from
                      the command line needs)
  ``response_cache``  answer kept for reuse (opt-in), keyed by a hash of the request
  ``breakers``        circuit breaker state per provider, as last changed by any process
  ``schema_migrations`` migration applied to this database

Migrations are named functions applied in order on open and recorded in
``schema_migrations``; a database is never changed by anything else. Add a migration by
appending a function to ``MIGRATIONS``; never edit one that has shipped.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Connection, inspect, text
from sqlmodel import Field, SQLModel

__all__ = [
    "MIGRATIONS",
    "AttemptRow",
    "BreakerRow",
    "ResponseCacheRow",
    "RunAgentRow",
    "RunRow",
    "RunTaskRow",
    "TaskRunRow",
    "ToolCallRow",
    "migrate",
    "pending",
]


class RunRow(SQLModel, table=True):
    """One run of a DAG (or of a single ``execute``)."""

    __tablename__ = "runs"

    id: str = Field(primary_key=True)
    name: str | None = None
    status: str
    task_count: int
    started_at: datetime
    finished_at: datetime | None = None
    pid: int | None = None  # the process running it, to refuse resuming a live run
    host: str | None = None
    budget_usd: float | None = None  # the run's budget, which a resume keeps to


class RunTaskRow(SQLModel, table=True):
    """A task definition as submitted, so that a run can be resumed."""

    __tablename__ = "run_tasks"

    run_id: str = Field(primary_key=True, foreign_key="runs.id")
    task_id: str = Field(primary_key=True)
    position: int
    definition: str  # AgentTask as JSON
    contract: str | None = None  # its output_type's name and schema, its validators' names


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
    value: str | None = None  # the typed value as JSON, when an output contract made one


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
    wait_s: float | None = None  # waited before this attempt: backoff, Retry-After, rate limit
    fallback_reason: str | None = None  # why this attempt moved on from the one before
    cached_from: int | None = None  # for a cache hit: the attempt the answer came from
    request: str | None = None  # what was sent (messages, system, settings) as JSON, redacted
    response: str | None = None  # the answer's text, redacted
    finish_reason: str | None = None
    validation: str | None = None  # accepted, refused or crashed; NULL: no contract to check
    # JSON: what a coding CLI said of its run (version, turns, session, files it changed,
    # its working directory); NULL for other attempts.
    details: str | None = None


class ToolCallRow(SQLModel, table=True):
    """One tool call a model made during an attempt (arguments and result redacted)."""

    __tablename__ = "tool_calls"

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True, foreign_key="runs.id")
    task_id: str
    attempt: int  # the attempt whose tool loop made it
    turn: int  # the model call (1, 2...) that asked for it
    call_id: str  # the model's id for the call
    tool: str
    arguments: str | None = None  # as the model wrote them
    result: str | None = None  # what the model was given back; NULL when it failed
    error: str | None = None  # what the model was told went wrong
    started_at: datetime
    duration_s: float
    replayed: bool = False  # given back from an earlier run of the task, not run again


class RunAgentRow(SQLModel, table=True):
    """An agent as a run knew it (never its key)."""

    __tablename__ = "run_agents"

    run_id: str = Field(primary_key=True, foreign_key="runs.id")
    name: str = Field(primary_key=True)
    definition: str  # AgentConfig as JSON
    # The agent was given an explicit api_key (never stored): resume cannot rebuild it alone.
    api_key_given: bool | None = None


class ResponseCacheRow(SQLModel, table=True):
    """One answer kept for reuse; the key hashes provider, model and request, never a key."""

    __tablename__ = "response_cache"

    key: str = Field(primary_key=True)
    provider: str
    model: str | None = None
    output: str
    usage: str  # Usage as JSON
    finish_reason: str | None = None
    source_run_id: str
    source_task_id: str
    source_attempt: int
    created_at: datetime


class BreakerRow(SQLModel, table=True):
    """A provider's circuit breaker, as last changed."""

    __tablename__ = "breakers"

    provider: str = Field(primary_key=True)
    state: str  # closed, open, half_open
    consecutive_failures: int
    opened_at: datetime | None = None
    updated_at: datetime
    pid: int | None = None


def _m001_initial_tables(connection: Connection) -> None:
    SQLModel.metadata.create_all(connection)


def _m002_resilience(connection: Connection) -> None:
    """Retries, fallbacks and the cache in ``attempts``; who runs a run; new tables."""
    added = {
        "attempts": (
            ("wait_s", "FLOAT"),
            ("fallback_reason", "VARCHAR"),
            ("cached_from", "INTEGER"),
        ),
        "runs": (("pid", "INTEGER"), ("host", "VARCHAR")),
    }
    schema = inspect(connection)
    for table, columns in added.items():
        present = {column["name"] for column in schema.get_columns(table)}
        for name, kind in columns:
            if name not in present:  # a database created by this version has them already
                connection.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {kind}"))
    SQLModel.metadata.create_all(connection)


def _m003_run_budget(connection: Connection) -> None:
    """The run's budget, for a resume to keep to."""
    if "budget_usd" not in {c["name"] for c in inspect(connection).get_columns("runs")}:
        connection.execute(text("ALTER TABLE runs ADD COLUMN budget_usd FLOAT"))


def _m004_checked_output(connection: Connection) -> None:
    """Output contracts: what each attempt sent and got back, and how it was judged."""
    _add_columns(
        connection,
        {
            "run_tasks": (("contract", "TEXT"),),
            "task_runs": (("value", "TEXT"),),
            "attempts": (
                ("request", "TEXT"),
                ("response", "TEXT"),
                ("finish_reason", "VARCHAR"),
                ("validation", "VARCHAR"),
            ),
        },
    )


def _m005_agent_keys(connection: Connection) -> None:
    _add_columns(connection, {"run_agents": (("api_key_given", "BOOLEAN"),)})


def _m006_tool_calls(connection: Connection) -> None:
    """Tools: a row per call a model made."""
    SQLModel.metadata.tables["tool_calls"].create(connection, checkfirst=True)


def _add_columns(connection: Connection, added: dict[str, tuple[tuple[str, str], ...]]) -> None:
    """Add the columns a table lacks (a database created by this version has them)."""
    schema = inspect(connection)
    for table, columns in added.items():
        present = {column["name"] for column in schema.get_columns(table)}
        for name, kind in columns:
            if name not in present:
                connection.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {kind}"))


def _m007_attempt_details(connection: Connection) -> None:
    """Coding CLIs: what each said of its run."""
    _add_columns(connection, {"attempts": (("details", "TEXT"),)})


MIGRATIONS: list[tuple[str, Callable[[Connection], None]]] = [
    ("001_initial_tables", _m001_initial_tables),
    ("002_resilience", _m002_resilience),
    ("003_run_budget", _m003_run_budget),
    ("004_checked_output", _m004_checked_output),
    ("005_agent_keys", _m005_agent_keys),
    ("006_tool_calls", _m006_tool_calls),
    ("007_attempt_details", _m007_attempt_details),
]


MIGRATION_LOCK = 0x6F72636865737472  # "orchestr": the advisory lock key of migrations


def migrate(connection: Connection) -> list[str]:
    """Apply the migrations this database lacks, in order; return their names.

    Processes opening one new database at once migrate it one at a time: SQLite's
    ``BEGIN IMMEDIATE`` (the writer's transactions) already serializes them; on PostgreSQL a
    transaction-level advisory lock does, since concurrent ``CREATE TABLE IF NOT EXISTS``
    there can fail on a unique index of the catalog.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
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


def pending(connection: Connection) -> list[str] | None:
    """The migrations this database lacks, without changing it (None: it holds no ledger)."""
    if not inspect(connection).has_table("schema_migrations"):
        return None
    done = {row[0] for row in connection.execute(text("SELECT name FROM schema_migrations"))}
    return [name for name, _ in MIGRATIONS if name not in done]
