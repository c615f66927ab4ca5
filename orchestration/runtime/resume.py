"""What a recorded run left behind, for ``TaskExecutor.resume`` and ``orchestra resume``."""

from __future__ import annotations

import json
import os
import socket
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import text

from llm_abstractions.errors import ConfigurationError
from llm_abstractions.types import Usage
from orchestration.ledger.history import process_alive
from orchestration.ledger.store import Ledger
from orchestration.model.agent_registry import AgentConfig, AgentRegistry
from orchestration.model.contracts import OutputContract
from orchestration.model.tasks import AgentTask, TaskResult, TaskStatus
from orchestration.model.tools import replay_key
from orchestration.runtime.results import RunResult, RunStatus
from orchestration.runtime.tool_loop import Replays

__all__ = ["SavedRun", "claim_run", "load_run"]


@dataclass
class SavedRun:
    """A run as the ledger has it."""

    run_id: str
    name: str | None
    status: str
    pid: int | None
    host: str | None
    tasks: list[AgentTask]
    results: dict[str, TaskResult]  # tasks that reached a status, by id
    attempts: dict[str, int]  # attempts recorded, by task id
    agents: list[AgentConfig] = field(default_factory=list)
    # Why recorded agents this version refuses (an older one let a setting through).
    refused_agents: list[str] = field(default_factory=list)
    # Tool calls that returned a result, by task: (tool, arguments, result), in order.
    tool_results: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)
    # Why recorded tasks this version refuses (an older one let a setting through), by id.
    refused_tasks: dict[str, str] = field(default_factory=dict)
    agent_of: dict[str, str] = field(default_factory=dict)  # task id -> agent, as recorded
    started_of: dict[str, datetime | None] = field(default_factory=dict)
    budget_usd: float | None = None
    spent: float = 0.0  # by every attempt of the run so far
    started_at: datetime | None = None
    finished_at: datetime | None = None
    contracts: dict[str, str] = field(default_factory=dict)  # task id -> recorded contract
    values: dict[str, str] = field(default_factory=dict)  # task id -> its value as JSON

    def with_contracts(self, tasks: Sequence[AgentTask]) -> None:
        """Give the recorded tasks the output types, validators and tools of ``tasks`` (by id).

        Raises:
            ConfigurationError: ``tasks`` holds a task the run does not have.
        """
        given = {task.task_id: task for task in tasks}
        unknown = sorted(set(given) - {task.task_id for task in self.tasks})
        if unknown:
            raise ConfigurationError(
                f"Run {self.run_id!r} has no task {', '.join(map(repr, unknown))}: resume it "
                "with the tasks it was started with."
            )
        self.tasks = [
            task.model_copy(
                update={"output_type": g.output_type, "validators": g.validators, "tools": g.tools}
            )
            if (g := given.get(task.task_id)) is not None
            else task
            for task in self.tasks
        ]

    def refuse_missing_contracts(self, kept: Sequence[str]) -> None:
        """Raise if a task that runs again had a contract or tools the ledger could not keep.

        Raises:
            ConfigurationError: Name the tasks, and how to give their contracts back.
        """
        missing = [
            task.task_id
            for task in self.tasks
            if task.task_id in self.contracts
            and task.task_id not in kept
            and _lacks(json.loads(self.contracts[task.task_id]), task)
        ]
        if missing:
            raise ConfigurationError(
                f"Run {self.run_id!r}: task(s) {', '.join(map(repr, missing))} had an output "
                "contract (output_type, validators) or tools, which the ledger cannot keep; "
                "resume with the run's tasks (TaskExecutor.resume(..., tasks=...), or "
                "orchestra resume --file RUN_FILE.py)."
            )

    def refuse_refused_tasks(self, kept: Sequence[str]) -> None:
        """Raise if a task to run again was recorded with settings this version refuses.

        Raises:
            ConfigurationError: Say which task and why.
        """
        for task_id, why in self.refused_tasks.items():
            if task_id not in kept:
                raise ConfigurationError(
                    f"Run {self.run_id!r} cannot go on: its {why}; run its tasks again as a new "
                    "run with the setting fixed."
                )

    def refuse_if_alive(self, force: bool = False) -> None:
        """Raise if the process that runs this run may still be running it.

        Raises:
            ConfigurationError: Its process is alive on this machine, or it is recorded as
                running on another machine and ``force`` is not set.
        """
        if self.status != "running" or self.pid is None:
            return
        if self.host != socket.gethostname():
            if force:
                return
            raise ConfigurationError(
                f"Run {self.run_id!r} is recorded as running on {self.host!r} (process "
                f"{self.pid}), which cannot be checked from here; if that process is gone, "
                "resume with force (--force)."
            )
        if process_alive(self.pid, self.host):
            raise ConfigurationError(
                f"Run {self.run_id!r} is still being run by process {self.pid} on this machine; "
                "wait for it to end (or stop it) before resuming."
            )

    def as_result(self) -> RunResult:
        """The run as recorded, for a run that needs nothing more."""
        return RunResult(
            run_id=self.run_id,
            name=self.name,
            status=RunStatus(self.status),
            results=self.results,
            started_at=self.started_at or datetime.now(UTC),
            finished_at=self.finished_at,
        )

    def kept(self, retry_failed: bool) -> dict[str, TaskResult]:
        """The results that stand: succeeded ones, and failed ones unless retried.

        A succeeded result gets its value back: the JSON recorded for it, typed when its task
        is given again with its ``output_type`` (plain JSON values when not); without a
        recorded value, its text.
        """
        keep = {TaskStatus.SUCCEEDED} | (set() if retry_failed else {TaskStatus.FAILED})
        tasks = {task.task_id: task for task in self.tasks}
        kept = {}
        for tid, result in self.results.items():
            if result.status not in keep:
                continue
            if result.succeeded:
                result = result.model_copy(update={"value": self._value(tasks.get(tid), result)})
            kept[tid] = result
        return kept

    def replays(self, kept: Mapping[str, TaskResult]) -> dict[str, Replays]:
        """The recorded tool results of the tasks that run again, for their loops to replay."""
        found: dict[str, Replays] = {}
        for task_id, calls in self.tool_results.items():
            if task_id in kept:
                continue
            replays = found.setdefault(task_id, {})
            for tool, arguments, result in calls:
                replays.setdefault(replay_key(tool, arguments), deque()).append(result)
        return found

    def unfinished(self) -> list[str]:
        """The tasks that have not reached an end (never run, or left running)."""
        return [
            task.task_id
            for task in self.tasks
            if (result := self.results.get(task.task_id)) is None or not result.status.finished
        ]

    def standing(self) -> dict[str, TaskResult]:
        """Every result as it stands, succeeded ones with their values (for ``extend``)."""
        kept = self.kept(retry_failed=False)
        return {tid: kept.get(tid, result) for tid, result in self.results.items()}

    def agent_names(self) -> set[str]:
        """The agents recorded for the run."""
        return {agent.name for agent in self.agents}

    def _value(self, task: AgentTask | None, result: TaskResult) -> object:
        """The value recorded for a result: typed when its task's type is given again."""
        recorded = self.values.get(result.task_id)
        if recorded is None:  # no contract made one: the value is the text
            return result.output
        contract = None if task is None else OutputContract.of(task.output_type, task.validators)
        return json.loads(recorded) if contract is None else contract.load_json(recorded)

    def crashed(self) -> list[tuple[str, str, int, datetime | None]]:
        """Tasks a dead process left running: id, agent, the attempt it was making, start.

        Counts that attempt in ``attempts``, so the next one is numbered after it.
        """
        found = []
        for tid, result in self.results.items():
            if result.status is TaskStatus.RUNNING:
                self.attempts[tid] = number = self.attempts.get(tid, 0) + 1
                found.append((tid, self.agent_of[tid], number, self.started_of.get(tid)))
        return found

    def registry(self) -> AgentRegistry:
        """The run's agents as recorded (their keys come from the environment now).

        Raises:
            ConfigurationError: An agent was recorded with settings this version refuses;
                the agents must be given again.
        """
        if self.refused_agents:
            raise ConfigurationError(
                f"run {self.run_id} recorded {'; '.join(self.refused_agents)}: give the agents "
                "again (orchestra resume --file RUNFILE.py or --agents FILE.toml)"
            )
        registry = AgentRegistry()
        for agent in self.agents:
            settings = agent.model_dump(exclude={"name", "agent_type", "interface", "model"})
            settings = {k: v for k, v in settings.items() if v is not None}
            registry.register_agent(
                agent.name, agent.agent_type, agent.interface, agent.model, **settings
            )
        return registry


def claim_run(ledger: Ledger, saved: SavedRun) -> bool:
    """Make this process the one running ``saved``, unless another process did first.

    One conditional update of the run's status, process and host, as they were read
    (blocking: call it from a thread): of two resumes of the same run, in one process or
    two, only the first sees its row change.
    """
    same_pid = "pid IS NULL" if saved.pid is None else "pid = :old_pid"
    same_host = "host IS NULL" if saved.host is None else "host = :old_host"
    with ledger.engine.begin() as connection:
        claimed = connection.execute(
            text(
                "UPDATE runs SET pid = :pid, host = :host, status = 'running', "  # noqa: S608
                "finished_at = NULL WHERE id = :id AND status = :old_status "
                f"AND {same_pid} AND {same_host}"
            ),
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "id": saved.run_id,
                "old_status": saved.status,
                "old_pid": saved.pid,
                "old_host": saved.host,
            },
        )
        return bool(claimed.rowcount == 1)


def load_run(ledger: Ledger, run_id: str) -> SavedRun:
    """Read a run back (blocking: call it from a thread).

    Raises:
        ConfigurationError: The ledger has no such run.
    """
    with ledger.session() as session:
        run = session.execute(
            text(
                "SELECT name, status, pid, host, budget_usd, started_at, finished_at FROM runs "
                "WHERE id = :id"
            ),
            {"id": run_id},
        ).first()
        if run is None:
            raise ConfigurationError(
                f"No run {run_id!r} in the ledger at {ledger.shown_url}; `orchestra runs` "
                "lists the runs it has."
            )
        definitions = session.execute(
            text(
                "SELECT definition, task_id, contract FROM run_tasks WHERE run_id = :id "
                "ORDER BY position"
            ),
            {"id": run_id},
        ).all()
        rows = session.execute(
            text(
                "SELECT task_id, status, output, error, attempts, execution_method, provider, "
                "model, input_tokens, output_tokens, cost_usd, latency_s, agent, started_at, "
                "value FROM task_runs WHERE run_id = :id"
            ),
            {"id": run_id},
        ).all()
        counted = session.execute(
            text("SELECT task_id, MAX(attempt) FROM attempts WHERE run_id = :id GROUP BY task_id"),
            {"id": run_id},
        ).all()
        agents = session.execute(
            text("SELECT definition FROM run_agents WHERE run_id = :id"), {"id": run_id}
        ).all()
        spent = session.execute(
            text("SELECT COALESCE(SUM(cost_usd), 0) FROM attempts WHERE run_id = :id"),
            {"id": run_id},
        ).scalar_one()
        called = session.execute(
            text(
                "SELECT task_id, tool, arguments, result FROM tool_calls WHERE run_id = :id "
                "AND result IS NOT NULL AND NOT replayed ORDER BY id"
            ),
            {"id": run_id},
        ).all()
    results, agent_of, started_of, values = {}, {}, {}, {}
    for row in rows:
        task_id, status, output, error, attempts, method, provider, model, i, o, cost, secs = row[
            :12
        ]
        agent_of[task_id], started_of[task_id] = row[12], _moment(row[13])
        if row[14] is not None:
            values[task_id] = row[14]
        results[task_id] = TaskResult(
            task_id=task_id,
            status=TaskStatus(status),
            output=output,
            error=error,
            attempts=attempts or 0,
            usage=Usage(input_tokens=i, output_tokens=o),
            cost_usd=cost,
            latency_s=secs,
            metadata={"execution_method": method, "provider": provider, "model": model},
        )
    recorded = [_recorded_agent(a[0]) for a in agents]
    recorded_tasks = [_recorded_task(d[0]) for d in definitions]
    return SavedRun(
        run_id=run_id,
        name=run[0],
        status=run[1],
        pid=run[2],
        host=run[3],
        tasks=[task for task, _ in recorded_tasks],
        refused_tasks={task.task_id: why for task, why in recorded_tasks if why is not None},
        results=results,
        attempts={task_id: int(n) for task_id, n in counted},
        agents=[agent for agent in recorded if isinstance(agent, AgentConfig)],
        refused_agents=[refusal for refusal in recorded if isinstance(refusal, str)],
        agent_of=agent_of,
        started_of=started_of,
        budget_usd=run[4],
        spent=float(spent),
        started_at=_moment(run[5]),
        finished_at=_moment(run[6]),
        contracts={d[1]: d[2] for d in definitions if d[2] is not None},
        values=values,
        tool_results=_tool_results(called),
    )


def _moment(value: object) -> datetime | None:
    """A timestamp as SQLite returns it (text) or another database does (datetime)."""
    if value is None:
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # stored in UTC


def _lacks(recorded: dict[str, Any], task: AgentTask) -> bool:
    """Whether ``task`` lacks the objects its recorded contract says it had."""
    contract = any(recorded.get(key) for key in ("output_type", "json_schema", "validators"))
    if contract and task.output_type is None and not task.validators:
        return True
    return bool(recorded.get("tools")) and not task.tools


def _tool_results(rows: Sequence[Any]) -> dict[str, list[tuple[str, str, str]]]:
    found: dict[str, list[tuple[str, str, str]]] = {}
    for task_id, tool, arguments, result in rows:
        found.setdefault(task_id, []).append((tool, arguments or "{}", result))
    return found


def _recorded_task(definition: str) -> tuple[AgentTask, str | None]:
    """A task as the run recorded it; and why this version refuses it, if it does.

    A task recorded with settings this version refuses (a misspelled one ran silently before
    they were checked) is kept as it was: it matters only if it is to run again.
    """
    try:
        return AgentTask.model_validate_json(definition), None
    except ValidationError as exc:
        fields = json.loads(definition)
        return AgentTask.model_construct(**fields), exc.errors()[0]["msg"].removeprefix(
            "Value error, "
        )


def _recorded_agent(definition: str) -> AgentConfig | str:
    """An agent as the run recorded it; or why this version refuses its settings."""
    try:
        return AgentConfig.model_validate_json(definition)
    except ValidationError as exc:
        name = json.loads(definition).get("name", "?")
        return f"agent {name!r} with settings this version refuses ({exc.errors()[0]['msg']})"
