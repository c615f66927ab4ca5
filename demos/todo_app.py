"""Five specialist agents build a Todo app; its generated tests are run for the verdict.

``make demo`` runs this on the embedded model, with no key. With ANTHROPIC_API_KEY or
OPENAI_API_KEY set, the roles that want a strong model use that provider and the short
ones the cheapest configured model (see ``agents.routing``; override a role with
``ORCHESTRA_ROLE_<NAME>=provider[:model]`` or ``--roles FILE.toml``).

The files go to ``demos/output/<run-id>/`` (or ``--out``). Afterwards it prints one row per
task, the total cost, the QA verdict, and the commands that show the run from the ledger.
The tiny embedded model rarely writes working code: the verdict says so honestly.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

import anyio
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from agents import TodoBuild, qa_verdict, route_team
from agents.specialists import SPECIALISTS
from agents.todo import DEFAULT_REQUEST
from llm_abstractions import ConfigurationError
from orchestration import RunResult, TaskExecutor, TaskResult
from orchestration.ledger.history import fmt_tokens
from orchestration.logs import configure_logging

OUTPUT_ROOT = Path(__file__).resolve().parent / "output"


async def build_app(build: TodoBuild, run_id: str, console: Console) -> RunResult:
    """Run the build's DAG, printing each task as it ends."""
    registry = build.registry()
    for role in SPECIALISTS:
        choice = build.choices[role.name]
        console.print(
            escape(
                f"  {role.name:<10} {choice.provider}:{choice.model or 'default'} ({choice.reason})"
            )
        )

    def done(result: TaskResult) -> None:
        build.on_task_done(result)
        console.print(Text(f"  {result.task_id:<10} {result.status.value}"))

    executor = TaskExecutor(registry=registry, max_concurrency=4)
    try:
        return await executor.run(build.tasks(), name="todo-app", on_task_done=done, run_id=run_id)
    finally:
        await executor.aclose()


def report(run: RunResult, build: TodoBuild, console: Console) -> None:
    """The per-task table, total cost, QA verdict and inspect commands."""
    table = Table(title=f"run {run.run_id}: {run.status.value}")
    columns = ("task", "agent", "status", "method", "provider", "model", "tokens in/out", "cost")
    for column in columns:
        table.add_column(column, no_wrap=True)
    table.add_column("latency", justify="right", no_wrap=True)
    table.add_column("files")
    total, priced = 0.0, True
    agents = {task.task_id: task.agent or "" for task in build.tasks()}
    for result in run.results.values():
        meta = result.metadata
        if result.cost_usd is None:
            priced = priced and not result.succeeded
        total += result.cost_usd or 0.0
        table.add_row(
            escape(result.task_id),
            escape(agents.get(result.task_id, "")),
            result.status.value,
            str(meta.get("execution_method", "")),
            escape(str(meta.get("provider", ""))),
            escape(str(meta.get("model", ""))),
            fmt_tokens(result.usage.input_tokens, result.usage.output_tokens),
            _cost_cell(result),
            f"{result.latency_s or 0:.1f}s",
            _files_cell(build, result.task_id),
        )
    console.print(table)
    _failures(run, console)
    cost = f"${total:.4f}" if priced else "unknown (a price is missing)"
    console.print(f"total cost: {cost}")
    verdict = qa_verdict(run.results.get("qa-run"))
    counts = ", ".join(
        f"{k} {verdict[k]}" for k in ("ran", "passed", "failed", "errors") if k in verdict
    )
    console.print(
        f"QA verdict: [bold]{escape(str(verdict['verdict']))}[/bold] "
        f"({escape(counts or str(verdict.get('reason', '')))})"
    )
    console.print(f"files: {build.output_dir}")
    console.print("\ninspect it:")
    for command in ("show", "attempts"):
        console.print(f"  .venv/bin/orchestra {command} {run.run_id}")
    console.print(f"  .venv/bin/orchestra report {run.run_id} --html report.html")


def _cost_cell(result: TaskResult) -> str:
    if not result.attempts:
        return "-"  # nothing was tried, so nothing was spent
    return "unknown" if result.cost_usd is None else f"${result.cost_usd:.4f}"


def _files_cell(build: TodoBuild, task_id: str) -> str:
    files = build.files.get(task_id)
    if files is None:
        return ""
    if not files.written:
        return "[red]none[/red]"
    return escape(", ".join(files.written))


def _failures(run: RunResult, console: Console) -> None:
    """Why each task that failed did (a task held back by it says only that)."""
    for result in run.results.values():
        if result.status.value in ("succeeded", "skipped"):
            continue
        reason = (result.error or result.status.value).strip()
        console.print(Text(f"  {result.task_id} {result.status.value}: {reason}"), soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; its exit code: 0 when the app was built and its tests passed.

    1 when a task delivered no checked work or the tests did not pass, 2 on bad settings.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--request", default=DEFAULT_REQUEST, help="what to build")
    parser.add_argument(
        "--out", type=Path, help="output directory (default: demos/output/<run-id>)"
    )
    parser.add_argument("--max-tokens", type=int, default=512, help="answer budget per agent")
    parser.add_argument("--test-timeout", type=float, default=60.0, help="seconds for the tests")
    parser.add_argument("--roles", type=Path, help="TOML file with [roles.<name>] overrides")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every attempt")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    # Piped output (CI logs, `make demo | tee`) gets room for the whole table.
    console = Console() if sys.stdout.isatty() else Console(width=140)
    run_id = uuid.uuid4().hex
    output_dir = args.out or OUTPUT_ROOT / run_id
    try:
        build = TodoBuild(
            output_dir=output_dir,
            request=args.request,
            max_tokens=args.max_tokens,
            test_timeout_s=args.test_timeout,
            choices=route_team(SPECIALISTS, config=args.roles),
        )
        console.print(f"building {args.request!r} into {output_dir}")
        run = anyio.run(build_app, build, run_id, console)
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report(run, build, console)
    if run.ok:
        verdict = qa_verdict(run.results.get("qa-run"))["verdict"]
        if verdict == "passed":
            return 0
        print(
            f"error: the app was built, but its tests did not pass (verdict: {verdict})",
            file=sys.stderr,
        )
        return 1
    failed = [
        r.task_id for r in run.results.values() if r.status.value not in ("succeeded", "skipped")
    ]
    print(
        f"error: the build did not finish: {', '.join(failed) or 'the run'} "
        f"{'has' if len(failed) == 1 else 'have'} no usable answer (reasons above; "
        f".venv/bin/orchestra show {run.run_id})",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
