"""``orchestra run FILE.py`` and ``orchestra resume RUN``: run a DAG with a live table.

SIGINT (Ctrl-C) and SIGTERM cancel the run cleanly and raise ``cli.signals.Stopped``.
"""

from __future__ import annotations

import runpy
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from llm_abstractions.errors import ConfigurationError
from orchestration.cli.signals import Stopped, stoppable
from orchestration.ledger.store import Ledger
from orchestration.model.agent_registry import AgentRegistry
from orchestration.model.tasks import AgentTask, TaskResult
from orchestration.runtime.executor import TaskExecutor
from orchestration.runtime.results import RunResult

__all__ = ["load_run_file", "resume_with_progress", "run_with_progress"]

# Starts the run on an executor, reporting each finished task to the callback.
Start = Callable[[TaskExecutor, Callable[[TaskResult], None]], Awaitable[RunResult]]


def load_run_file(path: Path) -> tuple[AgentRegistry, list[AgentTask]]:
    """Execute ``path`` and take its module-level ``registry`` and ``tasks``.

    Raises:
        ConfigurationError: The file is missing or does not define both names properly.
    """
    if not path.is_file():
        raise ConfigurationError(f"No such file: {path}")
    namespace = runpy.run_path(str(path), run_name="__orchestra_run__")
    registry = namespace.get("registry")
    tasks = namespace.get("tasks")
    if not isinstance(registry, AgentRegistry):
        raise ConfigurationError(
            f"{path} must define `registry = AgentRegistry()` at module level."
        )
    if not isinstance(tasks, list | tuple) or not all(isinstance(t, AgentTask) for t in tasks):
        raise ConfigurationError(f"{path} must define `tasks` as a list of AgentTask.")
    return registry, list(tasks)


def run_with_progress(
    registry: AgentRegistry,
    tasks: list[AgentTask],
    name: str,
    max_concurrency: int,
    quiet: bool,
    ledger: Ledger | None = None,
    run_id: str | None = None,
) -> RunResult:
    """Run the DAG, showing each task's state live unless ``quiet``.

    Raises:
        Stopped: SIGINT or SIGTERM stopped the run (recorded ``cancelled``).
    """

    async def start(executor: TaskExecutor, done: Callable[[TaskResult], None]) -> RunResult:
        return await executor.run(tasks, name=name, on_task_done=done, run_id=run_id)

    state = {task.task_id: "pending" for task in tasks}
    return _with_progress(registry, start, name, state, max_concurrency, quiet, ledger)


def resume_with_progress(
    registry: AgentRegistry,
    run_id: str,
    tasks: list[AgentTask],
    retry_failed: bool,
    max_concurrency: int,
    quiet: bool,
    budget_usd: float | None = None,
    force: bool = False,
    given: list[AgentTask] | None = None,
    ledger: Ledger | None = None,
) -> RunResult:
    """Finish a recorded run (see ``TaskExecutor.resume``), showing it live unless ``quiet``.

    ``given`` are the run file's tasks, whose output contracts the ledger cannot keep.

    Raises:
        Stopped: SIGINT or SIGTERM stopped the run (recorded ``cancelled``).
    """

    async def start(executor: TaskExecutor, done: Callable[[TaskResult], None]) -> RunResult:
        return await executor.resume(
            run_id,
            retry_failed=retry_failed,
            on_task_done=done,
            budget_usd=budget_usd,
            force=force,
            tasks=given,
        )

    state = {task.task_id: "kept" for task in tasks}
    return _with_progress(registry, start, run_id, state, max_concurrency, quiet, ledger)


def _with_progress(
    registry: AgentRegistry,
    start: Start,
    title: str,
    state: dict[str, str],
    max_concurrency: int,
    quiet: bool,
    ledger: Ledger | None,
) -> RunResult:
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    def render() -> Table:
        ended = sum(s not in ("pending", "kept") for s in state.values())
        table = Table(title=f"{title}: {ended}/{len(state)}")
        table.add_column("task", no_wrap=True)
        table.add_column("status")
        for task_id, status in state.items():
            table.add_row(task_id, status)
        return table

    async def main(live: Live | None) -> RunResult:
        def done(result: TaskResult) -> None:
            state[result.task_id] = result.status.value
            if live is not None:
                live.update(render())

        async def run() -> RunResult:
            async with TaskExecutor(
                registry, max_concurrency=max_concurrency, ledger=ledger
            ) as executor:
                return await start(executor, done)

        return await stoppable(run)

    try:
        if quiet:
            return anyio.run(main, None)
        with Live(render(), console=Console(), refresh_per_second=8) as live:
            return anyio.run(main, live)
    except KeyboardInterrupt:  # before the signals were watched, or after
        raise Stopped(signal.SIGINT) from None
