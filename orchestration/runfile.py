"""``orchestra run FILE.py``: load a file's registry and tasks, run them with a live table."""

from __future__ import annotations

import runpy
from pathlib import Path

import anyio

from llm_abstractions.errors import ConfigurationError
from orchestration.agent_registry import AgentRegistry
from orchestration.executor import RunResult, TaskExecutor
from orchestration.tasks import AgentTask, TaskResult

__all__ = ["load_run_file", "run_with_progress"]


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
) -> RunResult:
    """Run the DAG, showing each task's state live unless ``quiet``."""
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    state = {task.task_id: "pending" for task in tasks}

    def render() -> Table:
        table = Table(title=f"{name}: {sum(s != 'pending' for s in state.values())}/{len(state)}")
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

        executor = TaskExecutor(registry=registry, max_concurrency=max_concurrency)
        try:
            return await executor.run(tasks, name=name, on_task_done=done)
        finally:
            await executor.aclose()

    if quiet:
        return anyio.run(main, None)
    with Live(render(), console=Console(), refresh_per_second=8) as live:
        return anyio.run(main, live)
