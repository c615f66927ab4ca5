"""``orchestra run FILE.py`` and ``orchestra resume RUN``: run a DAG, or finish one.

Both record into the ledger, opened before anything runs (a ledger that cannot be written is
one line and exit 2, before anything is sent). Ctrl-C (SIGINT) and SIGTERM stop the run
cleanly (``cli.signals``): it is recorded cancelled, the command prints how to resume it
and exits 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from orchestration.cli.common import open_ledger_for_writing, resolve
from orchestration.cli.tables import JsonOption

if TYPE_CHECKING:
    from orchestration.ledger.store import Ledger
    from orchestration.model.tasks import AgentTask
    from orchestration.runtime.results import RunResult

__all__ = ["resume", "run_file"]


def run_file(
    file: Annotated[Path, typer.Argument(help="A Python file defining `registry` and `tasks`.")],
    name: Annotated[str | None, typer.Option(help="A label for the run.")] = None,
    max_concurrency: Annotated[int, typer.Option(help="Tasks at once.")] = 8,
    as_json: JsonOption = False,
) -> None:
    """Run the DAG a Python file builds (module-level `registry` and `tasks`).

    Ctrl-C (SIGINT) or SIGTERM stops it cleanly: the run is recorded cancelled, the command
    says how to resume it and exits 130 (SIGINT) or 143 (SIGTERM).
    """
    import uuid

    from orchestration.cli.runfile import load_run_file, run_with_progress
    from orchestration.cli.signals import Stopped, exit_stopped

    registry, tasks = resolve(lambda: load_run_file(file))
    ledger, run_id = open_ledger_for_writing(), uuid.uuid4().hex
    try:
        result = resolve(
            lambda: run_with_progress(
                registry, tasks, name or file.stem, max_concurrency, as_json, ledger, run_id
            )
        )
    except Stopped as stop:
        exit_stopped(stop, run_id, ledger.has_run(run_id))
    finally:
        ledger.close()
    if not as_json:
        _final_outputs(result, tasks)
    _outcome(result, as_json)


def _final_outputs(result: RunResult, tasks: list[AgentTask]) -> None:
    """Print what the run's final tasks (those nothing depends on) answered."""
    needed = {dep for task in tasks for dep in task.depends_on}
    for task in tasks:
        found = result.results.get(task.task_id)
        if task.task_id in needed or found is None or not found.output:
            continue
        typer.echo(f"=== {task.task_id}: {found.status.value} ===")
        typer.echo(found.output.rstrip("\n"))


def resume(
    run: Annotated[str, typer.Argument(help="Run id, or its first characters.")],
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Run failed tasks (and what they held back).")
    ] = False,
    file: Annotated[
        Path | None,
        typer.Option(help="Take the agents (and the tasks' output contracts) from this run file."),
    ] = None,
    agents: Annotated[
        Path | None, typer.Option(help="Take the agents from this TOML file.")
    ] = None,
    max_concurrency: Annotated[int, typer.Option(help="Tasks at once.")] = 8,
    budget: Annotated[
        float | None,
        typer.Option(help="USD what runs now may spend (default: what is left of the run's)."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Resume a run recorded as running on another host.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Finish a run whose process died: succeeded tasks are kept, the rest run.

    The agents are those the run recorded (keys from the environment), unless --file or
    --agents gives them (needed for providers registered in Python, and for agents given an
    explicit api_key, which is never stored: without them, resume refuses). Ctrl-C
    (SIGINT) or SIGTERM stops it as it stops ``orchestra run`` (exit 130 or 143).
    """
    ledger = open_ledger_for_writing(create=False)
    try:
        _resume(ledger, run, (file, agents), retry_failed, max_concurrency, as_json, budget, force)
    finally:
        ledger.close()


def _resume(
    ledger: Ledger,
    run: str,
    given_agents: tuple[Path | None, Path | None],
    retry_failed: bool,
    max_concurrency: int,
    as_json: bool,
    budget: float | None,
    force: bool,
) -> NoReturn:
    from orchestration.cli.runfile import load_run_file, resume_with_progress
    from orchestration.cli.signals import Stopped, exit_stopped
    from orchestration.ledger.history import agents_with_keys, resolve_run
    from orchestration.model.agent_registry import AgentRegistry
    from orchestration.runtime.resume import load_run

    file, agents = given_agents
    run_id = resolve(lambda: resolve_run(ledger, run))
    saved = resolve(lambda: load_run(ledger, run_id))
    if file is not None and agents is not None:
        typer.echo("error: give --file or --agents, not both.", err=True)
        raise typer.Exit(2)
    keyed = agents_with_keys(ledger, run_id) if file is None and agents is None else []
    if keyed:
        typer.echo(
            f"error: run {run_id} used agent {', '.join(map(repr, keyed))} with an explicit "
            "api_key, which is never stored; pass --file RUNFILE.py (or --agents FILE.toml) "
            "so resume can rebuild it",
            err=True,
        )
        raise typer.Exit(2)
    given = None
    if file is not None:
        registry, given = resolve(lambda: load_run_file(file))
    elif agents is not None:
        registry = resolve(lambda: AgentRegistry.from_toml(agents))
    elif saved.agents:
        registry = resolve(saved.registry)
    else:
        typer.echo(
            f"error: run {run_id} recorded no agents (it predates that); give them with "
            "--file RUN_FILE.py or --agents AGENTS.toml.",
            err=True,
        )
        raise typer.Exit(2)
    try:
        result = resolve(
            lambda: resume_with_progress(
                registry,
                run_id,
                saved.tasks,
                retry_failed,
                max_concurrency,
                as_json,
                budget,
                force,
                given,
                ledger,
            )
        )
    except Stopped as stop:
        exit_stopped(stop, run_id)
    failed = [t for t, r in result.results.items() if r.status.value == "failed"]
    if failed and not retry_failed:
        typer.echo(
            f"{len(failed)} task(s) failed ({', '.join(failed[:5])}); "
            f"`orchestra resume {run_id[:12]} --retry-failed` runs failed tasks again",
            err=True,
        )
    _outcome(result, as_json)


def _outcome(result: RunResult, as_json: bool) -> NoReturn:
    """Print how a run ended and exit with 0 if every task succeeded, else 1."""
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
    else:
        typer.echo(f"run {result.run_id}: {result.status.value}")
        typer.echo(f"inspect it: orchestra show {result.run_id[:12]}")
    raise typer.Exit(0 if result.ok else 1)
