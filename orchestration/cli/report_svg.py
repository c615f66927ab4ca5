"""The run report's drawings: the task graph and the attempt timeline, as inline SVG.

Both are laid out here in Python with fixed pixel sizes, so the page needs no script and no
layout engine: a browser only paints them. Text is measured by a rough average glyph width,
which is enough to space legend entries and to cut long task ids (the full id is always in
the element's ``<title>``, shown on hover). Every user or model string is ``html.escape``d.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import datetime
from graphlib import TopologicalSorter
from html import escape

from orchestration.cli.report_data import (
    STATUS_COLORS,
    UNKNOWN_STATUS,
    AttemptReport,
    RunReport,
    TaskReport,
)

__all__ = ["SVG_CSS", "dag_svg", "timeline_svg"]

SVG_CSS = """
svg{display:block;font-family:inherit}
svg .id{font-size:12px;font-weight:600;fill:#1f2933}
svg .meta,svg .label{font-size:12px;fill:#37474f}
svg .legend,svg .tick{font-size:11px;fill:#455a64}
svg .attempt{font-size:10px;fill:#263238}
"""

# No red here: red marks failed attempts on the timeline.
_SERIES = ["#4e79a7", "#f28e2b", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f", "#bab0ac"]
_FAILED = "#d50000"
_CHAR_W, _SMALL_CHAR_W = 7.0, 6.0  # average glyph widths at 12px and 10px
_PAD = 12
_NODE_W, _NODE_H, _COL_GAP, _ROW_GAP = 176, 46, 48, 12
_LABEL_W, _PLOT_W, _ROW_H, _AXIS_H, _MIN_BAR = 200, 840, 26, 22, 4.0


def dag_svg(tasks: Sequence[TaskReport]) -> str:
    """The dependency graph: columns by depth, one box per task, arrows from dependencies."""
    legend, legend_h = _legend(
        [(status, *colors) for status, colors in STATUS_COLORS.items()], _NODE_W * 5
    )
    places = _layout(tasks, top=legend_h + _PAD)
    width = max([x for x, _ in places.values()] + [0]) + _NODE_W + 2 * _PAD
    height = max([y for _, y in places.values()] + [0]) + _NODE_H + _PAD
    edges = [
        _edge(places[dep], places[task.task_id])
        for task in tasks
        for dep in task.depends_on
        if dep in places
    ]
    nodes = [_node(task, *places[task.task_id]) for task in tasks]
    marker = (
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'fill="#78909c"/></marker></defs>'
    )
    return _svg(max(width, _NODE_W * 5), height, [marker, legend, *edges, *nodes], "DAG")


def _layout(tasks: Sequence[TaskReport], top: float) -> dict[str, tuple[float, float]]:
    """Top-left corner of each box; a crowded depth wraps into several columns."""
    depth = _depths(tasks)
    columns: dict[int, list[str]] = {}
    for task in tasks:
        columns.setdefault(depth[task.task_id], []).append(task.task_id)
    # About as many rows as columns when a level is wide (200 roots: 15 x 14, not 200 x 1).
    rows = max(12, math.isqrt(len(tasks)) + 1)
    places: dict[str, tuple[float, float]] = {}
    column = 0
    for level in sorted(columns):
        for index, task_id in enumerate(columns[level]):
            sub, row = divmod(index, rows)
            x = _PAD + (column + sub) * (_NODE_W + _COL_GAP)
            places[task_id] = (x, top + row * (_NODE_H + _ROW_GAP))
        column += -(-len(columns[level]) // rows)
    return places


def _depths(tasks: Sequence[TaskReport]) -> dict[str, int]:
    """Length of the longest path from a root to each task."""
    known = {task.task_id for task in tasks}
    deps = {task.task_id: [d for d in task.depends_on if d in known] for task in tasks}
    depth: dict[str, int] = {}
    for task_id in TopologicalSorter(deps).static_order():
        depth[task_id] = max((depth[d] + 1 for d in deps[task_id]), default=0)
    return depth


def _edge(start: tuple[float, float], end: tuple[float, float]) -> str:
    x1, y1 = start[0] + _NODE_W, start[1] + _NODE_H / 2
    x2, y2 = end[0] - 2, end[1] + _NODE_H / 2
    bend = max((x2 - x1) / 2, 20)
    return (
        f'<path d="M{x1:.1f},{y1:.1f} C{x1 + bend:.1f},{y1:.1f} {x2 - bend:.1f},{y2:.1f} '
        f'{x2:.1f},{y2:.1f}" fill="none" stroke="#78909c" stroke-width="1.4" '
        'marker-end="url(#arrow)"/>'
    )


def _node(task: TaskReport, x: float, y: float) -> str:
    fill, stroke = STATUS_COLORS.get(task.status, UNKNOWN_STATUS)
    meta = f"{_cut(task.agent, 14)} · {task.status}"
    shown = escape(_cut_id(task.task_id, 22))
    return (
        f"<g><title>{escape(task.task_id)} ({escape(task.agent)}): {escape(task.status)}</title>"
        f'<rect x="{x:.1f}" y="{y:.1f}" width="{_NODE_W}" height="{_NODE_H}" rx="6" '
        f'fill="{fill}" stroke="{stroke}" stroke-width="1.5"/>'
        f'<text x="{x + 8:.1f}" y="{y + 18:.1f}" class="id">{shown}</text>'
        f'<text x="{x + 8:.1f}" y="{y + 36:.1f}" class="meta">{escape(meta)}</text></g>'
    )


def timeline_svg(report: RunReport) -> str:
    """Every attempt as a bar: x is seconds since the run started, one row per task."""
    origin = min([report.started_at, *(a.started_at for a in report.attempts)])
    end = max([report.finished_at or origin, *(a.finished_at for a in report.attempts)])
    span = max((end - origin).total_seconds(), 0.01)
    colors = _series_colors(report.attempts)
    items = [(f"{method} · {provider}", color, color) for (method, provider), color in colors]
    legend, top = _legend([*items, ("failed attempt", "url(#hatch)", _FAILED)], _PLOT_W)
    top += _AXIS_H
    height = top + _ROW_H * len(report.tasks) + _PAD

    def scale(moment: datetime) -> float:
        return _LABEL_W + (moment - origin).total_seconds() / span * _PLOT_W

    parts = [_HATCH, legend, *_axis(span, top, height)]
    series = dict(colors)
    tried: dict[str, list[AttemptReport]] = {}
    for attempt in report.attempts:
        tried.setdefault(attempt.task_id, []).append(attempt)
    for row, task in enumerate(report.tasks):
        y = top + row * _ROW_H
        parts += _row(task, y, row)
        parts += _bars(tried.get(task.task_id, []), y, scale, series)
    return _svg(_LABEL_W + _PLOT_W + 3 * _PAD, height, parts, "Timeline")


_HATCH = (
    '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
    f'patternTransform="rotate(45)"><line x1="0" y1="0" x2="0" y2="6" stroke="{_FAILED}" '
    'stroke-width="1.5"/></pattern></defs>'
)


def _series_colors(attempts: Sequence[AttemptReport]) -> list[tuple[tuple[str, str], str]]:
    """A color per (method, provider), in order of first appearance."""
    keys = list(dict.fromkeys((a.execution_method, a.provider or "?") for a in attempts))
    return [(key, _SERIES[index % len(_SERIES)]) for index, key in enumerate(keys)]


def _axis(span: float, top: float, bottom: float) -> list[str]:
    step = _tick_step(span)
    parts = [f'<text x="{_PAD}" y="{top - 8:.1f}" class="tick">seconds since start</text>']
    for index in range(int(span / step + 1e-9) + 1):
        seconds = round(index * step, 6)
        x = _LABEL_W + seconds / span * _PLOT_W
        parts.append(
            f'<line x1="{x:.1f}" y1="{top - 4:.1f}" x2="{x:.1f}" y2="{bottom - _PAD:.1f}" '
            'stroke="#cfd8dc" stroke-width="1"/>'
            f'<text x="{x:.1f}" y="{top - 8:.1f}" class="tick">{seconds:g}s</text>'
        )
    return parts


def _tick_step(span: float) -> float:
    """A round step (1, 2 or 5 times a power of ten) giving at most about eight ticks."""
    raw = span / 8
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if raw <= m * magnitude)


def _row(task: TaskReport, y: float, index: int) -> list[str]:
    stripe = "#f5f7f8" if index % 2 else "#ffffff"
    if task.attempts:
        label = _cut_id(task.task_id, 27)
    else:  # never tried: say why not (skipped, budget_exceeded...)
        label = _cut(f"{_cut_id(task.task_id, 20)} · {task.status}", 27)
    return [
        f'<rect x="0" y="{y:.1f}" width="{_LABEL_W + _PLOT_W + 3 * _PAD}" height="{_ROW_H}" '
        f'fill="{stripe}"/>',
        f'<text x="{_PAD}" y="{y + 17:.1f}" class="label"><title>{escape(task.task_id)}</title>'
        f"{escape(label)}</text>",
    ]


def _bars(
    attempts: Sequence[AttemptReport],
    y: float,
    scale: Callable[[datetime], float],
    series: dict[tuple[str, str], str],
) -> list[str]:
    """One bar per attempt, each pushed right of the last so that instant ones stay apart."""
    parts = []
    bar_end = label_end = 0.0
    for attempt in attempts:
        x = max(scale(attempt.started_at), bar_end + 1)
        width = max(scale(attempt.finished_at) - scale(attempt.started_at), _MIN_BAR)
        color = series[(attempt.execution_method, attempt.provider or "?")]
        label = f"#{attempt.attempt}"
        label_x = max(x, label_end + 2)
        failed = attempt.status != "succeeded"
        outline = f'stroke="{_FAILED}" stroke-width="2"' if failed else 'stroke="none"'
        box = f'x="{x:.1f}" y="{y + 11:.1f}" width="{width:.1f}" height="12"'
        parts.append(
            f"<g><title>{escape(_attempt_title(attempt))}</title>"
            f'<rect {box} rx="2" class="bar" fill="{color}" {outline}/>'
            + (f'<rect {box} fill="url(#hatch)"/>' if failed else "")
            + f'<text x="{label_x:.1f}" y="{y + 9:.1f}" class="attempt">{label}</text></g>'
        )
        bar_end, label_end = x + width, label_x + _SMALL_CHAR_W * len(label) + 3
    return parts


def _attempt_title(attempt: AttemptReport) -> str:
    what = ", ".join(
        part
        for part in (attempt.execution_method, attempt.provider, attempt.model, attempt.status)
        if part
    )
    error = f" ({attempt.error_type})" if attempt.error_type else ""
    if attempt.validation == "refused" and attempt.error_message:
        error = f" (refused: {attempt.error_message.removeprefix('invalid_output: ')})"
    seconds = (attempt.finished_at - attempt.started_at).total_seconds()
    return f"{attempt.task_id} #{attempt.attempt}: {what}{error}, {seconds:.2f}s"


def _legend(items: Sequence[tuple[str, str, str]], width: float) -> tuple[str, float]:
    """Swatches and labels, wrapping at ``width``; returns the SVG and its height."""
    parts = []
    x, y = float(_PAD), float(_PAD)
    for label, fill, stroke in items:
        step = 22 + _CHAR_W * len(label) + 14
        if x + step > width and x > _PAD:
            x, y = float(_PAD), y + 20
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="16" height="12" rx="2" fill="{fill}" '
            f'stroke="{stroke}" stroke-width="1.5"/>'
            f'<text x="{x + 22:.1f}" y="{y + 11:.1f}" class="legend">{escape(label)}</text>'
        )
        x += step
    return "".join(parts), y + 20


def _svg(width: float, height: float, parts: Sequence[str], label: str) -> str:
    return (
        f'<svg width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
        f'role="img" aria-label="{label}">' + "".join(parts) + "</svg>"
    )


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cut_id(text: str, limit: int) -> str:
    """A task id in ``limit`` characters: its start and its end, the middle cut.

    Ids of one DAG often share a long start (``build-backend-part-1``, ``...-part-2``):
    cut at the end they would all read the same.
    """
    if len(text) <= limit:
        return text
    tail = (limit - 1) // 2
    return f"{text[: limit - 1 - tail]}…{text[-tail:]}"
