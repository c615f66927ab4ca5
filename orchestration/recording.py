"""What the executor writes to the ledger, and when.

Results are awaited (committed before any dependent starts, so a crashed run can resume
without paying twice); status changes that nothing depends on are queued without waiting.
Secrets are masked in every recorded message, and the agent's key never enters a row.

Rows are tuples written with a few fixed SQL statements (``INSERT ... ON CONFLICT`` works
in SQLite and PostgreSQL alike): building SQLModel objects and letting the ORM flush them
cost about 1.5 ms a task, most of the executor's overhead with the ledger on.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime

import anyio

from orchestration.accounting import agent_secrets, redact
from orchestration.agent_registry import AgentConfig
from orchestration.ledger import Commit, Ledger, Row, Statement
from orchestration.tasks import AgentTask, TaskResult

__all__ = ["Recorder"]


def _insert(table: str, columns: str, *, key: str = "", update: str = "") -> Statement:
    """``INSERT`` into ``table``; with ``key``, update just the ``update`` columns on conflict."""
    after_values = ""
    if key:
        sets = ", ".join(f"{c} = excluded.{c}" for c in update.split())
        after_values = f" ON CONFLICT ({key}) DO UPDATE SET {sets}"
    return Statement.insert(table, columns.split(), after_values)


_INSERT_RUN = _insert("runs", "id name status task_count started_at")
_INSERT_DEFINITION = _insert("run_tasks", "run_id task_id position definition")
_FINISH_RUN = Statement(
    "UPDATE runs SET status = :status, finished_at = :finished_at WHERE id = :id",
    ("status", "finished_at", "id"),
)
_INSERT_ATTEMPT = _insert(
    "attempts",
    "run_id task_id agent attempt execution_method provider model status error_type "
    "error_message input_tokens output_tokens cache_read_input_tokens "
    "cache_creation_input_tokens reasoning_output_tokens cost_usd price_source latency_s "
    "started_at finished_at",
)
_TASK_KEY = "run_id, task_id"
_TASK_STARTED = _insert(
    "task_runs",
    "run_id task_id agent status started_at attempts",
    key=_TASK_KEY,
    update="agent status started_at",
)
_TASK_FINISHED_COLUMNS = (
    "agent status output error attempts execution_method provider model input_tokens "
    "output_tokens cost_usd latency_s started_at finished_at"
)
_TASK_FINISHED = _insert(
    "task_runs",
    f"run_id task_id {_TASK_FINISHED_COLUMNS}",
    key=_TASK_KEY,
    update=_TASK_FINISHED_COLUMNS,
)
_TASK_NOT_RUN = _insert(
    "task_runs",
    "run_id task_id agent status error finished_at attempts",
    key=_TASK_KEY,
    update="agent status error finished_at",
)

# Ranks order the operations of one group commit (see ledger.Ledger._commit).
RANK_RUN, RANK_DEFINITION, RANK_STARTED, RANK_ATTEMPT, RANK_TASK, RANK_NOT_RUN, RANK_END = range(7)


class Recorder:
    """Writes one executor's runs to a ledger."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._agent_secrets: dict[str, list[str]] = {}
        # Commits of the writes nobody awaits yet; finish_run awaits them, so that a failed
        # one is this run's error, raised by this run.
        self._unawaited: dict[Commit, None] = {}

    def _secrets(self, agent: AgentConfig) -> list[str]:
        """The agent's secrets, looked up once per recorder (one run)."""
        secrets = self._agent_secrets.get(agent.name)
        if secrets is None:
            secrets = self._agent_secrets[agent.name] = agent_secrets(agent)
        return secrets

    async def start_run(
        self, run_id: str, name: str | None, tasks: Sequence[AgentTask], started: datetime
    ) -> None:
        """Record the run and its task definitions (before any task runs)."""
        run = (run_id, name, "running", len(tasks), _ts(started))
        definitions = [
            (run_id, task.task_id, position, task.model_dump_json())
            for position, task in enumerate(tasks)
        ]
        await self.ledger.write(
            [(RANK_RUN, _INSERT_RUN, [run]), (RANK_DEFINITION, _INSERT_DEFINITION, definitions)]
        )

    def task_started(self, run_id: str, task_id: str, agent: str) -> None:
        """Mark a task running (queued, not awaited)."""
        row = (run_id, task_id, agent, "running", _epoch_ts(time.time()), 0)
        self._unawaited[self.ledger.write_soon([(RANK_STARTED, _TASK_STARTED, [row])])] = None

    def task_finished(
        self, run_id: str, task: AgentTask, agent: AgentConfig, tries: Sequence[TaskResult]
    ) -> Commit:
        """Record every attempt and the task's outcome (the last attempt's).

        Returns:
            The commit that will hold them; the caller must await its ``wait()``.
        """
        finished = time.time()
        secrets = self._secrets(agent)
        started = finished - sum(t.latency_s or 0.0 for t in tries)
        attempts: list[Row] = []
        attempt_start = started
        for number, attempt in enumerate(tries, start=1):
            attempt_end = attempt_start + (attempt.latency_s or 0.0)
            attempts.append(
                _attempt_row(run_id, task.task_id, number, agent, attempt, secrets)
                + (_epoch_ts(attempt_start), _epoch_ts(attempt_end))
            )
            attempt_start = attempt_end
        final = tries[-1]
        meta = final.metadata
        task_row = (
            run_id,
            task.task_id,
            agent.name,
            final.status.value,
            final.output,
            redact(final.error, secrets),
            len(tries),
            meta.get("execution_method"),
            meta.get("provider"),
            str(meta["model"]) if meta.get("model") else None,
            final.usage.input_tokens,
            final.usage.output_tokens,
            final.cost_usd,
            final.latency_s,
            _epoch_ts(started),
            _epoch_ts(finished),
        )
        return self.ledger.write_soon(
            [(RANK_ATTEMPT, _INSERT_ATTEMPT, attempts), (RANK_TASK, _TASK_FINISHED, [task_row])]
        )

    def task_ended_without_running(
        self, run_id: str, task_id: str, agent: str, result: TaskResult
    ) -> None:
        """Record a skipped or cancelled task (queued, not awaited)."""
        row = (run_id, task_id, agent, result.status.value, result.error, _epoch_ts(time.time()), 0)
        self._unawaited[self.ledger.write_soon([(RANK_NOT_RUN, _TASK_NOT_RUN, [row])])] = None

    async def finish_run(self, run_id: str, status: str, finished: datetime) -> None:
        """Record how the run ended; runs even when the run was cancelled.

        Raises:
            LedgerError: This run's end, or a write of it nobody awaited, was not stored.
        """
        row = (status, _ts(finished), run_id)
        with anyio.CancelScope(shield=True):
            ended = self.ledger.write_soon([(RANK_END, _FINISH_RUN, [row])])
            for commit in [*self._unawaited, ended]:
                await commit.wait()


def _attempt_row(
    run_id: str,
    task_id: str,
    number: int,
    agent: AgentConfig,
    attempt: TaskResult,
    secrets: list[str],
) -> Row:
    """An attempts row up to ``latency_s``: the caller adds its start and end."""
    meta = attempt.metadata
    usage = attempt.usage
    return (
        run_id,
        task_id,
        agent.name,
        number,
        str(meta.get("execution_method")),
        str(meta.get("provider") or agent.agent_type),
        str(meta["model"]) if meta.get("model") else None,
        attempt.status.value,
        meta.get("error_type"),
        redact(attempt.error, secrets),
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_tokens,
        usage.cache_write_tokens,
        usage.reasoning_tokens,
        attempt.cost_usd,
        meta.get("price_source", "not charged: failed"),
        attempt.latency_s,
    )


def _ts(moment: datetime) -> str:
    """UTC, in the text form SQLAlchemy's DateTime reads back.

    Passing datetimes to sqlite3 would use its own adapter, deprecated since Python 3.12;
    ``isoformat`` is five times faster than ``strftime``.
    """
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


_second: tuple[int, str] = (0, "")


def _epoch_ts(moment: float) -> str:
    """``_ts`` of a ``time.time()`` value; the date and time of day are formatted once a second.

    Five timestamps a task made this a tenth of the recorder's cost.
    """
    global _second  # noqa: PLW0603 - a one-entry cache
    whole = int(moment // 1)
    cached = _second  # read once: another thread may replace it
    if cached[0] != whole:
        cached = _second = (whole, _ts(datetime.fromtimestamp(whole, UTC))[:19])
    return f"{cached[1]}.{min(int((moment - whole) * 1_000_000), 999_999):06d}"
