"""Reading the ledger back: runs, their tasks and attempts, as plain dicts.

The CLI prints these as tables or JSON; anything else can read the same tables with
``sqlite3 "$(orchestra db)"``.

A run recorded as ``running`` whose process is gone (it was killed, or its machine
restarted) is shown ``interrupted``, and so are the tasks it left running; nothing is
written (``orchestra resume`` records them as crashed when it takes the run over). Only a
process of this machine can be checked (``process_alive``): a run recorded on another host
stays ``running``. The ledger does not record when a process started, so a dead run's
process number taken since by another process keeps it ``running``.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import case, func, inspect, text
from sqlalchemy import select as sa_select
from sqlmodel import col, select

from llm_abstractions.errors import ConfigurationError
from orchestration.ledger.schema import (
    AttemptRow,
    BreakerRow,
    RunRow,
    RunTaskRow,
    TaskRunRow,
    ToolCallRow,
)
from orchestration.ledger.store import Ledger

__all__ = [
    "INTERRUPTED",
    "agents_with_keys",
    "attempt_answer",
    "fmt_cost",
    "fmt_seconds",
    "fmt_tokens",
    "list_runs",
    "process_alive",
    "refusals",
    "resolve_run",
    "run_attempts",
    "run_status",
    "run_tasks",
    "shown_status",
    "task_outputs",
    "tool_call_counts",
]

INTERRUPTED = "interrupted"


def open_circuits(ledger: Ledger) -> dict[str, float]:
    """Providers whose circuit some process last recorded open: when it opened (epoch s)."""
    with ledger.session() as session:
        rows = session.exec(select(BreakerRow).where(BreakerRow.state == "open")).all()
    return {
        row.provider: row.opened_at.replace(tzinfo=UTC).timestamp()
        for row in rows
        if row.opened_at is not None
    }


def process_alive(pid: int | None, host: str | None) -> bool | None:
    """Whether process ``pid`` of ``host`` is alive; None when it cannot be told from here.

    Only a process of this machine can be checked; a process of someone else's by that
    number counts as alive.
    """
    if pid is None or pid <= 0 or host != socket.gethostname() or os.name == "nt":
        return None  # (on Windows, os.kill(pid, 0) would not probe: it would stop the process)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def shown_status(status: str, pid: int | None, host: str | None) -> str:
    """A run's status as recorded, or ``interrupted`` when it is running and its process died."""
    if status == "running" and process_alive(pid, host) is False:
        return INTERRUPTED
    return status


def list_runs(
    ledger: Ledger,
    limit: int = 20,
    *,
    status: str | None = None,
    name: str | None = None,
    since: datetime | None = None,
) -> list[dict[str, Any]]:
    """The latest runs, newest first, with their token and cost totals.

    Only those with ``status`` (as shown: ``interrupted`` is a ``running`` run whose
    process is gone), whose name contains ``name``, started at ``since`` or later.
    """
    totals = (
        sa_select(
            col(TaskRunRow.run_id),
            func.sum(col(TaskRunRow.input_tokens)).label("input_tokens"),
            func.sum(col(TaskRunRow.output_tokens)).label("output_tokens"),
            func.sum(col(TaskRunRow.cost_usd)).label("cost_usd"),
            func.count(col(TaskRunRow.cost_usd)).label("priced"),
            func.sum(case((col(TaskRunRow.status) == "succeeded", 1), else_=0)).label("succeeded"),
        )
        .group_by(col(TaskRunRow.run_id))
        .subquery()
    )
    query = (
        sa_select(
            RunRow,
            totals.c.input_tokens,
            totals.c.output_tokens,
            totals.c.cost_usd,
            totals.c.priced,
            totals.c.succeeded,
        )
        .join(totals, col(RunRow.id) == totals.c.run_id, isouter=True)
        .order_by(col(RunRow.started_at).desc())
    )
    if status is not None:  # an interrupted run is recorded running
        query = query.where(col(RunRow.status) == ("running" if status == INTERRUPTED else status))
    if name is not None:
        query = query.where(col(RunRow.name).contains(name, autoescape=True))
    if since is not None:
        query = query.where(col(RunRow.started_at) >= since.astimezone(UTC))
    if status not in ("running", INTERRUPTED):  # else shown statuses are filtered below
        query = query.limit(limit)
    out = []
    with ledger.session() as session:
        for run, tokens_in, tokens_out, cost_sum, priced, succeeded in session.execute(query):
            duration = (
                (run.finished_at - run.started_at).total_seconds() if run.finished_at else None
            )
            # A run's cost is known only when every task that ran has a known price.
            cost = cost_sum if priced == succeeded else None
            out.append(
                {
                    "id": run.id,
                    "name": run.name,
                    "status": shown_status(run.status, run.pid, run.host),
                    "tasks": run.task_count,
                    "input_tokens": tokens_in,
                    "output_tokens": tokens_out,
                    "cost_usd": cost,
                    "started_at": run.started_at.isoformat(),
                    "duration_s": duration,
                }
            )
    if status in ("running", INTERRUPTED):
        out = [run for run in out if run["status"] == status]
    return out[:limit]


def resolve_run(ledger: Ledger, ref: str) -> str:
    """The full id of the run whose id is ``ref`` or starts with it.

    Raises:
        ConfigurationError: No run, or several, match.
    """
    with ledger.session() as session:
        ids = session.exec(
            select(RunRow.id).where(col(RunRow.id).startswith(ref, autoescape=True)).limit(3)
        ).all()
    if len(ids) == 1:
        return ids[0]
    if not ids:
        raise ConfigurationError(
            f"No run {ref!r} in {ledger.shown_url}; `orchestra runs` lists them."
        )
    raise ConfigurationError(f"{ref!r} matches several runs ({', '.join(ids)}...); give more.")


def run_status(ledger: Ledger, run_id: str) -> str:
    """A run's status as ``orchestra runs`` shows it (``interrupted``: its process died)."""
    with ledger.session() as session:
        run = session.exec(select(RunRow).where(col(RunRow.id) == run_id)).one()
        return shown_status(run.status, run.pid, run.host)


def run_tasks(ledger: Ledger, run_id: str) -> list[dict[str, Any]]:
    """Every task of a run with its latest state (``interrupted``: left by a dead process)."""
    interrupted = run_status(ledger, run_id) == INTERRUPTED
    with ledger.session() as session:
        query = select(TaskRunRow).where(col(TaskRunRow.run_id) == run_id)
        found = session.exec(query.order_by(col(TaskRunRow.started_at))).all()
        tasks = [row.model_dump(mode="json") for row in found]
    for task in tasks:
        if interrupted and task["status"] == "running":
            task["status"] = INTERRUPTED
    return tasks


def agents_with_keys(ledger: Ledger, run_id: str) -> list[str]:
    """The run's agents that were given an explicit ``api_key`` (which is never stored).

    Read from ``run_agents.api_key_given`` (a flag, never the key); a ledger without that
    column has not recorded it, and nothing is found.
    """
    with ledger.session() as session:
        columns = inspect(session.connection()).get_columns("run_agents")
        if "api_key_given" not in {column["name"] for column in columns}:
            return []
        query = "SELECT name FROM run_agents WHERE run_id = :id AND api_key_given ORDER BY name"
        return list(session.execute(text(query), {"id": run_id}).scalars())


def run_attempts(ledger: Ledger, run_id: str, task_id: str | None = None) -> list[dict[str, Any]]:
    """Every attempt of a run (or of one of its tasks), in order."""
    query = select(AttemptRow).where(col(AttemptRow.run_id) == run_id)
    if task_id is not None:
        query = query.where(col(AttemptRow.task_id) == task_id)
    with ledger.session() as session:
        found = session.exec(query.order_by(col(AttemptRow.id))).all()
        return [row.model_dump(mode="json") for row in found]


def task_outputs(ledger: Ledger, run_id: str, task_id: str | None = None) -> list[dict[str, Any]]:
    """Each task's final answer (or only ``task_id``'s), in the order the run defined them.

    Raises:
        ConfigurationError: The run has no task ``task_id``.
    """
    query = (
        sa_select(
            col(RunTaskRow.task_id),
            col(TaskRunRow.status),
            col(TaskRunRow.output),
            col(TaskRunRow.value),
            col(TaskRunRow.error),
            col(TaskRunRow.attempts),
        )
        .join(
            TaskRunRow,
            (col(TaskRunRow.run_id) == col(RunTaskRow.run_id))
            & (col(TaskRunRow.task_id) == col(RunTaskRow.task_id)),
            isouter=True,
        )
        .where(col(RunTaskRow.run_id) == run_id)
        .order_by(col(RunTaskRow.position))
    )
    if task_id is not None:
        query = query.where(col(RunTaskRow.task_id) == task_id)
    with ledger.session() as session:
        found = session.execute(query).all()
        if not found and task_id is not None:
            known = session.execute(
                sa_select(col(RunTaskRow.task_id))
                .where(col(RunTaskRow.run_id) == run_id)
                .order_by(col(RunTaskRow.position))
            ).scalars()
            raise ConfigurationError(
                f"Run {run_id} has no task {task_id!r}; its tasks: {', '.join(known)}."
            )
    names = ("task_id", "status", "output", "value", "error", "attempts")
    return [
        dict(zip(names, (tid, status or "pending", out, value, error, n or 0), strict=True))
        for tid, status, out, value, error, n in found
    ]


def attempt_answer(ledger: Ledger, run_id: str, task_id: str, number: int) -> dict[str, Any]:
    """What one attempt sent and got back, and how it was judged.

    Raises:
        ConfigurationError: The task made no attempt of that number.
    """
    query = select(AttemptRow).where(
        col(AttemptRow.run_id) == run_id,
        col(AttemptRow.task_id) == task_id,
        col(AttemptRow.attempt) == number,
    )
    with ledger.session() as session:
        row = session.exec(query.order_by(col(AttemptRow.id).desc())).first()
        made = session.execute(
            sa_select(func.max(col(AttemptRow.attempt))).where(
                col(AttemptRow.run_id) == run_id, col(AttemptRow.task_id) == task_id
            )
        ).scalar()
    if row is None:
        tried = f"its attempts are 1 to {made}" if made else "it made no attempt"
        raise ConfigurationError(
            f"Task {task_id!r} of run {run_id} has no attempt {number}: {tried}."
        )
    return {
        "task_id": task_id,
        "attempt": number,
        "status": row.status,
        "validation": row.validation,
        "error": row.error_message,
        "finish_reason": row.finish_reason,
        "request": row.request,
        "response": row.response,
    }


def refusals(ledger: Ledger, run_id: str) -> dict[str, int]:
    """How many answers each task's output contract refused."""
    query = (
        sa_select(col(AttemptRow.task_id), func.count())
        .where(col(AttemptRow.run_id) == run_id, col(AttemptRow.validation) == "refused")
        .group_by(col(AttemptRow.task_id))
    )
    with ledger.session() as session:
        return {tid: int(n) for tid, n in session.execute(query).all()}


def tool_call_counts(ledger: Ledger, run_id: str) -> dict[str, tuple[int, int]]:
    """How many tool calls each task's model made, and how many of them failed."""
    failed = func.sum(case((col(ToolCallRow.error).is_not(None), 1), else_=0))
    query = (
        sa_select(col(ToolCallRow.task_id), func.count(), failed)
        .where(col(ToolCallRow.run_id) == run_id)
        .group_by(col(ToolCallRow.task_id))
    )
    with ledger.session() as session:
        return {tid: (int(n), int(bad or 0)) for tid, n, bad in session.execute(query).all()}


def fmt_tokens(tokens_in: int | None, tokens_out: int | None) -> str:
    """``in/out``, ``-`` for an unknown count."""
    return f"{'-' if tokens_in is None else tokens_in}/{'-' if tokens_out is None else tokens_out}"


def fmt_cost(cost: float | None) -> str:
    """Dollars to four places, or ``unknown``."""
    return "unknown" if cost is None else f"${cost:.4f}"


def fmt_seconds(value: float | None) -> str:
    """Seconds to two places, or ``-``."""
    return "-" if value is None else f"{value:.2f}s"
