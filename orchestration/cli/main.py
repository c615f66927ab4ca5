"""The ``orchestra`` command line.

Heavy modules (SDKs, the ledger's ORM) are imported inside commands, never at module level,
so ``orchestra --help`` answers at once. The commands that print results take ``--json``
(``export`` writes JSON Lines).

Exit statuses: 0 done (every task succeeded); 1 a task did not succeed, or no ledger yet;
2 a user error or a ledger that cannot be opened or written (one line on stderr); 130 and
143 a run stopped by Ctrl-C (SIGINT) or SIGTERM (``cli.signals``). The read commands
(``runs``, ``show``, ``attempts``, ``report``, ``output``, ``export``) open the ledger
read-only.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

import typer

from orchestration.cli.ask import ask
from orchestration.cli.cleanup import prune, rm
from orchestration.cli.common import fail, open_ledger, resolve, since_time
from orchestration.cli.export import export
from orchestration.cli.models import models
from orchestration.cli.output import output
from orchestration.cli.running import resume, run_file
from orchestration.cli.tables import (
    Format,
    FormatOption,
    JsonOption,
    chosen,
    emit,
    one_line,
    preview,
)

app = typer.Typer(
    name="orchestra",
    help="Run teams of LLM agents and inspect what they did.",
    no_args_is_help=True,
    add_completion=False,
)


def _version_callback(value: bool) -> None:
    if value:
        try:
            typer.echo(version("orchestra"))
        except PackageNotFoundError:
            typer.echo("unknown (not installed)")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log every attempt on stderr.")
    ] = False,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            help="The ledger: a SQLite file or a SQLAlchemy URL (default: ORCHESTRA_DB_URL, "
            "the nearest .orchestra/ up from here, else your own ledger).",
        ),
    ] = None,
) -> None:
    """Run teams of LLM agents and inspect what they did.

    ``-v`` and ``--db`` may also come after the subcommand.
    """
    from orchestration.logs import configure_logging

    configure_logging(verbose)
    if db is not None:  # every command, and what a run file builds, reads it from there
        os.environ["ORCHESTRA_DB_URL"] = db


@app.command()
def providers(as_json: JsonOption = False, form: FormatOption = None) -> None:
    """Show each provider: installed, key, reachable, default model, circuit breaker.

    The breaker is its state as last recorded in the ledger by any run (with when).
    """
    from llm_abstractions import ConfigurationError, LlmFactory

    statuses = LlmFactory.available()
    breakers = _breakers()
    found = [{**asdict(s), "breaker": breakers.get(s.name)} for s in statuses]
    shown = chosen(form, as_json)
    rows = [
        [
            s.name,
            _mark(s.ok),
            _mark(s.installed),
            _mark(s.credentials),
            _mark(s.reachable),
            s.default_model or "",
            _breaker_text(breakers.get(s.name)),
            s.reason,
        ]
        for s in statuses
    ]
    columns = ["provider", "ready", "installed", "key", "reachable", "model", "breaker", "note"]
    emit(shown, "Providers", columns, rows, found)
    if shown is Format.JSON:
        return
    try:
        choice = LlmFactory.resolve_default()
    except ConfigurationError as exc:
        typer.echo(f"default provider: none ({exc})", err=True)
        raise typer.Exit(2) from None
    if shown is Format.TABLE:  # plain output is the rows alone, for what reads them
        typer.echo(f"default provider: {choice.name} ({choice.reason})")


def _breakers() -> dict[str, dict[str, Any]]:
    """Breaker states recorded in the ledger, if there is one (never creates it)."""
    from sqlalchemy import text

    from orchestration.ledger.store import Ledger, LedgerError, default_db_url, sqlite_file

    url = default_db_url()
    path = sqlite_file(url)
    if path is not None and not path.exists():
        return {}
    try:
        ledger = Ledger(url, read_only=True)
    except LedgerError:
        return {}
    try:
        with ledger.session() as session:
            found = session.execute(
                text(
                    "SELECT provider, state, consecutive_failures, opened_at, updated_at "
                    "FROM breakers"
                )
            ).all()
    finally:
        ledger.close()
    return {
        provider: {
            "state": state,
            "consecutive_failures": failures,
            "opened_at": opened and str(opened),
            "updated_at": str(updated),
        }
        for provider, state, failures, opened, updated in found
    }


def _breaker_text(breaker: dict[str, Any] | None) -> str:
    if breaker is None:
        return "-"
    return f"{breaker['state']} (since {breaker['updated_at'][:19]})"


@app.command()
def db() -> None:
    """Print the ledger's path (or URL), for ``sqlite3 "$(orchestra db)"``.

    The ledger is ``ORCHESTRA_DB_URL`` (any SQLAlchemy URL, or a plain path to a SQLite
    file), else ``.orchestra/runs.db`` in the working directory.
    """
    from sqlalchemy.engine.url import make_url
    from sqlalchemy.exc import ArgumentError

    from orchestration.ledger.store import LedgerError, default_db_url, sqlite_file

    url = default_db_url()
    path = sqlite_file(url)
    try:
        typer.echo(path or make_url(url).render_as_string(hide_password=True))
    except (ArgumentError, ValueError):
        fail(LedgerError(f"{url!r} is not a database URL; write sqlite:///PATH or a plain path"))


@app.command()
def runs(
    limit: Annotated[int, typer.Option(help="How many runs, newest first.")] = 20,
    status: Annotated[
        str | None,
        typer.Option(help="Only runs with this status (succeeded, failed, interrupted...)."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Only runs whose name contains this.")] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only runs started since: 2026-12-01, 2026-12-01T09:30, or 2h, 3d."),
    ] = None,
    as_json: JsonOption = False,
    form: FormatOption = None,
) -> None:
    """List runs: id, name, status, tasks, tokens, cost, duration.

    A run whose process died while running it shows ``interrupted``. In a pipe, plain
    tab-separated rows with whole values (``--format`` chooses). No ledger yet is no runs.
    """
    from orchestration.ledger.history import fmt_cost, fmt_seconds, fmt_tokens, list_runs

    after = None if since is None else resolve(lambda: since_time(since))
    ledger = open_ledger(missing_ok=True)
    try:
        found = (
            []
            if ledger is None
            else list_runs(ledger, limit, status=status, name=name, since=after)
        )
    finally:
        if ledger is not None:
            ledger.close()
    rows = [
        [
            r["id"],
            r["name"] or "",
            r["status"],
            str(r["tasks"]),
            fmt_tokens(r["input_tokens"], r["output_tokens"]),
            fmt_cost(r["cost_usd"]),
            fmt_seconds(r["duration_s"]),
        ]
        for r in found
    ]
    columns = ["run", "name", "status", "tasks", "tokens in/out", "cost", "duration"]
    emit(chosen(form, as_json), "Runs", columns, rows, found, id_columns=[0])


@app.command()
def show(
    run: Annotated[str, typer.Argument(help="Run id, or its first characters.")],
    as_json: JsonOption = False,
    form: FormatOption = None,
) -> None:
    """Show a run task by task: agent, status, method, provider, model, tokens, cost.

    ``output`` is the start of each task's answer (``orchestra output RUN TASK`` prints it
    whole).

    ``tools`` counts the tool calls its model made (``orchestra report`` lists them);
    ``refused`` counts the answers a task's output contract refused (and asked again for);
    a failed task's error says why its last answer was refused. A run whose process died
    while running it shows ``interrupted`` (``orchestra resume`` finishes it).
    """
    from orchestration.ledger.history import (
        fmt_cost,
        fmt_seconds,
        fmt_tokens,
        refusals,
        resolve_run,
        run_status,
        run_tasks,
        tool_call_counts,
    )

    ledger = open_ledger()
    try:
        run_id = resolve(lambda: resolve_run(ledger, run))
        status = run_status(ledger, run_id)
        tasks = run_tasks(ledger, run_id)
        refused = refusals(ledger, run_id)
        called = tool_call_counts(ledger, run_id)
    finally:
        ledger.close()
    for found in tasks:
        found["refused"] = refused.get(found["task_id"], 0)
        found["tool_calls"], found["tool_calls_failed"] = called.get(found["task_id"], (0, 0))
    columns = ["task", "agent", "status", "method", "provider", "model", "tokens in/out"]
    columns += ["cost", "latency", "attempts", "refused", "tools", "output", "error"]
    rows = [
        [
            t["task_id"],
            t["agent"],
            t["status"],
            t["execution_method"] or "",
            t["provider"] or "",
            t["model"] or "",
            fmt_tokens(t["input_tokens"], t["output_tokens"]),
            fmt_cost(t["cost_usd"]) if t["attempts"] else "-",  # nothing tried, nothing spent
            fmt_seconds(t["latency_s"]),
            str(t["attempts"]),
            str(t["refused"]),
            _calls(t["tool_calls"], t["tool_calls_failed"]),
            preview(t["output"]),
            one_line(t["error"]),
        ]
        for t in tasks
    ]
    records = {"run_id": run_id, "status": status, "tasks": tasks}
    emit(chosen(form, as_json), f"Run {run_id}: {status}", columns, rows, records)


@app.command()
def attempts(
    run: Annotated[str, typer.Argument(help="Run id, or its first characters.")],
    task: Annotated[str | None, typer.Option("--task", help="Only this task.")] = None,
    as_json: JsonOption = False,
    form: FormatOption = None,
) -> None:
    """List every attempt of a run (or of one task): method, status, tokens, cost, error."""
    from orchestration.ledger.history import (
        fmt_cost,
        fmt_seconds,
        fmt_tokens,
        resolve_run,
        run_attempts,
        run_tasks,
    )

    ledger = open_ledger()
    try:
        run_id = resolve(lambda: resolve_run(ledger, run))
        found = run_attempts(ledger, run_id, task)
        known = [t["task_id"] for t in run_tasks(ledger, run_id)]
    finally:
        ledger.close()
    if task is not None and not found:
        if task not in known:
            typer.echo(
                f"error: no task {task!r} in run {run_id}; tasks are {', '.join(known)}", err=True
            )
            raise typer.Exit(2)
    columns = ["task", "#", "method", "provider", "model", "status", "tokens in/out", "cost"]
    columns += ["latency", "error"]
    rows = [
        [
            a["task_id"],
            str(a["attempt"]),
            a["execution_method"],
            a["provider"] or "",
            a["model"] or "",
            a["status"],
            fmt_tokens(a["input_tokens"], a["output_tokens"]),
            fmt_cost(a["cost_usd"]),
            fmt_seconds(a["latency_s"]),
            one_line(a["error_message"]),
        ]
        for a in found
    ]
    emit(chosen(form, as_json), f"Attempts of {run_id}", columns, rows, found)


@app.command()
def report(
    run: Annotated[str, typer.Argument(help="Run id, or its first characters.")],
    html: Annotated[
        Path | None,
        typer.Option("--html", help="Write a self-contained HTML page (graph, timeline) here."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Report on a run: summary, tasks, attempts; with --html, a page with its DAG and timeline."""
    from rich.console import Console

    from orchestration.cli.report import print_report, render_html, report_json, summary_line
    from orchestration.cli.report_data import load_report

    ledger = open_ledger()
    try:
        found = resolve(lambda: load_report(ledger, run))
    finally:
        ledger.close()
    if html is not None:
        try:
            html.write_text(render_html(found), encoding="utf-8")
        except OSError as exc:
            typer.echo(f"error: cannot write {html}: {exc.strerror or exc}", err=True)
            raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(report_json(found), indent=2))
    elif html is not None:
        typer.echo(f"wrote {html.resolve()}")
        typer.echo(summary_line(found))
    else:
        print_report(found, Console())


def _calls(made: int, failed: int) -> str:
    """Tool calls made, and how many failed: ``3``, ``3 (1 failed)``."""
    return f"{made} ({failed} failed)" if failed else str(made)


def _mark(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


app.command("run")(run_file)
app.command()(resume)
app.command()(rm)
app.command()(prune)
app.command()(output)
app.command()(ask)
app.command()(export)
app.add_typer(models)


def main() -> None:
    """Entry point of the ``orchestra`` script (``-v``, ``--db`` may follow the subcommand).

    A reader that stops early (``orchestra export RUN | head``) ends the command quietly
    (click catches the broken pipe: exit 1, no traceback).
    """
    app(args=root_options_first(sys.argv[1:]), prog_name="orchestra")


def root_options_first(args: list[str]) -> list[str]:
    """``args`` with ``-v``/``--verbose`` and ``--db URL`` moved before the subcommand.

    They are the root command's options; users type them after the subcommand as often.
    Only what comes before a ``--`` moves: what follows it is the command's own.
    """
    end = args.index("--") if "--" in args else len(args)
    moved: list[str] = []
    rest: list[str] = []
    words = iter(args[:end])
    for word in words:
        if word in ("-v", "--verbose") or word.startswith("--db="):
            moved.append(word)
        elif word == "--db":
            moved += [word, next(words, "")]
        else:
            rest.append(word)
    return [*moved, *rest, *args[end:]]
