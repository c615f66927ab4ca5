"""A report on one run: its tasks, their dependency graph and a timeline of every attempt.

``load_report`` reads a run back from the ledger into plain dataclasses once; the terminal
tables, the JSON and the HTML page only format them, so all three show the same numbers.

The HTML page is one file meant to be attached to a ticket or opened from disk long after
the run: its CSS and SVG are inline (the drawings are laid out in Python, in
``report_svg``) and it fetches nothing, so it works offline from a ``file://`` URL and runs
no script. Task ids and errors come from users and models, so every string goes through
``html.escape`` (and through ``rich.text.Text`` in the terminal, where ``[`` is markup).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from html import escape
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlmodel import SQLModel, col, select

from orchestration.history import fmt_cost, fmt_seconds, fmt_tokens, resolve_run
from orchestration.ledger import Ledger
from orchestration.ledger_schema import AttemptRow, RunRow, RunTaskRow, TaskRunRow
from orchestration.report_svg import STATUS_COLORS, SVG_CSS, dag_svg, timeline_svg

__all__ = [
    "AttemptReport",
    "RunReport",
    "TaskReport",
    "load_report",
    "print_report",
    "render_html",
    "report_json",
    "summary_line",
]


@dataclass(frozen=True)
class TaskReport:
    """A task of the run, as defined and as it ended (``pending`` if it never started)."""

    task_id: str
    agent: str
    status: str
    depends_on: tuple[str, ...]
    execution_method: str | None = None
    provider: str | None = None
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None  # None: unknown
    latency_s: float | None = None
    error: str | None = None
    attempts: int = 0


@dataclass(frozen=True)
class AttemptReport:
    """One try of a task; times are in UTC."""

    task_id: str
    attempt: int
    execution_method: str
    provider: str | None
    model: str | None
    status: str
    error_type: str | None
    started_at: datetime
    finished_at: datetime
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None


@dataclass(frozen=True)
class RunReport:
    """A run with its tasks in definition order and its attempts in the order they ended."""

    run_id: str
    name: str | None
    status: str
    started_at: datetime
    finished_at: datetime | None
    tasks: tuple[TaskReport, ...]
    attempts: tuple[AttemptReport, ...]

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to finish; None while the run is unfinished."""
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def input_tokens(self) -> int | None:
        """Input tokens of the tasks' final attempts, as ``orchestra runs`` counts them."""
        return _total(task.input_tokens for task in self.tasks)

    @property
    def output_tokens(self) -> int | None:
        """Output tokens of the tasks' final attempts."""
        return _total(task.output_tokens for task in self.tasks)

    @property
    def cost_usd(self) -> float | None:
        """Total cost, or None when any task that succeeded has an unknown price."""
        succeeded = [task for task in self.tasks if task.status == "succeeded"]
        if any(task.cost_usd is None for task in succeeded):
            return None
        return sum(task.cost_usd or 0.0 for task in self.tasks)


def load_report(ledger: Ledger, run_prefix: str) -> RunReport:
    """Read a run, its tasks and its attempts back from the ledger.

    Args:
        ledger: The ledger holding the run.
        run_prefix: The run id or its first characters.

    Raises:
        ConfigurationError: No run, or several, match ``run_prefix``.
    """
    run_id = resolve_run(ledger, run_prefix)
    with ledger.session() as session:
        run = session.exec(select(RunRow).where(col(RunRow.id) == run_id)).one()
        definitions = session.exec(
            select(RunTaskRow)
            .where(col(RunTaskRow.run_id) == run_id)
            .order_by(col(RunTaskRow.position))
        ).all()
        states = session.exec(select(TaskRunRow).where(col(TaskRunRow.run_id) == run_id)).all()
        tried = session.exec(
            select(AttemptRow).where(col(AttemptRow.run_id) == run_id).order_by(col(AttemptRow.id))
        ).all()
        by_id = {state.task_id: state for state in states}
        tasks = tuple(
            _task(json.loads(d.definition), by_id.pop(d.task_id, None)) for d in definitions
        )
        # A task recorded without a definition (none is expected) still belongs in the report.
        tasks += tuple(_task({"task_id": s.task_id}, s) for s in by_id.values())
        attempts = tuple(AttemptReport(**_columns(row, AttemptReport)) for row in tried)
    return RunReport(run_id, run.name, run.status, run.started_at, run.finished_at, tasks, attempts)


def _task(definition: dict[str, Any], state: TaskRunRow | None) -> TaskReport:
    """A task from its definition (an ``AgentTask`` as JSON) and its ``task_runs`` row."""
    depends_on = tuple(definition.get("depends_on") or ())
    if state is None:
        return TaskReport(
            definition["task_id"], definition.get("agent") or "", "pending", depends_on
        )
    return TaskReport(depends_on=depends_on, **_columns(state, TaskReport, skip="depends_on"))


def _columns(row: SQLModel, report: type[Any], skip: str = "") -> dict[str, Any]:
    """The row's values for the fields of ``report``, a dataclass naming them alike."""
    return {f.name: getattr(row, f.name) for f in fields(report) if f.name != skip}


def report_json(report: RunReport) -> dict[str, Any]:
    """The report as JSON-ready values: dicts, lists, datetimes as ISO strings, and totals."""
    totals = ("duration_s", "input_tokens", "output_tokens", "cost_usd")
    body = asdict(report) | {name: getattr(report, name) for name in totals}
    return {key: _plain(value) for key, value in body.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def summary_line(report: RunReport) -> str:
    """One line: run, status, tasks by status, tokens, cost and duration."""
    name = f" ({report.name})" if report.name else ""
    return (
        f"run {report.run_id}{name}: {report.status}; {len(report.tasks)} tasks "
        f"({_status_counts(report)}); tokens in/out "
        f"{fmt_tokens(report.input_tokens, report.output_tokens)}; "
        f"cost {fmt_cost(report.cost_usd)}; {fmt_seconds(report.duration_s)}"
    )


def render_html(report: RunReport) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG, nothing fetched)."""
    fill, stroke = STATUS_COLORS.get(report.status, ("#ffffff", "#9e9e9e"))
    badge = f'<span class="badge" style="background:{fill};border-color:{stroke}">'
    facts = [
        ("run", escape(report.run_id)),
        ("name", escape(report.name or "-")),
        ("status", f"{badge}{escape(report.status)}</span>"),
        ("started (UTC)", report.started_at.strftime("%Y-%m-%d %H:%M:%S")),
        ("duration", fmt_seconds(report.duration_s)),
        ("tasks", escape(f"{len(report.tasks)}: {_status_counts(report)}")),
        ("tokens in/out", fmt_tokens(report.input_tokens, report.output_tokens)),
        ("cost", fmt_cost(report.cost_usd)),
    ]
    header = "".join(f"<div><dt>{key}</dt><dd>{value}</dd></div>" for key, value in facts)
    title = escape(f"Run {report.name or report.run_id}")
    tasks = _html_table(_TASK_COLUMNS, [_task_cells(task) for task in report.tasks])
    attempts = [_attempt_cells(a, report.started_at) for a in report.attempts]
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_CSS}{SVG_CSS}</style></head><body>"
        f"<header><h1>{title}</h1><dl>{header}</dl></header>"
        f'<section><h2>Graph</h2><div class="scroll">{dag_svg(report.tasks)}</div></section>'
        f'<section><h2>Timeline</h2><div class="scroll">{timeline_svg(report)}</div></section>'
        f"<section><h2>Tasks</h2>{tasks}</section>"
        f"<section><h2>Attempts</h2>{_html_table(_ATTEMPT_COLUMNS, attempts)}</section>"
        "</body></html>\n"
    )


_TASK_COLUMNS = ["task", "agent", "status", "method", "provider", "model", "tokens in/out"]
_TASK_COLUMNS += ["cost", "latency", "attempts", "error"]
_ATTEMPT_COLUMNS = ["task", "#", "method", "provider", "model", "status", "start", "duration"]
_ATTEMPT_COLUMNS += ["tokens in/out", "cost", "error type"]


def _task_cells(task: TaskReport) -> list[str]:
    return [
        task.task_id,
        task.agent,
        task.status,
        task.execution_method or "",
        task.provider or "",
        task.model or "",
        fmt_tokens(task.input_tokens, task.output_tokens),
        fmt_cost(task.cost_usd) if task.attempts else "-",
        fmt_seconds(task.latency_s),
        str(task.attempts),
        task.error or "",
    ]


def _attempt_cells(attempt: AttemptReport, run_started: datetime) -> list[str]:
    return [
        attempt.task_id,
        str(attempt.attempt),
        attempt.execution_method,
        attempt.provider or "",
        attempt.model or "",
        attempt.status,
        f"+{(attempt.started_at - run_started).total_seconds():.2f}s",
        fmt_seconds((attempt.finished_at - attempt.started_at).total_seconds()),
        fmt_tokens(attempt.input_tokens, attempt.output_tokens),
        fmt_cost(attempt.cost_usd),
        attempt.error_type or "",
    ]


def _html_table(columns: list[str], rows: Iterable[list[str]]) -> str:
    """A table whose last column is an error (wrapped, in red)."""
    head = "".join(f"<th>{column}</th>" for column in columns)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{escape(cell)}</td>" for cell in row[:-1])
        + f'<td class="error">{escape(row[-1])}</td></tr>'
        for row in rows
    )
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def print_report(report: RunReport, console: Console) -> None:
    """Print the run's summary line, then its tasks and its attempts as rich tables."""
    console.print(Text(summary_line(report)))
    # A whole error (a traceback, a page of HTML) would drown the table; the page has it all.
    tasks = [[*cells[:-1], cells[-1][:80]] for cells in map(_task_cells, report.tasks)]
    attempts = [_attempt_cells(a, report.started_at) for a in report.attempts]
    console.print(_rich_table(f"Tasks of {report.run_id}", _TASK_COLUMNS, tasks))
    console.print(_rich_table(f"Attempts of {report.run_id}", _ATTEMPT_COLUMNS, attempts))


def _rich_table(title: str, columns: list[str], rows: Iterable[list[str]]) -> Table:
    table = Table(title=Text(title))
    for index, column in enumerate(columns):
        table.add_column(column, no_wrap=index == 0)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


def _status_counts(report: RunReport) -> str:
    counts = Counter(task.status for task in report.tasks)
    return ", ".join(f"{n} {status}" for status, n in counts.items())


def _total(values: Iterable[int | None]) -> int | None:
    """The sum, or None when no value is known (as SQL's SUM)."""
    known = [value for value in values if value is not None]
    return sum(known) if known else None


_CSS = """
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2933}
header{background:#263238;color:#fff;padding:16px 24px} h1{margin:0 0 10px;font-size:20px}
dl{display:flex;flex-wrap:wrap;gap:8px 32px;margin:0} dd{margin:0;font-weight:600}
dt{font-size:11px;text-transform:uppercase;letter-spacing:.04em;opacity:.75}
.badge{padding:0 8px;border:1px solid;border-radius:9px;color:#1f2933}
section{padding:8px 24px} h2{font-size:16px;margin:12px 0 8px}
.scroll{overflow:auto;max-width:100%;border:1px solid #e0e0e0;border-radius:4px}
table{border-collapse:collapse;font-size:13px} th{background:#f5f7f8;white-space:nowrap}
th,td{padding:4px 10px;border-bottom:1px solid #eceff1;text-align:left;vertical-align:top}
td.error{white-space:pre-wrap;word-break:break-word;min-width:20em;color:#b71c1c}
"""
