"""What `orchestra runs`, `show` and `attempts` print to a pipe, to a terminal, and as asked.

A pipe gets plain tab-separated rows with whole values (what grep and cut expect); a
terminal gets a table that wraps and never cuts; ``--format`` chooses either, or JSON. The
terminal is a real pseudo-terminal here: the command runs in its own process.
"""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import anyio
from typer.testing import CliRunner

from llm_abstractions import LlmFactory, LlmRequest, LLMServerError
from llm_abstractions.testing import FunctionLlm
from orchestration import AgentRegistry, AgentTask, RetryPolicy, RunResult, TaskExecutor
from orchestration.cli import app

runner = CliRunner()
ADVICE = (
    "the server said no; check ORCHESTRA_EXAMPLE_SETTING, then try again with a smaller "
    "request, or ask the administrator of the example service for a larger quota please"
)


def make_runs(failing: int = 3, passing: int = 2) -> list[RunResult]:
    """``failing`` runs whose task fails with a long error, then ``passing`` that succeed."""

    def handler(request: LlmRequest) -> str:
        if request.metadata["task_id"] == "doomed":
            raise LLMServerError(ADVICE, status_code=500)
        return "done"

    LlmFactory.register_provider("fake", lambda **_: FunctionLlm(handler), replace=True)
    registry = AgentRegistry()
    registry.register_agent("worker", "fake", script_fallback=False)

    async def main() -> list[RunResult]:
        async with TaskExecutor(registry=registry, retry=RetryPolicy.never()) as executor:
            return [
                await executor.run(
                    [AgentTask(task_id=tid, description="go", agent="worker")],
                    name=f"job-{number}",
                )
                for number, tid in enumerate(["doomed"] * failing + ["fine"] * passing)
            ]

    return anyio.run(main)


def test_a_pipe_gets_whole_values_on_tab_separated_lines() -> None:
    made = make_runs()
    listed = runner.invoke(app, ["runs"])  # CliRunner's stdout is not a terminal
    lines = listed.output.splitlines()
    assert lines[0].split("\t") == [
        "run", "name", "status", "tasks", "tokens in/out", "cost", "duration",
    ]  # fmt: skip
    assert sum("\tfailed\t" in line for line in lines) == 3  # `grep -c failed` counts them
    assert {line.split("\t")[0] for line in lines[1:]} == {run.run_id for run in made}
    shown = runner.invoke(app, ["show", made[0].run_id[:12]]).output.splitlines()
    assert shown[1].split("\t")[-1] == f"LLMServerError: {ADVICE}"  # whole, not cut at 80
    tried = runner.invoke(app, ["attempts", made[0].run_id]).output.splitlines()
    assert tried[1].endswith(ADVICE)


def test_format_chooses_whatever_stdout_is() -> None:
    made = make_runs(failing=1, passing=0)
    as_json = json.loads(runner.invoke(app, ["runs", "--format", "json"]).output)
    assert as_json == json.loads(runner.invoke(app, ["runs", "--json"]).output)
    assert [r["id"] for r in as_json] == [made[0].run_id]
    table = runner.invoke(app, ["show", made[0].run_id, "--format", "table"], env={"COLUMNS": "80"})
    assert table.exit_code == 0
    assert "…" not in table.output  # wrapped, never cut with an ellipsis
    wider = runner.invoke(
        app, ["show", made[0].run_id, "--format", "table"], env={"COLUMNS": "220"}
    )
    words = wider.output.replace("│", " ").split()
    assert {"administrator", "quota", "please"} <= set(words)  # the whole advice is there
    wrong = runner.invoke(app, ["runs", "--format", "csv"])
    assert wrong.exit_code == 2


def test_a_terminal_gets_a_table_with_short_run_ids(tmp_path: Path) -> None:
    made = make_runs(failing=1, passing=1)
    output = re.sub(r"\x1b\[[0-9;]*m", "", in_a_terminal(["runs"], columns=80))
    assert "┃ run" in output and "\t" not in output
    for run in made:
        assert run.run_id[:12] in output and run.run_id not in output
    assert "…" not in output


def in_a_terminal(args: list[str], columns: int, ok: bool = True) -> str:
    """What ``orchestra ARGS`` prints to a pseudo-terminal ``columns`` wide."""
    main, child = pty.openpty()
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "xterm"}
    with subprocess.Popen(
        [sys.executable, "-m", "orchestration.cli", *args],
        stdout=child,
        stderr=child,
        stdin=subprocess.DEVNULL,
        env=env,
    ) as process:
        os.close(child)
        chunks = []
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # the terminal's other end closed: the command is done
                break
            if not chunk:
                break
            chunks.append(chunk)
        process.wait(timeout=60)
    os.close(main)
    assert process.returncode == 0 or not ok, b"".join(chunks)
    return b"".join(chunks).decode()


def test_runs_are_filtered_by_status_name_and_time() -> None:
    made = make_runs(failing=2, passing=1)
    listed = runner.invoke(app, ["runs", "--status", "failed", "--json"])
    assert listed.exit_code == 0, (listed.stdout, listed.stderr)
    failed = json.loads(listed.stdout)
    assert {r["id"] for r in failed} == {made[0].run_id, made[1].run_id}
    named = json.loads(runner.invoke(app, ["runs", "--name", "job-2", "--json"]).output)
    assert [r["id"] for r in named] == [made[2].run_id]
    recent = json.loads(runner.invoke(app, ["runs", "--since", "1h", "--json"]).output)
    assert len(recent) == 3
    assert json.loads(runner.invoke(app, ["runs", "--since", "2999-01-01", "--json"]).output) == []
    last = json.loads(runner.invoke(app, ["runs", "--limit", "1", "--json"]).output)
    assert [r["id"] for r in last] == [made[2].run_id]
    wrong = runner.invoke(app, ["runs", "--since", "yesterday"])
    assert wrong.exit_code == 2 and "neither a date or time" in wrong.stderr


def test_no_ledger_yet_lists_no_runs() -> None:
    listed = runner.invoke(app, ["runs", "--json"])
    assert listed.exit_code == 0 and json.loads(listed.stdout) == []


def test_an_unknown_task_names_the_tasks_there_are() -> None:
    made = make_runs(failing=1, passing=0)
    result = runner.invoke(app, ["attempts", made[0].run_id, "--task", "nope"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: no task 'nope' in run {made[0].run_id}; tasks are doomed"
    )


def test_verbose_may_follow_the_subcommand() -> None:
    from orchestration.cli.main import root_options_first

    assert root_options_first(["runs", "-v", "--json"]) == ["-v", "runs", "--json"]
    assert root_options_first(["run", "f.py", "--", "-v"]) == ["run", "f.py", "--", "-v"]
    assert root_options_first(["runs", "--db", "x.db", "-v"]) == ["--db", "x.db", "-v", "runs"]
    done = subprocess.run(
        [sys.executable, "-m", "orchestration.cli", "runs", "-v", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


PIPELINE = """
from llm_abstractions import LlmFactory, LLMServerError
from llm_abstractions.testing import FunctionLlm
from orchestration import AgentRegistry, AgentTask, RetryPolicy


def answer(request):
    if request.metadata["task_id"] == "broken":
        raise LLMServerError("the example service is down; try again in an hour", status_code=503)
    return f"answer of {request.metadata['task_id']}"


LlmFactory.register_provider("fake", lambda **_: FunctionLlm(answer), replace=True)
registry = AgentRegistry()
registry.register_agent("worker", "fake", script_fallback=False)
tasks = [
    AgentTask(task_id="draft", description="go", agent="worker"),
    AgentTask(task_id="final", description="go", agent="worker", depends_on=("draft",)),
    AgentTask(task_id="broken", description="go", agent="worker"),
]
"""


def test_run_shows_times_tokens_and_reasons_then_the_final_answers(tmp_path: Path) -> None:
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    output = re.sub(
        r"\x1b\[[0-9;?]*[a-zA-Z]",
        "",
        in_a_terminal(["run", str(tmp_path / "pipeline.py")], 160, ok=False),
    )
    header = next(line for line in output.splitlines() if "task" in line and "status" in line)
    columns = header.replace("┃", " ").split()
    assert columns == ["task", "status", "time", "tokens", "tok/s", "note"]
    assert "the example service is down" in output  # a failure says why
    assert "=== final: succeeded ===\r\nanswer of final" in output  # the final answers
    assert "=== draft" not in output  # not what only fed another task


def test_show_previews_each_task_s_answer() -> None:
    (made,) = make_runs(failing=0, passing=1)
    lines = runner.invoke(app, ["show", made.run_id]).stdout.splitlines()
    header, row = lines[0].split("\t"), lines[1].split("\t")
    assert row[header.index("output")] == "done"
    from orchestration.cli.tables import preview

    assert preview("line one\nline two " + "x" * 60) == "line one line two " + "x" * 21 + "…"
