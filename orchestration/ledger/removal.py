"""Forgetting runs: ``orchestra rm RUN`` and ``orchestra prune --before``.

A run goes with everything recorded of it (its task definitions, agents, task results and
attempts) in one transaction. Cached answers it paid for stay: they answer identical
requests of later runs, and point at an attempt that is gone (``cached_from`` then names a
run that no longer exists; the answer itself is whole). A run still being run by a live
process is never removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import delete, func
from sqlalchemy import select as sa_select
from sqlmodel import col

from llm_abstractions.errors import ConfigurationError
from orchestration.ledger.history import process_alive
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

__all__ = ["Removed", "remove_runs", "runs_before"]

# Children first: their foreign keys point at runs.
_CHILDREN = (ToolCallRow, AttemptRow, TaskRunRow, RunTaskRow, RunAgentRow)


@dataclass(frozen=True)
class Removed:
    """What a removal took: runs, and the attempts recorded for them."""

    runs: int
    attempts: int


def remove_runs(ledger: Ledger, run_ids: list[str]) -> Removed:
    """Delete ``run_ids`` and all that was recorded of them, in one transaction.

    Raises:
        ConfigurationError: One of them is still being run by a live process.
    """
    if not run_ids:
        return Removed(0, 0)
    with ledger.engine.begin() as connection:
        running = sa_select(col(RunRow.id), col(RunRow.pid), col(RunRow.host)).where(
            col(RunRow.status) == "running", col(RunRow.id).in_(run_ids)
        )
        for run_id, pid, host in connection.execute(running):
            if process_alive(pid, host) is not False:
                raise ConfigurationError(
                    f"run {run_id} is still running (process {pid} on {host}); stop it first"
                )
        counted = sa_select(func.count()).where(col(AttemptRow.run_id).in_(run_ids))
        attempts = connection.execute(counted).scalar_one()
        for table in _CHILDREN:
            connection.execute(delete(table).where(col(table.run_id).in_(run_ids)))
        gone = connection.execute(delete(RunRow).where(col(RunRow.id).in_(run_ids)))
    return Removed(gone.rowcount, int(attempts))


def runs_before(ledger: Ledger, moment: datetime) -> list[str]:
    """The runs that started before ``moment`` and are not running."""
    query = sa_select(col(RunRow.id)).where(
        col(RunRow.started_at) < moment.astimezone(UTC), col(RunRow.status) != "running"
    )
    with ledger.engine.connect() as connection:
        return list(connection.execute(query).scalars())
