"""``orchestra run FILE.py`` and ``orchestra resume RUN``: run a DAG with a live table.

SIGINT (Ctrl-C) and SIGTERM cancel the run cleanly and raise ``cli.signals.Stopped``.
"""

from __future__ import annotations

import importlib.util
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import anyio
import typer

from llm_abstractions.errors import ConfigurationError
from orchestration.cli.signals import Stopped, stoppable
from orchestration.cli.tables import one_line
from orchestration.ledger.store import Ledger
from orchestration.model.agent_registry import AgentRegistry
from orchestration.model.graph import validate_tasks
from orchestration.model.tasks import AgentTask, TaskProgress, TaskResult
from orchestration.runtime.executor import TaskExecutor
from orchestration.runtime.results import RunResult

__all__ = ["load_run_file", "resume_with_progress", "run_with_progress"]

RUN_MODULE = "__orchestra_run__"  # not "__main__": the file is imported, not run
RUN_FILE_SHAPE = (
    "A run file defines, at module level, `registry` (an AgentRegistry) and `tasks` (a list"
    ' of AgentTask); `orchestra run` imports it, so its `if __name__ == "__main__":` block'
    " does not run."
)

OnDone = Callable[[TaskResult], None]
OnProgress = Callable[[TaskProgress], None] | None  # None: nothing shows it, nothing streams
# Starts the run on an executor, reporting each finished task and the progress of answers.
Start = Callable[[TaskExecutor, OnDone, OnProgress], Awaitable[RunResult]]


@dataclass
class _Row:
    """What the live table shows of a task."""

    status: str
    seconds: float | None = None
    tokens: int | None = None
    rate: float | None = None
    note: str = ""

    def cells(self) -> list[str]:
        shown = "-" if self.seconds is None else f"{self.seconds:.1f}s"
        rate = "" if not self.rate else f"{self.rate:.1f}"
        return [self.status, shown, "" if self.tokens is None else str(self.tokens), rate]


def load_run_file(path: Path) -> tuple[AgentRegistry, list[AgentTask]]:
    """Import ``path`` and take its module-level ``registry`` and ``tasks``.

    The file is imported as module ``__orchestra_run__``, not run as a script: its module-level
    code runs once and its ``if __name__ == "__main__":`` block does not, so the same file
    can call ``anyio.run(main)`` under that guard for ``python FILE.py``. Its directory goes
    first on ``sys.path``, unless it is there already, and stays there as a script's does:
    modules beside the file can be imported while it loads and while the run goes on.

    Raises:
        ConfigurationError: The file is missing or does not define both names properly.
    """
    if not path.is_file():
        raise ConfigurationError(f"No such file: {path}")
    module = _import(path)
    registry = getattr(module, "registry", None)
    tasks = getattr(module, "tasks", None)
    if not isinstance(registry, AgentRegistry):
        raise ConfigurationError(
            f"{path} must define `registry = AgentRegistry()` at module level"
            f" ({_found(module, 'registry')}). {RUN_FILE_SHAPE}"
        )
    if not isinstance(tasks, list | tuple) or not all(isinstance(t, AgentTask) for t in tasks):
        raise ConfigurationError(
            f"{path} must define `tasks` as a list of AgentTask"
            f" ({_found(module, 'tasks')}). {RUN_FILE_SHAPE}"
        )
    return registry, list(tasks)


def _import(path: Path) -> ModuleType:
    """Execute ``path`` as module ``__orchestra_run__``, its directory on ``sys.path``."""
    spec = importlib.util.spec_from_file_location(RUN_MODULE, path)
    if spec is None or spec.loader is None:
        raise ConfigurationError(f"{path} is not a Python file: name it FILE.py.")
    directory = str(path.resolve().parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    module = importlib.util.module_from_spec(spec)
    # Registered like any import: dataclasses and pydantic models defined in the file look
    # their module up in sys.modules, while it loads and when their types are resolved later.
    sys.modules[RUN_MODULE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(RUN_MODULE, None)
        raise
    return module


def _found(module: ModuleType, name: str) -> str:
    value = getattr(module, name, None)
    if value is None:
        return f"it has no `{name}`"
    if isinstance(value, list | tuple):
        kinds = sorted({type(item).__name__ for item in value if not isinstance(item, AgentTask)})
        return f"its `{name}` holds {', '.join(kinds)}"
    return f"its `{name}` is a {type(value).__name__}"


def run_with_progress(
    registry: AgentRegistry,
    tasks: list[AgentTask],
    name: str,
    max_concurrency: int,
    quiet: bool,
    ledger: Ledger | None = None,
    run_id: str | None = None,
) -> RunResult:
    """Run the DAG, showing each task's state unless ``quiet``.

    On a terminal the state is a live table; otherwise each task is one line on stderr as
    it ends (task, status, time, tokens, why it failed), for logs.

    Raises:
        Stopped: SIGINT or SIGTERM stopped the run (recorded ``cancelled``).
    """

    def start(executor: TaskExecutor, done: OnDone, progress: OnProgress) -> Awaitable[RunResult]:
        return executor.run(
            tasks, name=name, on_task_done=done, run_id=run_id, on_progress=progress
        )

    validate_tasks(tasks, registry)  # a graph that cannot run is said before anything is drawn
    state = {task.task_id: _Row("pending") for task in tasks}
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

    def start(executor: TaskExecutor, done: OnDone, progress: OnProgress) -> Awaitable[RunResult]:
        return executor.resume(
            run_id,
            retry_failed=retry_failed,
            on_task_done=done,
            on_progress=progress,
            budget_usd=budget_usd,
            force=force,
            tasks=given,
        )

    state = {task.task_id: _Row("kept") for task in tasks}
    return _with_progress(registry, start, run_id, state, max_concurrency, quiet, ledger)


def _with_progress(
    registry: AgentRegistry,
    start: Start,
    title: str,
    state: dict[str, _Row],
    max_concurrency: int,
    quiet: bool,
    ledger: Ledger | None,
) -> RunResult:
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    def render() -> Table:
        ended = sum(row.status not in ("pending", "kept", "running") for row in state.values())
        table = Table(title=f"{title}: {ended}/{len(state)}")
        table.add_column("task", no_wrap=True)
        for column in ("status", "time", "tokens", "tok/s"):
            table.add_column(column, justify="left" if column == "status" else "right")
        table.add_column("note", overflow="fold")
        for task_id, row in state.items():
            table.add_row(task_id, *row.cells(), row.note)
        return table

    async def main(live: Live | None) -> RunResult:
        def done(result: TaskResult) -> None:
            failed = result.status.value != "succeeded"
            row = state[result.task_id] = _Row(
                result.status.value,
                result.latency_s,
                result.usage.output_tokens,
                note=one_line(result.error) if failed else "",
            )
            if live is not None:
                live.update(render())
            elif not quiet:  # no terminal: one line per task as it ends, for logs
                cells = [one_line(result.task_id), *row.cells()[:3], row.note]
                typer.echo("\t".join(cells), err=True)

        def progress(report: TaskProgress) -> None:
            state[report.task_id] = _Row(
                "running", report.elapsed_s, report.output_tokens, report.tokens_per_s
            )
            if live is not None:
                live.update(render())

        async def run() -> RunResult:
            async with TaskExecutor(
                registry, max_concurrency=max_concurrency, ledger=ledger
            ) as executor:
                # Without a live table, nothing streams: progress would go nowhere.
                return await start(executor, done, progress if live is not None else None)

        return await stoppable(run)

    console = Console()
    try:
        if quiet or not console.is_terminal:
            return anyio.run(main, None)
        with Live(render(), console=console, refresh_per_second=8) as live:
            return anyio.run(main, live)
    except KeyboardInterrupt:  # before the signals were watched, or after
        raise Stopped(signal.SIGINT) from None
