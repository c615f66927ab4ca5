"""The run report: loading a run, the HTML page (checked in headless Chromium), the CLI."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import zlib
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from typer.testing import CliRunner

from llm_abstractions import ConfigurationError, LlmFactory, LlmRequest, LLMServerError
from llm_abstractions.testing import FunctionLlm
from orchestration import AgentRegistry, AgentTask, RetryPolicy, TaskExecutor
from orchestration.cli import app
from orchestration.cli.report import SHOWN_CHARS, render_html
from orchestration.cli.report_data import AttemptReport, RunReport, TaskReport, load_report
from orchestration.ledger import Ledger
from tests import loopback

runner = CliRunner()
WIDE = {"COLUMNS": "220"}
EVIL = "<script>alert('id')</script>"
TASK_IDS = ["fetch", EVIL, "summarize", "fallback"]


@pytest.fixture
def chat_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with loopback.chat_server(unavailable=1) as url:
        monkeypatch.setenv("OPENAI_BASE_URL", url)
        yield None


async def make_run() -> str:
    """A run where EVIL fails, its dependent is skipped and "fallback" needs two attempts."""

    def handler(request: LlmRequest) -> str:
        if request.metadata["task_id"] == EVIL:
            raise LLMServerError("<script>alert(1)</script> broke", status_code=500)
        return "done"

    LlmFactory.register_provider(
        "fake", lambda **_: FunctionLlm(handler, latency=0.02), replace=True
    )
    registry = AgentRegistry()
    registry.register_agent("worker", "fake")
    # Not served in-process, so the executor falls back to the bundled script.
    registry.register_agent("gpt", "openai-gpt", model="gpt-4o-mini", api_key="sk-loopback-1234")
    tasks = [
        AgentTask(task_id="fetch", description="fetch", agent="worker"),
        AgentTask(task_id=EVIL, description="x", agent="worker", depends_on=("fetch",)),
        AgentTask(task_id="summarize", description="s", agent="worker", depends_on=(EVIL,)),
        AgentTask(task_id="fallback", description="f", agent="gpt", depends_on=("fetch",)),
    ]
    executor = TaskExecutor(registry=registry, retry=RetryPolicy.never())
    try:
        return (await executor.run(tasks, name="report-test")).run_id
    finally:
        await executor.aclose()


@pytest.fixture
def run_id(chat_server: None) -> str:
    return anyio.run(make_run)


@pytest.mark.anyio
async def test_load_report_reads_tasks_attempts_and_totals(chat_server: None) -> None:
    run_id = await make_run()
    report = load_report(Ledger(), run_id[:10])
    assert (report.run_id, report.name, report.status) == (run_id, "report-test", "failed")
    assert [t.task_id for t in report.tasks] == TASK_IDS
    assert [t.status for t in report.tasks] == ["succeeded", "failed", "skipped", "succeeded"]
    tasks = {t.task_id: t for t in report.tasks}
    assert tasks["summarize"].depends_on == (EVIL,) and tasks["summarize"].attempts == 0
    assert tasks["fallback"].execution_method == "script" and tasks["fallback"].attempts == 2
    assert tasks["fallback"].cost_usd is not None and tasks["fallback"].cost_usd > 0
    assert "<script>alert(1)</script> broke" in (tasks[EVIL].error or "")
    tried = [(a.attempt, a.execution_method, a.status) for a in report.attempts]
    assert tried.count((1, "llm_factory", "succeeded")) == 1  # fetch
    fallback = [a for a in report.attempts if a.task_id == "fallback"]
    assert [(a.attempt, a.execution_method, a.status) for a in fallback] == [
        (1, "llm_factory", "failed"),
        (2, "script", "succeeded"),
    ]
    assert all(a.started_at <= a.finished_at for a in report.attempts)
    assert report.cost_usd is None  # "fetch" succeeded at an unknown price
    assert report.input_tokens == (tasks["fetch"].input_tokens or 0) + 11
    with pytest.raises(ConfigurationError, match="No run 'nope'"):
        load_report(Ledger(), "nope")


def test_html_is_escaped_and_self_contained(run_id: str) -> None:
    page = render_html(load_report(Ledger(), run_id))
    for task_id in (t for t in TASK_IDS if t != EVIL):
        assert f">{task_id}<" in page
    assert "&lt;script&gt;alert(&#x27;id&#x27;)&lt;/script&gt;" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; broke" in page
    assert "<script" not in page.lower()
    for status in ("succeeded", "failed", "skipped"):
        assert f"worker · {status}" in page  # a DAG node
    assert page.count("<svg") == 2 and "url(#hatch)" in page  # the failed attempt is hatched
    for external in ("http://", "https://", "src=", "<link", "@import", "href="):
        assert external not in page


def test_page_shows_each_tasks_prompt_and_output_collapsed(run_id: str) -> None:
    page = render_html(load_report(Ledger(), run_id))
    blocks = re.findall(r'<details class="io">(.*?)</details>', page, re.S)
    assert len(blocks) == len(TASK_IDS) and "<details open" not in page
    # Escaped on the page: the task id and the error hold markup.
    assert "<b>&lt;script&gt;alert(&#x27;id&#x27;)&lt;/script&gt;</b>" in blocks[1]
    assert "<pre>LLMServerError: &lt;script&gt;alert(1)&lt;/script&gt; broke</pre>" in blocks[1]
    fetch, evil, summarize, fallback = (html.unescape(block) for block in blocks)
    assert "<h3>Output</h3><pre>done</pre>" in fetch
    # The prompt the model read, its dependency's output included, not the one defined.
    assert "<h3>Prompt</h3><pre>f\n\nOutput of task fetch:\ndone</pre>" in fallback
    assert "<h3>Error</h3><pre>LLMServerError: <script>alert(1)</script> broke" in evil
    assert "<h3>Prompt</h3><pre>s</pre>" in summarize  # never sent: the prompt as defined
    assert "<h3>Error</h3><pre>not run: task" in summarize


def test_page_cuts_a_huge_output_and_says_how_to_read_it_whole() -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    huge = "x" * (SHOWN_CHARS + 1234) + "<end>"
    task = TaskReport("my task", "a", "succeeded", (), prompt="p", output=huge, attempts=1)
    page = render_html(RunReport("0123456789abcdef", None, "succeeded", start, start, (task,), ()))
    assert "x" * SHOWN_CHARS in page and "&lt;end&gt;" not in page
    assert "1,239 more characters" in page
    assert "<code>orchestra output 0123456789ab &#x27;my task&#x27;</code> prints it whole" in page


def test_cli_report_prints_writes_html_and_json(run_id: str, tmp_path: Path) -> None:
    table = runner.invoke(app, ["report", run_id[:8]], env=WIDE)
    assert table.exit_code == 0, table.output
    assert f"run {run_id} (report-test): failed" in table.output
    for needle in (*TASK_IDS, "LLMServerError", "Attempts of"):
        assert needle in table.output
    page = tmp_path / "out" / "report.html"
    page.parent.mkdir()
    written = runner.invoke(app, ["report", run_id, "--html", str(page)])
    assert written.exit_code == 0, written.output
    assert str(page.resolve()) in written.output and "cost unknown" in written.output
    assert EVIL not in page.read_text() and "&lt;script&gt;" in page.read_text()
    body = json.loads(runner.invoke(app, ["report", run_id, "--json"]).output)
    assert body["run_id"] == run_id and body["cost_usd"] is None
    assert [t["task_id"] for t in body["tasks"]] == TASK_IDS
    for attempt in body["attempts"]:
        started, finished = attempt["started_at"], attempt["finished_at"]
        assert datetime.fromisoformat(started) <= datetime.fromisoformat(finished)


def test_cli_report_unknown_run_is_a_clear_error(run_id: str) -> None:
    unknown = runner.invoke(app, ["report", "zzzz"])
    assert unknown.exit_code == 2
    assert "No run 'zzzz'" in unknown.output


def test_page_scales_to_200_tasks_and_shows_instant_attempts() -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    statuses = ["succeeded", "failed", "skipped", "cancelled", "running", "pending"]
    tasks = tuple(
        TaskReport(f"t{i}", "a", statuses[i % 6], (f"t{i - 1}",) if i % 4 == 3 else (), attempts=1)
        for i in range(200)
    )
    attempts = tuple(
        AttemptReport(f"t{i}", 1, "llm_factory", "fake", None, "succeeded", None, moment, moment)
        for i, moment in ((i, start + timedelta(seconds=i)) for i in range(200))
    )
    end = start + timedelta(seconds=200)
    page = render_html(RunReport("r1", None, "failed", start, end, tasks, attempts))
    assert all(f">t{i}<" in page for i in range(200))
    dag_height, timeline_height = (
        int(h) for h in re.findall(r'<svg width="\d+" height="(\d+)"', page)
    )
    assert dag_height < 1200  # 150 roots wrap into columns instead of one long column
    assert timeline_height < 200 * 30
    bar_widths = re.findall(r'width="([\d.]+)" height="12" rx="2" class="bar"', page)
    assert len(bar_widths) == 200 and min(float(w) for w in bar_widths) >= 4


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="no chromium or chromium-browser on PATH")
def test_page_renders_in_headless_chromium(run_id: str, tmp_path: Path) -> None:
    page, shot = tmp_path / "report.html", tmp_path / "shot.png"
    assert runner.invoke(app, ["report", run_id, "--html", str(page)]).exit_code == 0
    screenshot(page, shot, tmp_path)
    width, height, pixels = decode_png(shot.read_bytes())
    assert (width, height) == (1200, 900)
    inked = sum(n for color, n in pixels.items() if min(color) < 240)
    assert inked / (width * height) > 0.02, "the page rendered (nearly) blank"
    common = [color for color, n in pixels.items() if n >= 100]
    assert len(common) >= 6, f"too few colors: {common}"
    for fill in ((0xC8, 0xE6, 0xC9), (0xFF, 0xCD, 0xD2), (0xE0, 0xE0, 0xE0)):  # DAG statuses
        assert any(max(abs(a - b) for a, b in zip(fill, c, strict=True)) <= 4 for c in common)
    # The document as the browser parsed it: every part there, and no element made of a task id.
    dom = chromium(page, tmp_path, "--dump-dom")[0].decode()
    assert dom.count("<svg") == 2 and dom.count("<section>") == 5
    assert len(re.findall(r"<details class=\"io\">", dom)) == len(TASK_IDS)
    tables = re.findall(r"<table>(.*?)</table>", dom, re.S)
    attempts = len(load_report(Ledger(), run_id).attempts)
    assert [table.count("<tr>") for table in tables] == [1 + len(TASK_IDS), 1 + attempts]
    assert "<script" not in dom and "&lt;script&gt;alert('id')&lt;/script&gt;" in dom


def screenshot(page: Path, out: Path, work: Path) -> None:
    """Render ``page`` with headless Chromium into ``out``."""
    _, log = chromium(page, work, f"--screenshot={out}")
    assert out.is_file(), f"no screenshot: {log.decode(errors='replace')[-2000:]}"


def chromium(page: Path, work: Path, *options: str) -> tuple[bytes, bytes]:
    """Headless Chromium's stdout and stderr on ``page``; never hangs the test."""
    browser = _chromium()
    assert browser is not None
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        "--window-size=1200,900",
        f"--user-data-dir={work / 'profile'}",
        *options,
        page.as_uri(),
    ]
    out, err = work / "chromium.out", work / "chromium.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        # Its own process group, so that its helpers die with it.
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, start_new_session=True
        )
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"chromium took over 60 s: {err.read_text(errors='replace')[-2000:]}")
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
    return out.read_bytes(), err.read_bytes()


def decode_png(data: bytes) -> tuple[int, int, Counter[tuple[int, int, int]]]:
    """Width, height and a count of each RGB color of an 8-bit RGB(A) non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, header, compressed = 8, b"", bytearray()
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        body = data[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            compressed += body
        position += 12 + length
    width, height, depth, color_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and color_type in (2, 6) and interlace == 0
    channels = 3 if color_type == 2 else 4
    raw = zlib.decompress(bytes(compressed))
    stride = width * channels
    counts: Counter[tuple[int, int, int]] = Counter()
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        row = unfilter(
            raw[start], bytearray(raw[start + 1 : start + 1 + stride]), previous, channels
        )
        counts.update(zip(row[0::channels], row[1::channels], row[2::channels], strict=True))
        previous = row
    return width, height, counts


def unfilter(kind: int, row: bytearray, above: bytearray, bpp: int) -> bytearray:
    """Undo one PNG scanline filter (0 none, 1 sub, 2 up, 3 average, 4 Paeth)."""
    if kind == 2:
        return bytearray((a + b) & 0xFF for a, b in zip(row, above, strict=True))
    if kind == 0:
        return row
    for i in range(len(row)):
        left = row[i - bpp] if i >= bpp else 0
        if kind == 1:
            row[i] = (row[i] + left) & 0xFF
        elif kind == 3:
            row[i] = (row[i] + (left + above[i]) // 2) & 0xFF
        elif kind == 4:
            row[i] = (row[i] + paeth(left, above[i], above[i - bpp] if i >= bpp else 0)) & 0xFF
        else:
            raise AssertionError(f"unknown PNG filter {kind}")
    return row


def paeth(left: int, up: int, corner: int) -> int:
    estimate = left + up - corner
    near_left, near_up, near_corner = (abs(estimate - v) for v in (left, up, corner))
    if near_left <= near_up and near_left <= near_corner:
        return left
    return up if near_up <= near_corner else corner
