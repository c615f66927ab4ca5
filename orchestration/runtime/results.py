"""How a run ended: ``RunResult`` (each task's result) and ``RunStatus``."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from orchestration.model.tasks import TaskResult, TaskStatus

__all__ = ["RunResult", "RunStatus", "run_status"]


class RunStatus(StrEnum):
    """How a run ended."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"  # every task succeeded
    FAILED = "failed"  # some task failed or was skipped
    CANCELLED = "cancelled"


class RunResult(BaseModel):
    """The outcome of one DAG run, task by task."""

    run_id: str
    name: str | None = None
    status: RunStatus = RunStatus.RUNNING
    results: dict[str, TaskResult] = Field(default_factory=dict)
    started_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None

    @property
    def ok(self) -> bool:
        """Whether every task succeeded."""
        return self.status is RunStatus.SUCCEEDED


def run_status(run: RunResult, task_count: int) -> RunStatus:
    """The status a run ended with, from its tasks' results (``task_count`` in all)."""
    statuses = [r.status for r in run.results.values()]
    if TaskStatus.CANCELLED in statuses or len(statuses) < task_count:
        return RunStatus.CANCELLED
    if all(s is TaskStatus.SUCCEEDED for s in statuses):
        return RunStatus.SUCCEEDED
    return RunStatus.FAILED
