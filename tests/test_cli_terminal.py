"""The CLI as people and programs read it: on a terminal (a pty) and through a pipe.

``orchestra ask`` streams to a terminal and prints the whole answer once to a pipe;
``orchestra run`` draws a live table on a terminal (a task running, with its tokens) and
nothing but results to a pipe; listings are tables on a terminal and tab-separated rows in a
pipe. The answers come from the loopback OpenAI server, whose stream can be held after its
first word, so a test sees what is on the screen while an answer is still being generated.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from orchestration.cli.ask import _Printer
from orchestration.model.tasks import TaskProgress
from tests.fakes.openai_api import openai_app
from tests.fakes.server import LoopbackServer, Scripted, loopback_fixtures
from tests.support.terminal import Terminal

server, api = loopback_fixtures(openai_app)

ORCHESTRA = [sys.executable, "-m", "orchestration.cli"]
KEY = "sk-loopback-terminal-key-0123456789"
ANSWER = "Paris is the capital of France."


@pytest.fixture
def env(api: LoopbackServer) -> dict[str, str]:
    """The environment of the command: OpenAI is the loopback server."""
    return {**os.environ, "OPENAI_BASE_URL": f"{api.url}/v1", "OPENAI_API_KEY": KEY}


@pytest.fixture
def hold() -> Iterator[threading.Event]:
    gate = threading.Event()
    yield gate
    gate.set()  # a failed test never leaves the server's stream waiting


def ledger_rows(statement: str) -> list[tuple[Any, ...]]:
    path = os.environ["ORCHESTRA_DB_URL"].removeprefix("sqlite:///")
    with closing(sqlite3.connect(path)) as db:
        return db.execute(statement).fetchall()


def piped(
    args: list[str], env: dict[str, str], cwd: Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ORCHESTRA, *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def test_ask_streams_to_a_terminal_as_the_answer_is_generated(
    api: LoopbackServer, env: dict[str, str], hold: threading.Event, tmp_path: Path
) -> None:
    api.script(Scripted(text=ANSWER, hold=hold))
    term = Terminal([*ORCHESTRA, "ask", "Capital of France?", "-p", "openai-gpt"], env, tmp_path)
    try:
        # The first word is on the screen while the server still holds the rest back.
        shown = term.read_until(r"Paris")
        assert "capital" not in shown
        hold.set()
        assert term.finish() == 0
    finally:
        term.kill()
    lines = term.text.splitlines()
    assert ANSWER in lines
    # On a terminal, stderr says what was recorded: the run, provider, tokens and cost.
    summary = next(line for line in lines if line.startswith("run "))
    assert "openai-gpt gpt-4o-mini" in summary and "tokens 3/6" in summary
    ((run_id, name, status),) = ledger_rows("SELECT id, name, status FROM runs")
    assert summary.startswith(f"run {run_id[:12]} ") and (name, status) == ("ask", "succeeded")
    assert api.requests[0]["stream"] is True
    assert KEY not in term.text


def test_ask_says_when_a_streamed_answer_was_cut_off_and_asked_again(
    api: LoopbackServer, env: dict[str, str], tmp_path: Path
) -> None:
    api.script(Scripted(text=ANSWER, cut=3), Scripted(text=ANSWER))
    term = Terminal([*ORCHESTRA, "ask", "Capital?", "-p", "openai-gpt"], env, tmp_path)
    try:
        assert term.finish() == 0
    finally:
        term.kill()
    cut, notice, whole = term.text.splitlines()[:3]
    assert (cut, notice, whole) == ("Paris is", "[that answer was cut off; asking again]", ANSWER)
    assert ledger_rows("SELECT status FROM attempts ORDER BY id") == [("failed",), ("succeeded",)]


def piece(delta: str, first: bool) -> TaskProgress:
    """A piece of a streamed answer; ``first``: the first of its attempt."""
    return TaskProgress("ask", "a", "p", None, 1, 0.5, 0.5 if first else 0.1, delta)


@pytest.mark.parametrize(
    ("final", "shown", "said"),
    [
        ("Paris is the capital.", "Paris is the capital.\n", ""),  # the rest had not streamed
        ("Paris.", "Paris is\nParis.\n", "[that answer was cut off; the whole answer follows]\n"),
        (None, "Paris is\n", ""),  # no answer: the error says why
    ],
)
def test_a_streamed_answer_ends_with_the_final_one(
    capsys: pytest.CaptureFixture[str], final: str | None, shown: str, said: str
) -> None:
    printer = _Printer()
    printer.piece(piece("Paris", first=True))
    printer.piece(piece(" is", first=False))
    printer.finish(final)
    out, err = capsys.readouterr()
    assert (out, err) == (shown, said)


def test_a_retry_that_streams_again_is_told_apart(capsys: pytest.CaptureFixture[str]) -> None:
    printer = _Printer()
    printer.piece(piece("Par", first=True))
    printer.piece(piece("Paris.", first=True))
    printer.finish("Paris.")
    assert capsys.readouterr() == ("Par\nParis.\n", "[that answer was cut off; asking again]\n")


def test_ask_in_a_pipe_prints_the_answer_once_and_records_it(
    api: LoopbackServer, env: dict[str, str], tmp_path: Path
) -> None:
    api.script(Scripted(text=ANSWER))
    done = piped(
        ["ask", "Capital?", "-p", "openai-gpt", "-s", "Be brief.", "--max-tokens", "50"],
        env,
        tmp_path,
        stdin="notes: France",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ANSWER + "\n" and done.stderr == ""
    sent = api.requests[0]
    assert "stream" not in sent or sent["stream"] is False  # nothing to show it to
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital?\n\nContext:\nnotes: France"},
    ]
    assert sent.get("max_tokens", sent.get("max_completion_tokens")) == 50
    ((task, status, output, tokens_in),) = ledger_rows(
        "SELECT task_id, status, output, input_tokens FROM task_runs"
    )
    assert (task, status, output) == ("ask", "succeeded", ANSWER) and tokens_in == 2 + 4


def test_ask_takes_stdin_that_is_not_utf8_and_can_leave_stdin_alone(
    api: LoopbackServer, env: dict[str, str], tmp_path: Path
) -> None:
    api.script(Scripted(text=ANSWER), Scripted(text=ANSWER))
    argv = [*ORCHESTRA, "ask", "Review:", "-p", "openai-gpt"]
    for extra in ([], ["--no-stdin"]):
        done = subprocess.run(
            [*argv, *extra], input=b"caf\xe9 au lait", capture_output=True, env=env, cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr
    sent = [request["messages"][-1]["content"] for request in api.requests]
    assert sent == ["Review:\n\nContext:\ncaf\ufffd au lait", "Review:"]


def test_ask_json_and_a_question_from_stdin(
    api: LoopbackServer, env: dict[str, str], tmp_path: Path
) -> None:
    api.script(Scripted(text=ANSWER))
    done = piped(["ask", "-", "-p", "openai-gpt", "--json"], env, tmp_path, stdin="Capital?\n")
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["status"] == "succeeded" and body["output"] == ANSWER
    assert (body["provider"], body["input_tokens"], body["output_tokens"]) == ("openai-gpt", 1, 6)
    assert body["cost_usd"] > 0
    assert api.requests[0]["messages"] == [{"role": "user", "content": "Capital?"}]


def test_ask_an_agent_of_a_toml_file_with_its_settings(
    api: LoopbackServer, env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "agents.toml").write_text(
        '[agents.geo]\ntype = "openai-gpt"\nmodel = "gpt-4.1"\nsystem_prompt = "Terse."\n'
    )
    api.script(Scripted(text=ANSWER))
    done = piped(["ask", "Capital?", "--agents", "agents.toml", "-a", "geo"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ANSWER + "\n"
    assert api.requests[0]["model"] == "gpt-4.1"
    assert api.requests[0]["messages"][0] == {"role": "system", "content": "Terse."}
    assert ledger_rows("SELECT agent FROM task_runs") == [("geo",)]


def test_ask_that_gets_no_answer_says_why_in_one_line_and_exits_1(
    api: LoopbackServer, env: dict[str, str], tmp_path: Path
) -> None:
    refused = Scripted(status=401, body={"error": {"message": "bad key", "type": "auth"}})
    api.script(refused)
    done = piped(["ask", "Capital?", "-p", "openai-gpt"], env, tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    error, hint = done.stderr.splitlines()
    assert error.startswith("error: ") and "401" in error
    (run_id,) = ledger_rows("SELECT id FROM runs WHERE status = 'failed'")[0]
    assert hint == f"inspect it: orchestra show {str(run_id)[:12]}"


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["   "], "the question is empty"),
        (["q", "--agent", "x"], "--agent and --agents go together"),
        (["q", "--agents", "none.toml", "-a", "x"], "none.toml"),
        (["q", "-p", "openai-gtp"], "openai-gpt"),  # unknown, with the name it is close to
        (["q", "--max-tokens", "0"], "max_tokens"),
        (["q", "--json", "--stream"], "give --json or --stream, not both"),
    ],
)
def test_ask_refuses_bad_input_before_anything_is_sent(
    api: LoopbackServer, env: dict[str, str], tmp_path: Path, args: list[str], said: str
) -> None:
    done = piped(["ask", *args], env, tmp_path)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.splitlines()) == 1 and said in done.stderr
    assert api.requests == []


RUN_FILE = """
from orchestration import AgentRegistry, AgentTask

registry = AgentRegistry()
registry.register_agent("writer", "openai-gpt", model="gpt-4o-mini")
tasks = [
    AgentTask(task_id="draft", description="Write it.", agent="writer"),
    AgentTask(task_id="polish", description="Polish it.", agent="writer", depends_on=("draft",)),
]
"""


def test_run_shows_a_live_table_on_a_terminal(
    api: LoopbackServer, env: dict[str, str], hold: threading.Event, tmp_path: Path
) -> None:
    (tmp_path / "team.py").write_text(RUN_FILE)
    api.script(Scripted(text="first draft of the text"), Scripted(text=ANSWER, hold=hold))
    term = Terminal([*ORCHESTRA, "run", "team.py"], env, tmp_path)
    try:
        # While "polish" streams, the table shows it running, with its tokens so far.
        shown = term.read_until(r"polish\s*│\s*running\s*│\s*[\d.]+s\s*│\s*\d+")
        assert "team: 1/2" in shown and "draft" in shown
        hold.set()
        assert term.finish() == 0
    finally:
        term.kill()
    assert "team: 2/2" in term.text
    assert f"=== polish: succeeded ===\n{ANSWER}" in term.text.replace("\r", "")
    assert "inspect it: orchestra show " in term.text


def test_run_in_a_pipe_prints_results_not_a_live_table(
    api: LoopbackServer, env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "team.py").write_text(RUN_FILE)
    api.script(Scripted(text="first draft"), Scripted(text=ANSWER))
    done = piped(["run", "team.py"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "\x1b[" not in done.stdout and "running" not in done.stdout
    assert done.stdout.startswith(f"=== polish: succeeded ===\n{ANSWER}\nrun ")
    # Each task's end is one line on stderr, for logs: task, status, time, tokens.
    ended = [line.split("\t") for line in done.stderr.splitlines()]
    assert [(row[0], row[1], row[3]) for row in ended] == [
        ("draft", "succeeded", "2"),
        ("polish", "succeeded", "6"),
    ]


def test_runs_is_a_table_on_a_terminal_and_rows_in_a_pipe(
    api: LoopbackServer, env: dict[str, str], tmp_path: Path
) -> None:
    assert piped(["ask", "q", "-p", "openai-gpt"], env, tmp_path).returncode == 0
    ((run_id,),) = ledger_rows("SELECT id FROM runs")
    term = Terminal([*ORCHESTRA, "runs"], env, tmp_path, columns=80)
    try:
        assert term.finish() == 0
    finally:
        term.kill()
    assert "│" in term.text and f"{run_id[:12]}" in term.text
    assert all(len(line) <= 80 for line in term.text.splitlines())
    rows = piped(["runs"], env, tmp_path).stdout.splitlines()
    assert rows[0].split("\t")[:3] == ["run", "name", "status"]
    assert rows[1].split("\t")[:3] == [run_id, "ask", "succeeded"]
