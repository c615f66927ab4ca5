"""What the executor writes to the ledger, and when.

Results are awaited (committed before any dependent starts, so a crashed run can resume
without paying twice); status changes that nothing depends on are queued without waiting.
Secrets are masked in every recorded message, and the agent's key never enters a row.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import anyio
from sqlmodel import Session

from orchestration.accounting import agent_secrets, cost_of, redact
from orchestration.agent_registry import AgentConfig
from orchestration.ledger import Ledger
from orchestration.ledger_schema import AttemptRow, RunRow, RunTaskRow, TaskRunRow
from orchestration.tasks import AgentTask, TaskResult

__all__ = ["Recorder"]


class Recorder:
    """Writes one executor's runs to a ledger."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def start_run(
        self, run_id: str, name: str | None, tasks: Sequence[AgentTask], started: datetime
    ) -> None:
        """Record the run and its task definitions (before any task runs)."""

        def write(session: Session) -> None:
            session.add(
                RunRow(
                    id=run_id,
                    name=name,
                    status="running",
                    task_count=len(tasks),
                    started_at=started,
                )
            )
            for position, task in enumerate(tasks):
                definition = task.model_dump_json()
                session.add(
                    RunTaskRow(
                        run_id=run_id,
                        task_id=task.task_id,
                        position=position,
                        definition=definition,
                    )
                )

        await self.ledger.write(write)

    def task_started(self, run_id: str, task: AgentTask, agent: AgentConfig) -> None:
        """Mark a task running (queued, not awaited)."""
        row = TaskRunRow(
            run_id=run_id,
            task_id=task.task_id,
            agent=agent.name,
            status="running",
            started_at=datetime.now(UTC),
        )
        self.ledger.write_soon(lambda session: _upsert(session, row))

    async def task_finished(
        self, run_id: str, task: AgentTask, agent: AgentConfig, tries: list[TaskResult]
    ) -> list[TaskResult]:
        """Record every attempt and the task's outcome; return the attempts with their cost."""
        finished = datetime.now(UTC)
        priced: list[TaskResult] = []
        rows: list[AttemptRow] = []
        elapsed = sum(t.latency_s or 0.0 for t in tries)
        started = finished - timedelta(seconds=elapsed)
        attempt_start = started
        for number, attempt in enumerate(tries, start=1):
            attempt_end = attempt_start + timedelta(seconds=attempt.latency_s or 0.0)
            row, attempt = _attempt_row(
                run_id, task, agent, number, attempt, attempt_start, attempt_end
            )
            rows.append(row)
            priced.append(attempt)
            attempt_start = attempt_end
        final = priced[-1].model_copy(update={"attempts": len(priced)})
        task_row = _task_row(run_id, task, agent, final, started, finished)

        def write(session: Session) -> None:
            session.add_all(rows)
            _upsert(session, task_row)

        await self.ledger.write(write)
        return priced

    def task_ended_without_running(
        self, run_id: str, task_id: str, agent: str, result: TaskResult
    ) -> None:
        """Record a skipped or cancelled task (queued, not awaited)."""
        row = TaskRunRow(
            run_id=run_id,
            task_id=task_id,
            agent=agent,
            status=result.status.value,
            error=result.error,
            finished_at=datetime.now(UTC),
        )
        self.ledger.write_soon(lambda session: _upsert(session, row))

    async def finish_run(self, run_id: str, status: str, finished: datetime) -> None:
        """Record how the run ended; runs even when the run was cancelled."""

        def write(session: Session) -> None:
            run = session.get(RunRow, run_id)
            if run is not None:
                run.status = status
                run.finished_at = finished
                session.add(run)

        with anyio.CancelScope(shield=True):
            await self.ledger.write(write)


def _attempt_row(
    run_id: str,
    task: AgentTask,
    agent: AgentConfig,
    number: int,
    attempt: TaskResult,
    started: datetime,
    finished: datetime,
) -> tuple[AttemptRow, TaskResult]:
    meta = attempt.metadata
    provider = str(meta.get("provider") or agent.agent_type)
    model = str(meta["model"]) if meta.get("model") else None
    cost, source = (None, "not charged: failed") if not attempt.succeeded else (None, "")
    if attempt.succeeded:
        cost, source = cost_of(provider, model, attempt.usage)
    usage = attempt.usage
    row = AttemptRow(
        run_id=run_id,
        task_id=task.task_id,
        agent=agent.name,
        attempt=number,
        execution_method=str(meta.get("execution_method")),
        provider=provider,
        model=model,
        status=attempt.status.value,
        error_type=meta.get("error_type"),
        error_message=redact(attempt.error, agent_secrets(agent)),
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_input_tokens=usage.cache_read_tokens,
        cache_creation_input_tokens=usage.cache_write_tokens,
        reasoning_output_tokens=usage.reasoning_tokens,
        cost_usd=cost,
        price_source=source,
        latency_s=attempt.latency_s,
        started_at=started,
        finished_at=finished,
    )
    return row, attempt.model_copy(update={"cost_usd": cost})


def _task_row(
    run_id: str,
    task: AgentTask,
    agent: AgentConfig,
    result: TaskResult,
    started: datetime,
    finished: datetime,
) -> TaskRunRow:
    meta = result.metadata
    return TaskRunRow(
        run_id=run_id,
        task_id=task.task_id,
        agent=agent.name,
        status=result.status.value,
        output=result.output,
        error=redact(result.error, agent_secrets(agent)),
        attempts=result.attempts,
        execution_method=meta.get("execution_method"),
        provider=meta.get("provider"),
        model=meta.get("model"),
        input_tokens=result.usage.input_tokens,
        output_tokens=result.usage.output_tokens,
        cost_usd=result.cost_usd,
        latency_s=result.latency_s,
        started_at=started,
        finished_at=finished,
    )


def _upsert(session: Session, row: TaskRunRow) -> None:
    existing = session.get(TaskRunRow, (row.run_id, row.task_id))
    if existing is None:
        session.add(row)
        return
    for field, value in row.model_dump(exclude_unset=True).items():
        setattr(existing, field, value)
    session.add(existing)
