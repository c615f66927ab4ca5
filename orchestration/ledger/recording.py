"""What the executor writes to the ledger, and when.

Results are awaited (committed before any dependent starts, so a crashed run can resume
without paying twice); status changes that nothing depends on are queued without waiting.
Secrets are masked in every recorded message, and the agent's key never enters a row.

Rows are tuples written with a few fixed SQL statements (``INSERT ... ON CONFLICT`` works
in SQLite and PostgreSQL alike): building SQLModel objects and letting the ORM flush them
cost about 1.5 ms a task, most of the executor's overhead with the ledger on.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import anyio

from orchestration.ledger.accounting import agent_secrets, redact
from orchestration.ledger.cache import ResponseCache
from orchestration.ledger.store import Commit, Ledger, Row, Statement, Write
from orchestration.model.agent_registry import AgentConfig
from orchestration.model.contracts import OutputContract
from orchestration.model.tasks import AgentTask, TaskResult
from orchestration.model.text import storable
from orchestration.model.tools import McpServer, ToolCallRecord

if TYPE_CHECKING:
    from llm_abstractions.types import LlmRequest

__all__ = ["Recorder"]

_HOST = socket.gethostname()


def _insert(table: str, columns: str, *, key: str = "", update: str = "") -> Statement:
    """``INSERT`` into ``table``; with ``key``, update just the ``update`` columns on conflict."""
    after_values = ""
    if key:
        sets = ", ".join(f"{c} = excluded.{c}" for c in update.split())
        after_values = f" ON CONFLICT ({key}) DO UPDATE SET {sets}"
    return Statement.insert(table, columns.split(), after_values)


_INSERT_RUN = _insert("runs", "id name status task_count started_at pid host budget_usd")
_INSERT_DEFINITION = _insert("run_tasks", "run_id task_id position definition contract")
_INSERT_AGENT = _insert("run_agents", "run_id name definition api_key_given")
_EXTEND_RUN = Statement(
    "UPDATE runs SET task_count = task_count + :added WHERE id = :id", ("added", "id")
)
_RESUME_RUN = Statement(
    "UPDATE runs SET status = 'running', finished_at = NULL WHERE id = :id", ("id",)
)
_CRASHED = Statement(
    "UPDATE task_runs SET status = 'crashed', error = :error WHERE run_id = :run_id "
    "AND task_id = :task_id AND status = 'running'",
    ("error", "run_id", "task_id"),
)
_BREAKER = _insert(
    "breakers",
    "provider state consecutive_failures opened_at updated_at pid",
    key="provider",
    update="state consecutive_failures opened_at updated_at pid",
)
_FINISH_RUN = Statement(
    "UPDATE runs SET status = :status, finished_at = :finished_at WHERE id = :id",
    ("status", "finished_at", "id"),
)
_INSERT_ATTEMPT = _insert(
    "attempts",
    "run_id task_id agent attempt execution_method provider model status error_type "
    "error_message input_tokens output_tokens cache_read_input_tokens "
    "cache_creation_input_tokens reasoning_output_tokens cost_usd price_source latency_s "
    "wait_s fallback_reason cached_from request response finish_reason validation details "
    "started_at finished_at",
)
_INSERT_TOOL_CALL = _insert(
    "tool_calls",
    "run_id task_id attempt turn call_id tool arguments result error started_at duration_s "
    "replayed",
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
    "output_tokens cost_usd latency_s started_at finished_at value"
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
    update="agent status error finished_at attempts",
)

# Ranks order the operations of one group commit (see store.Ledger._commit).
(
    RANK_RUN,
    RANK_DEFINITION,
    RANK_STARTED,
    RANK_ATTEMPT,
    RANK_CACHE,
    RANK_TASK,
    RANK_NOT_RUN,
    RANK_BREAKER,
    RANK_END,
) = range(9)


class Recorder:
    """Writes one executor's runs to a ledger."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._agent_secrets: dict[str, list[str]] = {}
        # Commits of the writes nobody awaits yet; finish_run awaits them, so that a failed
        # one is this run's error, raised by this run.
        self._unawaited: dict[Commit, None] = {}
        self._started: dict[tuple[str, str], float] = {}  # when each task started running
        # Each running task's "running" row while it waits in an open group commit: a task
        # that ends in that same commit needs none (its result's row replaces it).
        self._start_rows: dict[tuple[str, str], tuple[Commit, list[Row]]] = {}
        # Each task's last answer as masked for its attempt row, for its result's row.
        self._masked: dict[tuple[str, str], tuple[str | None, str | None]] = {}

    def _queued(self, write: Write) -> Commit:
        """Queue a write nothing waits for (``finish_run`` awaits it, if not done by then)."""
        commit = self.ledger.write_soon(write)
        if commit not in self._unawaited:
            self._unawaited[commit] = None
            commit.add_done_callback(self._settled)
        return commit

    def _settled(self, commit: Commit) -> None:
        """A commit nobody awaits is kept only if it failed (``finish_run`` raises it)."""
        if commit.failed() is None:
            self._unawaited.pop(commit, None)

    def _secrets(self, agent: AgentConfig) -> list[str]:
        """The agent's secrets, looked up once per recorder (one run)."""
        secrets = self._agent_secrets.get(agent.name)
        if secrets is None:
            secrets = self._agent_secrets[agent.name] = agent_secrets(agent)
        return secrets

    def _definitions(
        self,
        run_id: str,
        tasks: Sequence[AgentTask],
        first_position: int,
        agents: Sequence[AgentConfig],
    ) -> list[tuple[str, str, int, str | None, str | None]]:
        """``run_tasks`` rows: each task as JSON, masked with every agent's keys."""
        secrets = [secret for agent in agents for secret in self._secrets(agent)]
        return [
            (
                run_id,
                task.task_id,
                first_position + offset,
                redact(task.model_dump_json(), secrets),
                _contract(task),
            )
            for offset, task in enumerate(tasks)
        ]

    async def start_run(
        self,
        run_id: str,
        name: str | None,
        tasks: Sequence[AgentTask],
        started: datetime,
        agents: Sequence[AgentConfig] = (),
        budget_usd: float | None = None,
    ) -> None:
        """Record the run, its task definitions and its agents (before any task runs).

        The definitions are masked with the agents' keys, as attempts are: a key pasted into
        a prompt or piped in as context is never stored.
        """
        run = (run_id, name, "running", len(tasks), _ts(started), os.getpid(), _HOST, budget_usd)
        definitions = self._definitions(run_id, tasks, 0, agents)
        known = [_agent_row(run_id, agent) for agent in agents]
        await self.ledger.write(
            [
                (RANK_RUN, _INSERT_RUN, [run]),
                (RANK_DEFINITION, _INSERT_DEFINITION, definitions),
                (RANK_DEFINITION, _INSERT_AGENT, known),
            ]
        )

    async def extend_run(
        self,
        run_id: str,
        tasks: Sequence[AgentTask],
        first_position: int,
        agents: Sequence[AgentConfig] = (),
    ) -> None:
        """Add tasks (and the agents they bring) to a recorded run, after its own tasks.

        ``resume.claim_run`` has made the run this process's and marked it running.
        """
        definitions = self._definitions(run_id, tasks, first_position, agents)
        known = [_agent_row(run_id, agent) for agent in agents]
        await self.ledger.write(
            [
                (RANK_RUN, _EXTEND_RUN, [(len(tasks), run_id)]),
                (RANK_DEFINITION, _INSERT_DEFINITION, definitions),
                (RANK_DEFINITION, _INSERT_AGENT, known),
            ]
        )

    async def resume_run(
        self, run_id: str, crashed: Sequence[tuple[str, str, int, datetime | None]], now: datetime
    ) -> None:
        """Mark the run running again (``resume.claim_run`` made it this process's).

        Each task left running, given as (task id, agent, attempt number, started), becomes
        ``crashed``, and so does the attempt it was making: that call may have been paid
        for, and the ledger says so.
        """
        error = (
            f"crashed: its process died while this task ran (the call may or may not have "
            f"been made, and paid for); resumed at {_ts(now)}"
        )
        attempts = [
            (run_id, task_id, agent, number, "unknown", None, None, "crashed", "Crashed", error)
            + (None,) * 16
            + (_ts(started or now), _ts(now))
            for task_id, agent, number, started in crashed
        ]
        await self.ledger.write(
            [
                (RANK_RUN, _RESUME_RUN, [(run_id,)]),
                (RANK_ATTEMPT, _INSERT_ATTEMPT, attempts),
                (RANK_TASK, _CRASHED, [(error, run_id, task_id) for task_id, *_ in crashed]),
            ]
        )

    def breaker_changed(
        self, provider: str, state: str, consecutive_failures: int, opened_at: float | None
    ) -> None:
        """Record a provider's breaker state (queued; ``finish_run`` awaits it).

        ``opened_at`` is when its circuit opened, as a ``time.time()`` value (None: closed).
        """
        row = (
            provider,
            state,
            consecutive_failures,
            None if opened_at is None else _epoch_ts(opened_at),
            _epoch_ts(time.time()),
            os.getpid(),
        )
        self._queued([(RANK_BREAKER, _BREAKER, [row])])

    def task_started(self, run_id: str, task_id: str, agent: str) -> None:
        """Mark a task running (queued, not awaited)."""
        now = time.time()
        self._started[(run_id, task_id)] = now
        rows = [(run_id, task_id, agent, "running", _epoch_ts(now), 0)]
        commit = self._queued([(RANK_STARTED, _TASK_STARTED, rows)])
        self._start_rows[(run_id, task_id)] = (commit, rows)

    def attempt_made(
        self,
        run_id: str,
        task_id: str,
        agent: AgentConfig,
        number: int,
        attempt: TaskResult,
        request: LlmRequest | None = None,
    ) -> None:
        """Record one attempt as it ends (queued, not awaited; the task's result waits).

        With it go the request it sent and the answer it got, secrets masked.
        """
        end = time.time()
        start = end - (attempt.latency_s or 0.0)
        secrets = self._secrets(agent)
        row = _attempt_row(run_id, task_id, number, agent, attempt, secrets)
        sent = None
        if request is not None:
            sent = _request_json(request)
        meta = attempt.metadata
        answer = _clean(attempt.output, secrets)
        self._masked[(run_id, task_id)] = (attempt.output, answer)
        row += (
            _clean(sent, secrets),
            answer,
            meta.get("finish_reason"),
            meta.get("validation"),
            _clean(json.dumps(meta["cli"]), secrets) if meta.get("cli") else None,
        )
        write = [(RANK_ATTEMPT, _INSERT_ATTEMPT, [row + (_epoch_ts(start), _epoch_ts(end))])]
        self._queued(write)

    def tool_called(
        self, run_id: str, task_id: str, agent: AgentConfig, attempt: int, call: ToolCallRecord
    ) -> None:
        """Record one tool call as it ends (queued, not awaited), secrets masked.

        Recorded then, not with its attempt: after a crash the ledger shows which tools ran.
        """
        secrets = self._secrets(agent)
        row = (
            run_id,
            task_id,
            attempt,
            call.turn,
            call.call_id,
            call.tool,
            _clean(call.arguments, secrets),
            _clean(call.result, secrets),
            _clean(call.error, secrets),
            _epoch_ts(call.started_at),
            call.duration_s,
            call.replayed,
        )
        write = [(RANK_ATTEMPT, _INSERT_TOOL_CALL, [row])]
        self._queued(write)

    def task_finished(
        self,
        run_id: str,
        task: AgentTask,
        agent: AgentConfig,
        result: TaskResult,
        alone: bool = False,
    ) -> Commit:
        """Record the task's outcome (its attempts are recorded as they end).

        A successful answer marked with a ``cache_key`` is stored in the response cache,
        in the same commit. ``alone``: no other task is in flight, so no other write will
        join this iteration's commit: it is made now (``Ledger.commit_now``).

        Returns:
            The commit that will hold it; the caller must await its ``wait()``.
        """
        finished = time.time()
        key = (run_id, task.task_id)
        started = self._started.pop(key, finished)
        meta = result.metadata
        secrets = self._secrets(agent)
        answer, masked = self._masked.pop(key, (None, None))
        if answer is None or answer is not result.output:  # not its last attempt's answer
            masked = _clean(result.output, secrets)  # a model may echo what it was sent
        task_row = (
            run_id,
            task.task_id,
            agent.name,
            result.status.value,
            masked,
            _clean(result.error, secrets),
            result.attempts,
            meta.get("execution_method"),
            meta.get("provider"),
            str(meta["model"]) if meta.get("model") else None,
            result.usage.input_tokens,
            result.usage.output_tokens,
            result.cost_usd,
            result.latency_s,
            _epoch_ts(started),
            _epoch_ts(finished),
            _clean(_value_json(task, result), secrets),
        )
        write = [(RANK_TASK, _TASK_FINISHED, [task_row])]
        cache_key = meta.get("cache_key")
        if cache_key is not None and result.succeeded and result.output is not None:
            row = _cache_row(cache_key, result, run_id, task.task_id, meta["attempt"], finished)
            write.append((RANK_CACHE, ResponseCache.statement, [row]))
        commit = self.ledger.write_soon(write)
        start = self._start_rows.pop(key, None)
        if start is not None and start[0] is commit:  # not handed to the database yet
            start[1].clear()  # it started and ended in one commit: this row says it all
        if alone:
            self.ledger.commit_now(commit)
        return commit

    def task_ended_without_running(
        self, run_id: str, task_id: str, agent: str, result: TaskResult
    ) -> None:
        """Record a skipped or cancelled task (queued, not awaited)."""
        for kept in (self._started, self._start_rows, self._masked):
            kept.pop((run_id, task_id), None)
        now = _epoch_ts(time.time())
        error = _clean(result.error, ())
        row = (run_id, task_id, agent, result.status.value, error, now, result.attempts)
        self._queued([(RANK_NOT_RUN, _TASK_NOT_RUN, [row])])

    async def finish_run(self, run_id: str, status: str, finished: datetime) -> None:
        """Record how the run ended; runs even when the run was cancelled.

        Raises:
            LedgerError: This run's end, or a write of it nobody awaited, was not stored.
        """
        row = (status, _ts(finished), run_id)
        with anyio.CancelScope(shield=True):
            ended = self.ledger.write_soon([(RANK_END, _FINISH_RUN, [row])])
            for commit in [*self._unawaited, ended]:
                if commit.done():
                    commit.result()
                else:
                    await commit.wait()


def _agent_row(run_id: str, agent: AgentConfig) -> Row:
    """An agent as the run knew it: its settings without the key, and whether it had one.

    ``model_dump_json`` leaves the key out (it is excluded); ``api_key_env``, a name, stays.
    """
    return (run_id, agent.name, agent.model_dump_json(), agent.api_key is not None)


def _request_json(request: LlmRequest) -> str:
    """The request as sent, in JSON (unpaired surrogates in it kept as escapes)."""
    try:
        return request.model_dump_json(exclude={"metadata", "stream"}, exclude_none=True)
    except ValueError:  # text UTF-8 cannot carry, in a prompt made of something upstream
        fields = request.model_dump(mode="json", exclude={"metadata", "stream"}, exclude_none=True)
        return json.dumps(fields)  # ensure_ascii: "\ud800" stays an escape


def _clean(text: str | None, secrets: Sequence[str]) -> str | None:
    """``text`` as it can be stored: secrets masked, text UTF-8 cannot carry replaced.

    Text reaching the ledger from an attempt was made storable already (and the loss
    noted); this covers the rest (a user's prompt, an error of ours quoting it).
    """
    masked = redact(text, secrets)
    return None if masked is None else storable(masked)[0]


def _contract(task: AgentTask) -> str | None:
    """What the ledger keeps of the task's Python objects: its contract, its tools' names.

    The objects themselves cannot be kept; a resume that runs the task again needs them given.
    """
    contract = OutputContract.of(task.output_type, task.validators)
    kept = {} if contract is None else contract.describe()
    if task.tools:
        kept["tools"] = [
            tool.label if isinstance(tool, McpServer) else getattr(tool, "name", repr(tool))
            for tool in task.tools
        ]
    return json.dumps(kept, ensure_ascii=False) if kept else None


def _value_json(task: AgentTask, result: TaskResult) -> str | None:
    """A succeeded task's value as JSON, when its contract made one from the text."""
    if not result.succeeded or result.value is None or result.value is result.output:
        return None
    contract = OutputContract.of(task.output_type, task.validators)
    return None if contract is None else contract.dump_json(result.value)


def _attempt_row(
    run_id: str,
    task_id: str,
    number: int,
    agent: AgentConfig,
    attempt: TaskResult,
    secrets: list[str],
) -> Row:
    """An attempts row but for its start and end, which the caller adds."""
    meta = attempt.metadata
    usage = attempt.usage
    return (
        run_id,
        task_id,
        meta.get("agent", agent.name),
        number,
        str(meta.get("execution_method")),
        str(meta.get("provider") or agent.agent_type),
        str(meta["model"]) if meta.get("model") else None,
        attempt.status.value,
        meta.get("error_type"),
        _clean(attempt.error, secrets),
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_tokens,
        usage.cache_write_tokens,
        usage.reasoning_tokens,
        attempt.cost_usd,
        meta.get("price_source", "not charged: failed"),
        attempt.latency_s,
        meta.get("wait_s"),
        meta.get("fallback_reason"),
        meta.get("cached_from"),
    )


def _cache_row(
    key: str, attempt: TaskResult, run_id: str, task_id: str, number: int, now: float
) -> Row:
    meta = attempt.metadata
    return (
        key,
        meta.get("provider"),
        str(meta["model"]) if meta.get("model") else None,
        attempt.output,
        attempt.usage.model_dump_json(),
        meta.get("finish_reason"),
        run_id,
        task_id,
        number,
        _epoch_ts(now),
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
