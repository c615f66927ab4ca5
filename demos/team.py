r"""A small team on the embedded model: two agents, four tasks, one DAG, every attempt recorded.

    outline (planner) --> pitch (writer) ----\\
                      \\-> risks (planner) ---> review (writer)

Run it with ``make demo`` (after the quickstart) or ``python demos/team.py``. It needs no key:
both agents run on the bundled SmolLM2 model. Afterwards it prints the per-task table and
the commands that show the same run from the ledger.
"""

from __future__ import annotations

import argparse
import sys

import anyio
from rich.console import Console
from rich.table import Table

from llm_abstractions import ConfigurationError
from orchestration import AgentRegistry, AgentTask, RunResult, TaskExecutor, TaskResult
from orchestration.logs import configure_logging

TOPIC = "a command-line todo list app"


def build(topic: str, max_tokens: int) -> tuple[AgentRegistry, list[AgentTask]]:
    registry = AgentRegistry()
    settings = {"max_tokens": max_tokens, "temperature": 0.0, "seed": 7}
    registry.register_agent(
        "planner",
        "local",
        metadata={**settings, "system_prompt": "You are a concise software architect."},
    )
    registry.register_agent(
        "writer",
        "local",
        metadata={**settings, "system_prompt": "You are a clear technical writer."},
        max_concurrency=1,
    )
    tasks = [
        AgentTask(task_id="outline", agent="planner", description=f"List 3 features of {topic}."),
        AgentTask(
            task_id="pitch",
            agent="writer",
            depends_on=("outline",),
            description="Write a two-sentence pitch for this app.",
        ),
        AgentTask(
            task_id="risks",
            agent="planner",
            depends_on=("outline",),
            description="Name two risks in building these features.",
        ),
        AgentTask(
            task_id="review",
            agent="writer",
            depends_on=("pitch", "risks"),
            description="In two sentences, say whether the pitch addresses the risks.",
        ),
    ]
    return registry, tasks


async def run(topic: str, max_tokens: int) -> RunResult:
    registry, tasks = build(topic, max_tokens)
    console = Console()

    def done(result: TaskResult) -> None:
        console.print(f"  {result.task_id:<8} {result.status.value}")

    executor = TaskExecutor(registry=registry, max_concurrency=4)
    try:
        console.print(f"running {len(tasks)} tasks on 2 agents...")
        return await executor.run(tasks, name="team-demo", on_task_done=done)
    finally:
        await executor.aclose()


def report(run: RunResult) -> None:
    # Piped output (CI logs, `make demo | tee`) gets room for the whole table.
    console = Console() if sys.stdout.isatty() else Console(width=120)
    table = Table(title=f"run {run.run_id}: {run.status.value}")
    for column in ("task", "status", "method", "provider", "model", "tokens in/out", "cost"):
        table.add_column(column, no_wrap=True)
    table.add_column("latency", justify="right", no_wrap=True)
    for result in run.results.values():
        meta = result.metadata
        cost = "unknown" if result.cost_usd is None else f"${result.cost_usd:.4f}"
        table.add_row(
            result.task_id,
            result.status.value,
            str(meta.get("execution_method", "")),
            str(meta.get("provider", "")),
            str(meta.get("model", "")),
            f"{result.usage.input_tokens}/{result.usage.output_tokens}",
            cost,
            f"{result.latency_s or 0:.2f}s",
        )
    console.print(table)
    review = run.results.get("review")
    if review is not None and review.output:
        console.print(f"[bold]review:[/bold] {review.output.strip()}")
    console.print("\ninspect it:")
    console.print(f"  .venv/bin/orchestra show {run.run_id[:12]}")
    console.print(f"  .venv/bin/orchestra attempts {run.run_id[:12]}")
    query = "select task_id, status, output_tokens from task_runs"
    console.print(f'  sqlite3 "$(.venv/bin/orchestra db)" "{query}"', soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topic", default=TOPIC)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("-v", "--verbose", action="store_true", help="log every attempt")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        result = anyio.run(run, args.topic, args.max_tokens)
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report(result)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
