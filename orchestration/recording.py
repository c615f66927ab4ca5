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
        self, run_id: str, task: AgentTask, agent: AgentConfig, result: TaskResult
    ) -> TaskResult:
        """Record the attempt and the task's result; return the result with its cost."""
        finished = datetime.now(UTC)
        started = finished - timedelta(seconds=result.latency_s or 0.0)
        provider = str(result.metadata.get("provider") or agent.agent_type)
        model = result.metadata.get("model")
        cost, source = (None, "not run")
        if result.succeeded:
            cost, source = cost_of(provider, str(model) if model else None, result.usage)
        result = result.model_copy(update={"cost_usd": cost})
        error = redact(result.error, agent_secrets(agent))
        usage = result.usage
        attempt = AttemptRow(
            run_id=run_id,
            task_id=task.task_id,
            agent=agent.name,
            attempt=result.attempts or 1,
            execution_method=str(result.metadata.get("execution_method")),
            provider=provider,
            model=str(model) if model else None,
            status=result.status.value,
            error_type=result.metadata.get("error_type"),
            error_message=error,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_input_tokens=usage.cache_read_tokens,
            cache_creation_input_tokens=usage.cache_write_tokens,
            reasoning_output_tokens=usage.reasoning_tokens,
            cost_usd=cost,
            price_source=source,
            latency_s=result.latency_s,
            started_at=started,
            finished_at=finished,
        )
        row = _task_row(run_id, task, agent, result, error, started, finished)

        def write(session: Session) -> None:
            session.add(attempt)
            _upsert(session, row)

        await self.ledger.write(write)
        return result

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


def _task_row(
    run_id: str,
    task: AgentTask,
    agent: AgentConfig,
    result: TaskResult,
    error: str | None,
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
        error=error,
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
