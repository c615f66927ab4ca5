"""A run read back for its report: plain dataclasses, loaded from the ledger once.

``load_report`` reads a run, its tasks and its attempts; the terminal tables, the JSON and
the HTML page (``cli.report``) and the drawings (``cli.report_svg``) only format these, so
all of them show the same numbers. The colours of the task statuses live here too, for the
page and its drawings alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any

from sqlmodel import SQLModel, col, select

from orchestration.ledger.history import INTERRUPTED, resolve_run, shown_status
from orchestration.ledger.schema import AttemptRow, RunRow, RunTaskRow, TaskRunRow, ToolCallRow
from orchestration.ledger.store import Ledger

__all__ = [
    "STATUS_COLORS",
    "UNKNOWN_STATUS",
    "AttemptReport",
    "RunReport",
    "TaskReport",
    "ToolCallReport",
    "load_report",
]

# Status -> (fill, stroke): light fills under dark text, one hue per status.
STATUS_COLORS: dict[str, tuple[str, str]] = {
    "succeeded": ("#c8e6c9", "#2e7d32"),
    "failed": ("#ffcdd2", "#c62828"),
    "skipped": ("#e0e0e0", "#616161"),
    "cancelled": ("#ffe0b2", "#e65100"),
    "running": ("#bbdefb", "#1565c0"),
    "pending": ("#e1bee7", "#6a1b9a"),
    "crashed": ("#f8bbd0", "#ad1457"),
    "interrupted": ("#f8bbd0", "#ad1457"),  # running, by a process that died: crashed
    "budget_exceeded": ("#d7ccc8", "#4e342e"),
}
UNKNOWN_STATUS = ("#ffffff", "#9e9e9e")


@dataclass(frozen=True)
class TaskReport:
    """A task of the run, as defined and as it ended (``pending`` if it never started)."""

    task_id: str
    agent: str
    status: str
    depends_on: tuple[str, ...]
    execution_method: str | None = None
    provider: str | None = None
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None  # None: unknown
    latency_s: float | None = None
    error: str | None = None
    attempts: int = 0
    prompt: str | None = None  # as sent on its last recorded attempt, else as defined
    output: str | None = None


@dataclass(frozen=True)
class AttemptReport:
    """One try of a task; times are in UTC."""

    task_id: str
    attempt: int
    execution_method: str
    provider: str | None
    model: str | None
    status: str
    error_type: str | None
    started_at: datetime
    finished_at: datetime
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    error_message: str | None = None  # for a refused answer, why it was refused
    validation: str | None = None  # accepted, refused or crashed; None: no contract


@dataclass(frozen=True)
class ToolCallReport:
    """One tool call a model made in an attempt's tool loop."""

    task_id: str
    attempt: int
    turn: int
    tool: str
    arguments: str | None
    result: str | None
    error: str | None
    duration_s: float


@dataclass(frozen=True)
class RunReport:
    """A run with its tasks in definition order and its attempts in the order they ended."""

    run_id: str
    name: str | None
    status: str
    started_at: datetime
    finished_at: datetime | None
    tasks: tuple[TaskReport, ...]
    attempts: tuple[AttemptReport, ...]
    tool_calls: tuple[ToolCallReport, ...] = ()

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to finish; None while the run is unfinished."""
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def input_tokens(self) -> int | None:
        """Input tokens of the tasks' final attempts, as ``orchestra runs`` counts them."""
        return _total(task.input_tokens for task in self.tasks)

    @property
    def output_tokens(self) -> int | None:
        """Output tokens of the tasks' final attempts."""
        return _total(task.output_tokens for task in self.tasks)

    @property
    def cost_usd(self) -> float | None:
        """Total cost, or None when any task that succeeded has an unknown price."""
        succeeded = [task for task in self.tasks if task.status == "succeeded"]
        if any(task.cost_usd is None for task in succeeded):
            return None
        return sum(task.cost_usd or 0.0 for task in self.tasks)


def load_report(ledger: Ledger, run_prefix: str) -> RunReport:
    """Read a run, its tasks and its attempts back from the ledger.

    Args:
        ledger: The ledger holding the run.
        run_prefix: The run id or its first characters.

    Raises:
        ConfigurationError: No run, or several, match ``run_prefix``.
    """
    run_id = resolve_run(ledger, run_prefix)
    with ledger.session() as session:
        run = session.exec(select(RunRow).where(col(RunRow.id) == run_id)).one()
        definitions = session.exec(
            select(RunTaskRow)
            .where(col(RunTaskRow.run_id) == run_id)
            .order_by(col(RunTaskRow.position))
        ).all()
        states = session.exec(select(TaskRunRow).where(col(TaskRunRow.run_id) == run_id)).all()
        tried = session.exec(
            select(AttemptRow).where(col(AttemptRow.run_id) == run_id).order_by(col(AttemptRow.id))
        ).all()
        by_id = {state.task_id: state for state in states}
        sent = {row.task_id: row.request for row in tried if row.request is not None}
        tasks = tuple(
            _task(json.loads(d.definition), by_id.pop(d.task_id, None), sent.get(d.task_id))
            for d in definitions
        )
        # A task recorded without a definition (none is expected) still belongs in the report.
        tasks += tuple(
            _task({"task_id": s.task_id}, s, sent.get(s.task_id)) for s in by_id.values()
        )
        attempts = tuple(AttemptReport(**_columns(row, AttemptReport)) for row in tried)
        called = session.exec(
            select(ToolCallRow)
            .where(col(ToolCallRow.run_id) == run_id)
            .order_by(col(ToolCallRow.id))
        ).all()
        tool_calls = tuple(ToolCallReport(**_columns(row, ToolCallReport)) for row in called)
    status = shown_status(run.status, run.pid, run.host)
    if status == INTERRUPTED:
        tasks = tuple(
            replace(task, status=INTERRUPTED) if task.status == "running" else task
            for task in tasks
        )
    return RunReport(
        run_id, run.name, status, run.started_at, run.finished_at, tasks, attempts, tool_calls
    )


def _task(definition: dict[str, Any], state: TaskRunRow | None, request: str | None) -> TaskReport:
    """A task from its definition (an ``AgentTask`` as JSON), ``task_runs`` row and request.

    ``request`` is what its last recorded attempt sent (``LlmRequest`` as JSON), so the
    prompt shown is the one the model read, dependencies' outputs included; a task never
    sent (pending, skipped, a script) shows its prompt as defined.
    """
    depends_on = tuple(definition.get("depends_on") or ())
    prompt = _prompt_text(request) if request else definition.get("description")
    if state is None:
        agent = definition.get("agent") or ""
        return TaskReport(definition["task_id"], agent, "pending", depends_on, prompt=prompt)
    shown = _columns(state, TaskReport, skip=("depends_on", "prompt"))
    return TaskReport(depends_on=depends_on, prompt=prompt, **shown)


def _prompt_text(request: str) -> str:
    """A recorded request's system prompt and messages, as a person reads them."""
    try:
        sent = json.loads(request)
        parts = [("system", sent["system"])] if sent.get("system") else []
        parts += [(message["role"], message["content"]) for message in sent["messages"]]
    except (ValueError, KeyError, TypeError):  # not a request this version wrote: show it all
        return request
    if len(parts) == 1 and parts[0][0] == "user":
        return str(parts[0][1])
    return "\n\n".join(f"[{role}]\n{content}" for role, content in parts)


def _columns(row: SQLModel, report: type[Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The row's values for the fields of ``report``, a dataclass naming them alike."""
    return {f.name: getattr(row, f.name) for f in fields(report) if f.name not in skip}


def _total(values: Iterable[int | None]) -> int | None:
    """The sum, or None when no value is known (as SQL's SUM)."""
    known = [value for value in values if value is not None]
    return sum(known) if known else None
