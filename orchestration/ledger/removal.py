"""Forgetting runs: ``orchestra rm RUN`` and ``orchestra prune --before``.

A run goes with everything recorded of it (its task definitions, agents, task results and
attempts) in one transaction. Cached answers it paid for stay: they answer identical
requests of later runs, and point at an attempt that is gone (``cached_from`` then names a
run that no longer exists; the answer itself is whole). A run still being run by a live
process is never removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import text

from llm_abstractions.errors import ConfigurationError
from orchestration.ledger.history import process_alive

if TYPE_CHECKING:
    from orchestration.ledger.store import Ledger

__all__ = ["Removed", "remove_runs", "runs_before"]

# Children first: the foreign keys point at runs.
_TABLES = ("attempts", "task_runs", "run_tasks", "run_agents")


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
        params = {f"r{i}": run_id for i, run_id in enumerate(run_ids)}
        listed = ", ".join(f":{name}" for name in params)
        live = connection.execute(
            text(f"SELECT id, pid, host FROM runs WHERE status = 'running' AND id IN ({listed})"),  # noqa: S608 - names only
            params,
        ).all()
        for run_id, pid, host in live:
            if process_alive(pid, host) is not False:
                raise ConfigurationError(
                    f"run {run_id} is still running (process {pid} on {host}); stop it first"
                )
        attempts = connection.execute(
            text(f"SELECT COUNT(*) FROM attempts WHERE run_id IN ({listed})"),  # noqa: S608
            params,
        ).scalar_one()
        for table in _TABLES:
            connection.execute(text(f"DELETE FROM {table} WHERE run_id IN ({listed})"), params)  # noqa: S608
        gone = connection.execute(text(f"DELETE FROM runs WHERE id IN ({listed})"), params)  # noqa: S608
    return Removed(gone.rowcount, int(attempts))


def runs_before(ledger: Ledger, moment: datetime) -> list[str]:
    """The runs that started before ``moment`` and are not running."""
    with ledger.engine.connect() as connection:
        found = connection.execute(
            text("SELECT id FROM runs WHERE started_at < :moment AND status != 'running'"),
            {"moment": _ts(moment)},
        ).scalars()
        return list(found)


def _ts(moment: datetime) -> str:
    """``moment`` as the ledger stores times (UTC, SQLAlchemy's text form)."""
    from datetime import UTC

    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
