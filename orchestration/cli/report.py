"""A run's report as terminal tables, JSON, or one self-contained HTML page.

The report is read from the ledger once (``cli.report_data.load_report``); every format
here only lays it out, so all three show the same numbers.

The HTML page is one file meant to be attached to a ticket or opened from disk long after
the run: its CSS and SVG are inline (the drawings are laid out in Python, in
``report_svg``) and it fetches nothing, so it works offline from a ``file://`` URL and runs
no script. Task ids and errors come from users and models, so every string goes through
``html.escape`` (and through ``rich.text.Text`` in the terminal, where ``[`` is markup).
"""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict
from datetime import datetime
from html import escape
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestration.cli.report_data import (
    STATUS_COLORS,
    UNKNOWN_STATUS,
    AttemptReport,
    RunReport,
    TaskReport,
    ToolCallReport,
)
from orchestration.cli.report_svg import SVG_CSS, dag_svg, timeline_svg
from orchestration.ledger.history import fmt_cost, fmt_seconds, fmt_tokens

__all__ = ["print_report", "render_html", "report_json", "summary_line"]


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
    fill, stroke = STATUS_COLORS.get(report.status, UNKNOWN_STATUS)
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
        f"<section><h2>Prompts and outputs</h2>{_exchanges(report)}</section>"
        f"<section><h2>Attempts</h2>{_html_table(_ATTEMPT_COLUMNS, attempts)}</section>"
        f"{_tool_calls_section(report)}"
        "</body></html>\n"
    )


_TASK_COLUMNS = ["task", "agent", "status", "method", "provider", "model", "tokens in/out"]
_TASK_COLUMNS += ["cost", "latency", "attempts", "error"]
_ATTEMPT_COLUMNS = ["task", "#", "method", "provider", "model", "status", "start", "duration"]
_ATTEMPT_COLUMNS += ["tokens in/out", "cost", "error"]


_TOOL_COLUMNS = ["task", "attempt", "turn", "tool", "arguments", "result", "duration", "error"]


def _tool_cells(call: ToolCallReport) -> list[str]:
    return [
        call.task_id,
        str(call.attempt),
        str(call.turn),
        call.tool,
        call.arguments or "",
        call.result or "",
        fmt_seconds(call.duration_s),
        call.error or "",
    ]


def _tool_calls_section(report: RunReport) -> str:
    """The tool calls' table (nothing for a run whose models called no tool)."""
    if not report.tool_calls:
        return ""
    rows = [_tool_cells(call) for call in report.tool_calls]
    return f"<section><h2>Tool calls</h2>{_html_table(_TOOL_COLUMNS, rows)}</section>"


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
        attempt.error_message or attempt.error_type or "",
    ]


# A page stays openable with thousands of tasks; `orchestra output` prints any text whole.
SHOWN_CHARS = 20_000


def _exchanges(report: RunReport) -> str:
    """Each task's prompt and output (or error), collapsed under a one-line summary."""
    items = []
    for task in report.tasks:
        fill, stroke = STATUS_COLORS.get(task.status, UNKNOWN_STATUS)
        answer = ("Output", task.output) if task.output is not None else ("Error", task.error)
        sizes = " · ".join(
            f"{label.lower()} {len(text):,} chars"
            for label, text in (("Prompt", task.prompt), answer)
            if text is not None
        )
        panes = "".join(
            f"<div><h3>{label}</h3>{_text_block(text, report.run_id, task.task_id)}</div>"
            for label, text in (("Prompt", task.prompt), answer)
        )
        items.append(
            f'<details class="io"><summary><b>{escape(task.task_id)}</b> '
            f'<span class="badge" style="background:{fill};border-color:{stroke}">'
            f'{escape(task.status)}</span> <span class="muted">{sizes}</span></summary>'
            f'<div class="panes">{panes}</div></details>'
        )
    return "".join(items)


def _text_block(text: str | None, run_id: str, task_id: str) -> str:
    if text is None:
        return '<p class="muted">none recorded</p>'
    if len(text) <= SHOWN_CHARS:
        return f"<pre>{escape(text)}</pre>"
    rest = len(text) - SHOWN_CHARS
    command = f"orchestra output {run_id[:12]} {shlex.quote(task_id)}"
    return (
        f'<pre>{escape(text[:SHOWN_CHARS])}</pre><p class="muted">{rest:,} more characters: '
        f"<code>{escape(command)}</code> prints it whole</p>"
    )


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
    tasks = [[*cells[:-1], _cut(cells[-1])] for cells in map(_task_cells, report.tasks)]
    attempts = [
        [*cells[:-1], _cut(cells[-1])]
        for cells in (_attempt_cells(a, report.started_at) for a in report.attempts)
    ]
    console.print(_rich_table(f"Tasks of {report.run_id}", _TASK_COLUMNS, tasks))
    console.print(_rich_table(f"Attempts of {report.run_id}", _ATTEMPT_COLUMNS, attempts))
    if report.tool_calls:
        calls = [
            [*cells[:4], _cut(cells[4]), _cut(cells[5]), cells[6], _cut(cells[7])]
            for cells in map(_tool_cells, report.tool_calls)
        ]
        console.print(_rich_table(f"Tool calls of {report.run_id}", _TOOL_COLUMNS, calls))


def _cut(error: str, limit: int = 80) -> str:
    """An error's lines joined, cut at ``limit`` characters (the page shows it whole)."""
    joined = " ".join(line.strip() for line in error.splitlines() if line.strip())
    return joined if len(joined) <= limit else joined[: limit - 3] + "..."


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
details.io{border:1px solid #e0e0e0;border-radius:4px;margin:0 0 6px}
details.io summary{cursor:pointer;padding:4px 10px;background:#f5f7f8} .muted{color:#607d8b}
.panes{display:grid;grid-template-columns:1fr 1fr;gap:12px;padding:4px 10px}
.panes h3{font-size:13px;margin:6px 0} .panes>div{min-width:0}
pre{white-space:pre-wrap;word-break:break-word;margin:0;padding:6px;background:#fafafa;
font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;max-height:40em;overflow:auto}
"""
