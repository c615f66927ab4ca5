"""``orchestra ask "question"``: one prompt to one model, streamed, recorded as a run.

As ``llm "question"`` does: the answer streams to a terminal as it is generated; a pipe gets
the whole, final answer once (so a retry after a cut-off stream never mixes two answers
into what a program reads). The provider is ``--provider``/``--model``, an ``--agent`` of a
TOML file, or the default provider (``orchestra providers`` says which: a key in the
environment, a local server, else the embedded model). Text piped on stdin is the prompt's
context (``cat notes.md | orchestra ask "summarize"``); ``-`` as the question reads the
question itself from stdin.

Each ask is a one-task run named ``ask`` in the ledger, with its attempts, tokens and cost,
so ``orchestra runs --name ask`` lists them and ``orchestra show`` shows one.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from orchestration.cli.common import open_ledger_for_writing, resolve
from orchestration.cli.tables import JsonOption, one_line

if TYPE_CHECKING:
    from orchestration.model.agent_registry import AgentRegistry
    from orchestration.model.tasks import AgentTask, TaskProgress, TaskResult

__all__ = ["ask"]

TASK_ID = "ask"


def ask(
    question: Annotated[
        str, typer.Argument(help="What to ask; '-' reads it from stdin.", show_default=False)
    ],
    provider: Annotated[
        str | None, typer.Option("--provider", "-p", help="A provider (orchestra providers).")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="The provider's model.")
    ] = None,
    agent: Annotated[
        str | None, typer.Option("--agent", "-a", help="An agent of the --agents file.")
    ] = None,
    agents: Annotated[
        Path | None, typer.Option("--agents", help="A TOML file of agents, for --agent.")
    ] = None,
    system: Annotated[str | None, typer.Option("--system", "-s", help="A system prompt.")] = None,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", help="The most tokens to generate.")
    ] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature.")] = None,
    budget: Annotated[float | None, typer.Option(help="USD the question may cost at most.")] = None,
    stream: Annotated[
        bool | None,
        typer.Option(
            "--stream/--no-stream",
            help="Print the answer as it is generated (default: when stdout is a terminal).",
            show_default=False,
        ),
    ] = None,
    no_stdin: Annotated[
        bool,
        typer.Option(
            "--no-stdin", help="Do not read stdin as context (for scripts whose stdin stays open)."
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Ask one model one question; the answer streams to the terminal and is recorded.

    Text piped on stdin becomes the question's context. Exit 1 when no answer came (the
    reason on stderr), 2 for bad input, 130/143 when stopped by Ctrl-C or SIGTERM.
    """
    from pydantic import ValidationError

    from orchestration.model.tasks import AgentTask

    if as_json and stream:
        _usage("--json prints the answer whole, once: give --json or --stream, not both")
    if question == "-":
        question = _stdin_text()
        context = None
    else:
        context = None if no_stdin else _piped_stdin()
    if not question.strip():
        _usage("the question is empty")
    registry, agent_name = _registry(provider, model, agent, agents)
    settings: dict[str, Any] = {
        "system_prompt": system,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "context": context,
    }
    try:
        task = AgentTask(
            task_id=TASK_ID,
            description=question,
            agent=agent_name,
            metadata={key: value for key, value in settings.items() if value is not None},
        )
    except ValidationError as exc:  # an invalid setting, a question no ledger can store
        _usage("; ".join(error["msg"].removeprefix("Value error, ") for error in exc.errors()))
    live = not as_json and (sys.stdout.isatty() if stream is None else stream)
    printer = _Printer() if live else None
    result, run_id = _run(registry, task, budget, printer)
    if printer is not None:
        printer.finish(result.output if result.succeeded else None)
    elif result.succeeded and not as_json:
        typer.echo((result.output or "").rstrip("\n"))
    _answer(result, run_id, as_json)


def _piped_stdin() -> str | None:
    """What a pipe or a redirected file on stdin holds (None for a terminal or nothing)."""
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError):  # stdin closed, or not a real file (a test's stand-in)
        return None
    if not (stat.S_ISFIFO(mode) or stat.S_ISREG(mode)):
        return None
    return _stdin_text() or None


def _stdin_text() -> str:
    """Stdin as text: UTF-8, with bytes that are not (a Latin-1 file in a diff) as U+FFFD."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:  # a text stand-in (tests)
        return sys.stdin.read().strip()
    return bytes(stream.read()).decode("utf-8", errors="replace").strip()


def _registry(
    provider: str | None, model: str | None, agent: str | None, agents: Path | None
) -> tuple[AgentRegistry, str]:
    """The registry to ask from, and the agent in it that answers."""
    from llm_abstractions import LlmFactory
    from orchestration.model.agent_registry import AgentRegistry

    if agent is not None or agents is not None:
        if agent is None or agents is None:
            _usage("--agent and --agents go together: --agents FILE.toml --agent NAME")
        if provider is not None or model is not None:
            _usage("give --agent or --provider/--model, not both")
        registry = resolve(lambda: AgentRegistry.from_toml(agents))
        resolve(lambda: registry.get(agent))
        return registry, agent
    choice = resolve(lambda: LlmFactory.resolve_default(provider, model))
    registry = AgentRegistry()
    resolve(lambda: registry.register_agent(choice.name, choice.name, model=choice.model))
    return registry, choice.name


def _usage(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


class _Printer:
    """Writes an answer's pieces to stdout as they arrive.

    A stream cut off by a failure is followed by the next attempt's: the reader is told on
    stderr, so the two answers are not taken for one.
    """

    def __init__(self) -> None:
        self.shown = ""  # the current attempt's text

    def piece(self, report: TaskProgress) -> None:
        if report.first_token_s == report.elapsed_s and self.shown:  # a new attempt's first
            sys.stdout.write("\n")
            sys.stdout.flush()
            typer.echo("[that answer was cut off; asking again]", err=True)
            self.shown = ""
        sys.stdout.write(report.delta)
        sys.stdout.flush()
        self.shown += report.delta

    def finish(self, output: str | None) -> None:
        """End the streamed answer; print what of the final one did not stream.

        The final answer can differ from what streamed: an attempt that did not stream (a
        script stood in) came after a cut-off stream, or text was repaired on arrival.
        """
        if output is not None and output != self.shown:
            if output.startswith(self.shown):
                sys.stdout.write(output[len(self.shown) :])
            else:
                if self.shown:
                    sys.stdout.write("\n")
                    sys.stdout.flush()
                    typer.echo("[that answer was cut off; the whole answer follows]", err=True)
                sys.stdout.write(output)
            self.shown = output
        if self.shown and not self.shown.endswith("\n"):
            sys.stdout.write("\n")
        sys.stdout.flush()


def _run(
    registry: AgentRegistry, task: AgentTask, budget: float | None, printer: _Printer | None
) -> tuple[TaskResult, str]:
    import anyio

    from orchestration.cli.signals import Stopped, exit_stopped, stoppable
    from orchestration.runtime.executor import TaskExecutor

    ledger, run_id = open_ledger_for_writing(), uuid.uuid4().hex

    async def main() -> TaskResult:
        async with TaskExecutor(registry, ledger=ledger) as executor:
            run = await executor.run(
                [task],
                name="ask",
                run_id=run_id,
                budget_usd=budget,
                on_progress=None if printer is None else printer.piece,
            )
        return run.results[task.task_id]

    try:
        result = resolve(lambda: anyio.run(stoppable, main))
    except Stopped as stop:
        if printer is not None and printer.shown:
            sys.stdout.write("\n")
        exit_stopped(stop, run_id, ledger.has_run(run_id))
    except KeyboardInterrupt:  # before the signals were watched
        exit_stopped(Stopped(2), run_id, ledger.has_run(run_id))
    finally:
        ledger.close()
    return result, run_id


def _answer(result: TaskResult, run_id: str, as_json: bool) -> None:
    """The JSON, or a summary on a terminal's stderr; exit 1 when no answer came."""
    from orchestration.ledger.history import fmt_cost, fmt_seconds, fmt_tokens

    meta = result.metadata
    if as_json:
        body = {
            "run_id": run_id,
            "status": result.status.value,
            "output": result.output,
            "error": result.error,
            "provider": meta.get("provider"),
            "model": meta.get("model"),
            "input_tokens": result.usage.input_tokens,
            "output_tokens": result.usage.output_tokens,
            "cost_usd": result.cost_usd,
            "latency_s": result.latency_s,
        }
        typer.echo(json.dumps(body, indent=2, ensure_ascii=False))
    if not result.succeeded:
        if not as_json:
            typer.echo(f"error: {one_line(result.error or result.status.value)}", err=True)
            typer.echo(f"inspect it: orchestra show {run_id[:12]}", err=True)
        raise typer.Exit(1)
    if sys.stderr.isatty() and not as_json:
        usage = result.usage
        typer.echo(
            f"run {run_id[:12]} · {meta.get('provider')} {meta.get('model') or ''} · "
            f"tokens {fmt_tokens(usage.input_tokens, usage.output_tokens)} · "
            f"{fmt_cost(result.cost_usd)} · {fmt_seconds(result.latency_s)}",
            err=True,
        )
