"""What the executor writes to the ledger, and when.

Results are awaited (committed before any dependent starts, so a crashed run can resume
without paying twice); status changes that nothing depends on are queued without waiting.
Secrets are masked in every recorded message, and the agent's key never enters a row.

Rows are plain dicts written with a few fixed SQL statements (``INSERT ... ON CONFLICT``
works in SQLite and PostgreSQL alike): building SQLModel objects and letting the ORM flush
them cost about 1.5 ms a task, most of the executor's overhead with the ledger on.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
from sqlalchemy import text

from orchestration.accounting import agent_secrets, cost_of, redact
from orchestration.agent_registry import AgentConfig
from orchestration.ledger import Ledger
from orchestration.tasks import AgentTask, TaskResult

__all__ = ["Recorder"]

_INSERT_RUN = text(
    "INSERT INTO runs (id, name, status, task_count, started_at) "
    "VALUES (:id, :name, :status, :task_count, :started_at)"
)
_INSERT_DEFINITION = text(
    "INSERT INTO run_tasks (run_id, task_id, position, definition) "
    "VALUES (:run_id, :task_id, :position, :definition)"
)
_FINISH_RUN = text("UPDATE runs SET status = :status, finished_at = :finished_at WHERE id = :id")
_ATTEMPT_COLUMNS = (
    "run_id, task_id, agent, attempt, execution_method, provider, model, status, error_type, "
    "error_message, input_tokens, output_tokens, cache_read_input_tokens, "
    "cache_creation_input_tokens, reasoning_output_tokens, cost_usd, price_source, latency_s, "
    "started_at, finished_at"
).split(", ")
_INSERT_ATTEMPT = text(
    f"INSERT INTO attempts ({', '.join(_ATTEMPT_COLUMNS)}) "  # noqa: S608 - constant names
    f"VALUES ({', '.join(':' + c for c in _ATTEMPT_COLUMNS)})"
)
_TASK_COLUMNS = (
    "agent, status, output, error, attempts, execution_method, provider, model, input_tokens, "
    "output_tokens, cost_usd, latency_s, started_at, finished_at"
).split(", ")


def _upsert_task(columns: Sequence[str], insert_only: Sequence[str] = ()) -> Any:
    """``INSERT`` a task_runs row, or update just ``columns`` when it exists."""
    names = ["run_id", "task_id", *columns, *insert_only]
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns)
    return text(
        f"INSERT INTO task_runs ({', '.join(names)}) "  # noqa: S608 - constant column names
        f"VALUES ({', '.join(':' + n for n in names)}) "
        f"ON CONFLICT (run_id, task_id) DO UPDATE SET {updates}"
    )


# Ranks order the operations of one group commit (see ledger.Ledger._commit).
RANK_RUN, RANK_DEFINITION, RANK_STARTED, RANK_ATTEMPT, RANK_TASK, RANK_NOT_RUN, RANK_END = range(7)
_TASK_STARTED = _upsert_task(["agent", "status", "started_at"], insert_only=["attempts"])
_TASK_FINISHED = _upsert_task(_TASK_COLUMNS)
_TASK_NOT_RUN = _upsert_task(["agent", "status", "error", "finished_at"], insert_only=["attempts"])


class Recorder:
    """Writes one executor's runs to a ledger."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def start_run(
        self, run_id: str, name: str | None, tasks: Sequence[AgentTask], started: datetime
    ) -> None:
        """Record the run and its task definitions (before any task runs)."""
        run = {
            "id": run_id,
            "name": name,
            "status": "running",
            "task_count": len(tasks),
            "started_at": _ts(started),
        }
        definitions = [
            {
                "run_id": run_id,
                "task_id": task.task_id,
                "position": position,
                "definition": task.model_dump_json(),
            }
            for position, task in enumerate(tasks)
        ]

        await self.ledger.write(
            [(RANK_RUN, _INSERT_RUN, run), (RANK_DEFINITION, _INSERT_DEFINITION, definitions)]
        )

    def task_started(self, run_id: str, task: AgentTask, agent: AgentConfig) -> None:
        """Mark a task running (queued, not awaited)."""
        row = {
            "run_id": run_id,
            "task_id": task.task_id,
            "agent": agent.name,
            "status": "running",
            "started_at": _ts(datetime.now(UTC)),
            "attempts": 0,
        }
        self.ledger.write_soon([(RANK_STARTED, _TASK_STARTED, row)])

    async def task_finished(
        self, run_id: str, task: AgentTask, agent: AgentConfig, tries: list[TaskResult]
    ) -> list[TaskResult]:
        """Record every attempt and the task's outcome; return the attempts with their cost."""
        finished = datetime.now(UTC)
        secrets = agent_secrets(agent)
        started = finished - timedelta(seconds=sum(t.latency_s or 0.0 for t in tries))
        priced: list[TaskResult] = []
        attempts: list[dict[str, Any]] = []
        attempt_start = started
        for number, attempt in enumerate(tries, start=1):
            attempt_end = attempt_start + timedelta(seconds=attempt.latency_s or 0.0)
            row, attempt = _attempt_row(agent, attempt, secrets)
            row.update(
                run_id=run_id,
                task_id=task.task_id,
                attempt=number,
                started_at=_ts(attempt_start),
                finished_at=_ts(attempt_end),
            )
            attempts.append(row)
            priced.append(attempt)
            attempt_start = attempt_end
        final = priced[-1].model_copy(update={"attempts": len(priced)})
        task_row = _task_row(run_id, task, agent, final, secrets, started, finished)

        await self.ledger.write(
            [(RANK_ATTEMPT, _INSERT_ATTEMPT, attempts), (RANK_TASK, _TASK_FINISHED, task_row)]
        )
        return priced

    def task_ended_without_running(
        self, run_id: str, task_id: str, agent: str, result: TaskResult
    ) -> None:
        """Record a skipped or cancelled task (queued, not awaited)."""
        row = {
            "run_id": run_id,
            "task_id": task_id,
            "agent": agent,
            "status": result.status.value,
            "error": result.error,
            "finished_at": _ts(datetime.now(UTC)),
            "attempts": 0,
        }
        self.ledger.write_soon([(RANK_NOT_RUN, _TASK_NOT_RUN, row)])

    async def finish_run(self, run_id: str, status: str, finished: datetime) -> None:
        """Record how the run ended; runs even when the run was cancelled."""
        row = {"id": run_id, "status": status, "finished_at": _ts(finished)}
        with anyio.CancelScope(shield=True):
            await self.ledger.write([(RANK_END, _FINISH_RUN, row)])


def _attempt_row(
    agent: AgentConfig, attempt: TaskResult, secrets: list[str]
) -> tuple[dict[str, Any], TaskResult]:
    meta = attempt.metadata
    provider = str(meta.get("provider") or agent.agent_type)
    model = str(meta["model"]) if meta.get("model") else None
    cost: float | None = None
    source = "not charged: failed"
    if attempt.succeeded:
        cost, source = cost_of(provider, model, attempt.usage)
    usage = attempt.usage
    row = {
        "agent": agent.name,
        "execution_method": str(meta.get("execution_method")),
        "provider": provider,
        "model": model,
        "status": attempt.status.value,
        "error_type": meta.get("error_type"),
        "error_message": redact(attempt.error, secrets),
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "reasoning_output_tokens": usage.reasoning_tokens,
        "cost_usd": cost,
        "price_source": source,
        "latency_s": attempt.latency_s,
    }
    return row, attempt.model_copy(update={"cost_usd": cost})


def _task_row(
    run_id: str,
    task: AgentTask,
    agent: AgentConfig,
    result: TaskResult,
    secrets: list[str],
    started: datetime,
    finished: datetime,
) -> dict[str, Any]:
    meta = result.metadata
    return {
        "run_id": run_id,
        "task_id": task.task_id,
        "agent": agent.name,
        "status": result.status.value,
        "output": result.output,
        "error": redact(result.error, secrets),
        "attempts": result.attempts,
        "execution_method": meta.get("execution_method"),
        "provider": meta.get("provider"),
        "model": meta.get("model"),
        "input_tokens": result.usage.input_tokens,
        "output_tokens": result.usage.output_tokens,
        "cost_usd": result.cost_usd,
        "latency_s": result.latency_s,
        "started_at": _ts(started),
        "finished_at": _ts(finished),
    }


def _ts(moment: datetime) -> str:
    """UTC, in the text form SQLAlchemy's DateTime reads back.

    Passing datetimes to sqlite3 would use its own adapter, deprecated since Python 3.12.
    """
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
