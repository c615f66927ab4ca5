"""Coding-agent CLIs as agents: the real CLI, against a loopback fake of its vendor's API.

The CLIs are installed from the npm registry into ``.venv/clis``. Claude Code talks to the
Anthropic fake (``tests/fakes/anthropic_api.py``), Codex to the OpenAI Responses fake
(``tests/fakes/openai_responses.py``); each fake scripts the model's turns: a tool call that
writes a file in the working directory (Claude Code's ``Write``, Codex's ``exec_command``),
then a final message. What is checked is what a user would: the file exists in the task's
own directory, the answer holds the CLI's message and the diff, and usage, cost (the CLI's
own, or priced from its tokens), its version and turns are in the ledger, with no key
anywhere in it.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestration import AgentRegistry, AgentTask, OutputRejected, RetryPolicy, TaskExecutor
from orchestration.ledger import Ledger
from tests.fakes.anthropic_api import anthropic_app
from tests.fakes.gemini_api import gemini_app
from tests.fakes.openai_api import openai_app
from tests.fakes.openai_responses import responses_app
from tests.fakes.server import LoopbackServer, Scripted
from tests.support.clis import CLI_HOME, npm_cli, pip_cli

pytestmark = pytest.mark.anyio
KEY = "sk-ant-coding-cli-test-key-0123456789"


@pytest.fixture(scope="module")
def claude_bin() -> Path:
    return npm_cli("@anthropic-ai/claude-code", "claude")


@pytest.fixture
def anthropic(claude_bin: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackServer]:
    server = LoopbackServer(anthropic_app)
    monkeypatch.setenv("PATH", f"{claude_bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    yield server
    server.close()


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = Ledger(f"sqlite:///{tmp_path / 'runs.db'}")
    yield opened
    opened.close()


def attempt_rows(ledger: Ledger) -> list[dict[str, Any]]:
    assert ledger.path is not None
    with sqlite3.connect(ledger.path) as connection:
        connection.row_factory = sqlite3.Row
        rows = connection.execute("SELECT * FROM attempts ORDER BY id").fetchall()
    return [dict(row) for row in rows]


def sent_headers(server: LoopbackServer) -> list[dict[str, str]]:
    """Each request's headers as the fake received them, names in lower case."""
    return [{k.lower(): v for k, v in headers.items()} for headers in server.headers]


def key_not_stored(ledger: Ledger) -> bool:
    return ledger.path is not None and KEY not in ledger.path.read_bytes().decode("latin-1")


async def write_hello(
    ledger: Ledger, provider: str, model: str | None = None, description: str = "Write hello.py."
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Run one task asking ``provider``'s CLI for hello.py; its output, attempt row, details."""
    registry = AgentRegistry()
    registry.register_agent("coder", provider, model=model)
    task = AgentTask(task_id="hello", description=description, agent="coder")
    async with TaskExecutor(registry, ledger=ledger) as run:
        result = await run.run([task])
    answer = result.results["hello"]
    assert result.ok, answer.error
    (row,) = attempt_rows(ledger)
    return answer.output or "", row, json.loads(row["details"])


WRITE = ("Write", {"file_path": "{cwd}/hello.py", "content": "print('hello')\n"})
# Claude's two turns for hello.py: the tool call, then its answer.
WRITE_HELLO = (
    Scripted(text="", tool_calls=[WRITE], usage={"input_tokens": 900, "output_tokens": 40}),
    Scripted(text="I wrote hello.py.", usage={"input_tokens": 1000, "output_tokens": 12}),
)


async def test_claude_code_writes_a_file_in_its_own_directory_and_its_costs_are_recorded(
    anthropic: LoopbackServer, ledger: Ledger
) -> None:
    anthropic.script(*WRITE_HELLO)
    output, row, details = await write_hello(
        ledger, "claude-code", description="Write hello.py printing hello."
    )
    assert output.startswith("I wrote hello.py.")
    assert "+++ b/hello.py" in output and "+print('hello')" in output  # the diff follows

    written = Path(details["workdir"]) / "hello.py"
    assert written.read_text() == "print('hello')\n"
    assert details["files_changed"] == ["hello.py"] and details["turns"] == 2
    assert details["version"] and details["cli"] == "claude" and details["workdir_kind"] == "empty"
    # Tokens as the fake counted them, cached ones included, over both model turns.
    assert row["input_tokens"] >= 1900 and row["output_tokens"] >= 52
    assert row["cost_usd"] > 0 and row["price_source"] == "claude-code: its own report"
    assert row["provider"] == "claude-code" and row["status"] == "succeeded"
    # The CLI was sent our key, and it went nowhere else.
    assert {headers.get("x-api-key") for headers in sent_headers(anthropic)} == {KEY}
    assert key_not_stored(ledger)
    prompt = json.dumps(anthropic.requests[0]["messages"])
    assert "Write hello.py printing hello." in prompt  # the prompt went in on stdin


def git(where: Path, *args: str) -> str:
    return subprocess.run(  # noqa: S603
        ["git", "-C", str(where), *args],  # noqa: S607
        capture_output=True,
        text=True,
        check=True,
    ).stdout


async def test_in_a_git_repository_each_task_works_in_a_worktree_of_its_own(
    anthropic: LoopbackServer, ledger: Ledger, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "README.md").write_text("a project\n")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    anthropic.script(
        Scripted(text="", tool_calls=[WRITE]),
        Scripted(text="Done."),
        Scripted(text="", tool_calls=[WRITE]),
        Scripted(text="Done."),
    )
    registry = AgentRegistry()
    registry.register_agent("coder", "claude-code", repo=str(repo))
    tasks = [AgentTask(task_id=f"t{i}", description="Add hello.py.", agent="coder") for i in (1, 2)]
    async with TaskExecutor(registry, ledger=ledger, max_concurrency=1) as run:
        result = await run.run(tasks)
    assert result.ok, {t: r.error for t, r in result.results.items()}
    places = [Path(json.loads(row["details"])["workdir"]) for row in attempt_rows(ledger)]
    assert len(set(places)) == 2  # one directory each
    assert all((place / "README.md").exists() and (place / "hello.py").exists() for place in places)
    assert not (repo / "hello.py").exists()  # the user's own checkout is untouched
    listed = git(repo, "worktree", "list")
    assert all(str(place) in listed for place in places)


async def test_a_missing_cli_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, ledger: Ledger, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no claude there
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    registry = AgentRegistry()
    registry.register_agent("coder", "claude-code", script_fallback=False)
    async with TaskExecutor(registry, ledger=ledger) as run:
        result = await run.run([AgentTask(task_id="t", description="Code.", agent="coder")])
    error = result.results["t"].error or ""
    assert "install it with `npm install -g @anthropic-ai/claude-code`" in error
    assert [row["error_type"] for row in attempt_rows(ledger)] == ["CliNotInstalledError"]


def cli_processes() -> list[int]:
    """Processes running an executable installed under ``.venv/clis``."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if str(CLI_HOME) in os.readlink(f"/proc/{name}/exe"):
                    found.append(int(name))
            except OSError:
                continue
    return found


async def test_a_cli_that_hangs_is_stopped_and_recorded_with_what_it_had_spent(
    anthropic: LoopbackServer, ledger: Ledger
) -> None:
    anthropic.script(
        Scripted(text="", tool_calls=[WRITE], usage={"input_tokens": 900, "output_tokens": 40}),
        Scripted(delay=60),  # then the model never answers in time
    )
    registry = AgentRegistry()
    registry.register_agent(
        "coder", "claude-code", model="claude-sonnet-4-6", timeout_s=8, script_fallback=False
    )
    async with TaskExecutor(registry, ledger=ledger, retry=RetryPolicy.never()) as run:
        result = await run.run([AgentTask(task_id="t", description="Code.", agent="coder")])
    assert "timed out after 8 s: claude and what it started were killed" in (
        result.results["t"].error or ""
    )
    (row,) = attempt_rows(ledger)
    # The first answer's tokens, read as it passed: it printed nothing of them itself.
    assert row["status"] == "failed" and (row["input_tokens"], row["output_tokens"]) == (900, 40)
    assert row["cost_usd"] == pytest.approx(900 * 3e-6 + 40 * 15e-6)
    assert row["price_source"].startswith("claude-code: its API's answers as they passed")
    assert cli_processes() == []  # it and what it started were killed


async def test_a_cli_stopped_at_the_task_budget_is_recorded_with_what_it_spent(
    anthropic: LoopbackServer, ledger: Ledger
) -> None:
    registry = AgentRegistry()
    registry.register_agent("coder", "claude-code", script_fallback=False)
    task = AgentTask(task_id="t", description="Code.", agent="coder", budget_usd=0.000001)
    async with TaskExecutor(registry, ledger=ledger) as run:
        result = await run.run([task])
    assert "stopped at its budget" in (result.results["t"].error or "")
    (row, *more) = attempt_rows(ledger)
    assert row["status"] == "failed" and row["cost_usd"] > 0 and row["input_tokens"] > 0
    assert row["price_source"] == "claude-code: its own report"


async def test_a_gateway_s_bearer_token_reaches_it_as_one(
    anthropic: LoopbackServer, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", KEY)
    registry = AgentRegistry()
    registry.register_agent("coder", "claude-code")
    async with TaskExecutor(registry, ledger=ledger) as run:
        result = await run.run([AgentTask(task_id="t", description="Hi.", agent="coder")])
    assert result.ok, result.results["t"].error
    sent = sent_headers(anthropic)
    assert {headers.get("authorization") for headers in sent} == {f"Bearer {KEY}"}
    assert all("x-api-key" not in headers for headers in sent)


@pytest.fixture
def responses(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackServer]:
    """The OpenAI Responses fake, and Codex (from the npm registry) on PATH."""
    codex_bin = npm_cli("@openai/codex", "codex")
    server = LoopbackServer(responses_app)
    monkeypatch.setenv("PATH", f"{codex_bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", f"{server.url}/v1")
    yield server
    server.close()


async def test_codex_runs_a_command_in_its_own_directory_and_its_tokens_are_priced(
    responses: LoopbackServer, ledger: Ledger
) -> None:
    write = ("exec_command", {"cmd": "printf 'print(1)\\n' > hello.py"})
    responses.script(
        Scripted(text="", tool_calls=[write], usage={"input_tokens": 2000, "output_tokens": 30}),
        Scripted(
            text="I wrote hello.py.",
            usage={"input_tokens": 2100, "output_tokens": 9, "cached_tokens": 1800},
        ),
    )
    output, row, details = await write_hello(ledger, "codex", "gpt-5-codex")
    assert output.startswith("I wrote hello.py.")
    assert "+print(1)" in output
    assert (Path(details["workdir"]) / "hello.py").read_text() == "print(1)\n"
    assert details["files_changed"] == ["hello.py"]
    assert details["version"].startswith("codex-cli ") and details["session_id"]
    # Both model requests' tokens, cached input counted in the input (OpenTelemetry's rule).
    assert (row["input_tokens"], row["output_tokens"], row["cache_read_input_tokens"]) == (
        4100,
        39,
        1800,
    )
    assert row["cost_usd"] > 0 and "openai-gpt prices" in row["price_source"]
    sent = sent_headers(responses)
    assert {headers.get("authorization") for headers in sent} == {f"Bearer {KEY}"}
    assert key_not_stored(ledger)


async def test_a_codex_turn_that_fails_is_a_failed_attempt_saying_why(
    responses: LoopbackServer, ledger: Ledger
) -> None:
    responses.script(
        *[Scripted(status=400, body={"error": {"message": "bad model", "type": "invalid"}})] * 8
    )
    registry = AgentRegistry()
    registry.register_agent("coder", "codex", model="gpt-5-codex", script_fallback=False)
    async with TaskExecutor(registry, ledger=ledger, retry=RetryPolicy.never()) as run:
        result = await run.run([AgentTask(task_id="t", description="Code.", agent="coder")])
    assert "bad model" in (result.results["t"].error or "")
    assert [row["status"] for row in attempt_rows(ledger)] == ["failed"]


async def test_a_coding_agent_is_never_answered_from_the_cache(
    anthropic: LoopbackServer, ledger: Ledger
) -> None:
    registry = AgentRegistry()
    registry.register_agent("coder", "claude-code")
    task = AgentTask(task_id="t", description="Same work.", agent="coder")
    async with TaskExecutor(registry, ledger=ledger, cache=True) as run:
        await run.run([task])
        again = await run.run([task])
    assert again.ok
    methods = [row["execution_method"] for row in attempt_rows(ledger)]
    assert methods == ["llm_factory", "llm_factory"]  # the CLI ran twice: its work is done again


async def test_codex_without_a_model_is_priced_by_the_model_its_api_named(
    responses: LoopbackServer, ledger: Ledger
) -> None:
    registry = AgentRegistry()
    registry.register_agent("coder", "codex")  # Codex picks its model and does not say it
    async with TaskExecutor(registry, ledger=ledger) as run:
        result = await run.run([AgentTask(task_id="t", description="Hi.", agent="coder")])
    assert result.ok, result.results["t"].error
    (row,) = attempt_rows(ledger)
    assert row["input_tokens"] > 0 and row["cost_usd"] is not None and row["cost_usd"] > 0
    assert row["price_source"] == "codex: its API's answers as they passed, priced by genai-prices"


def test_a_workdir_s_diff_leaves_out_bytecode_and_carries_binary_files_whole(
    tmp_path: Path,
) -> None:
    from orchestration.runtime.coding.workdir import prepare

    repo = tmp_path / "home"  # a repository named like the directory CLIs keep their files in
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "mod.py").write_text("A = 1\n")
    (repo / "logo.png").write_bytes(b"\x89PNG\0old")
    work = prepare(str(repo), "t")
    assert work.home != work.path and work.home.parent == work.path.parent
    (work.path / "pkg" / "__pycache__").mkdir()
    (work.path / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0\1")
    (work.path / "pkg" / "mod.py").write_text("A = 2\n")
    (work.path / "logo.png").write_bytes(b"\x89PNG\0new")
    (work.path / "café.txt").write_text("au lait\n")
    names, diff = work.changes()
    assert sorted(names) == ["café.txt", "logo.png", "pkg/mod.py"]
    assert "GIT binary patch" in diff and "__pycache__" not in diff
    copy = tmp_path / "copy"
    shutil.copytree(repo, copy)
    git(copy, "init", "-q")
    subprocess.run(["git", "-C", str(copy), "apply", "-"], input=diff.encode(), check=True)  # noqa: S603, S607
    assert (copy / "logo.png").read_bytes() == b"\x89PNG\0new"


@pytest.fixture
def gemini(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackServer]:
    """The Gemini fake, and the Gemini CLI (from the npm registry) on PATH."""
    gemini_bin = npm_cli("@google/gemini-cli", "gemini")
    server = LoopbackServer(gemini_app)
    monkeypatch.setenv("PATH", f"{gemini_bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.url)
    yield server
    server.close()


async def test_gemini_cli_writes_a_file_and_each_model_s_tokens_are_priced(
    gemini: LoopbackServer, ledger: Ledger
) -> None:
    write = ("write_file", {"file_path": "hello.py", "content": "print('hi')\n"})
    gemini.script(
        Scripted(
            text="",
            tool_calls=[write],
            usage={"promptTokenCount": 3000, "candidatesTokenCount": 20, "thoughtsTokenCount": 100},
        ),
        Scripted(
            text="I wrote hello.py.",
            usage={
                "promptTokenCount": 3100,
                "candidatesTokenCount": 6,
                "cachedContentTokenCount": 2900,
            },
        ),
    )
    output, row, details = await write_hello(ledger, "gemini-cli", "gemini-2.5-flash")
    assert output.startswith("I wrote hello.py.")
    assert "+print('hi')" in output
    assert (Path(details["workdir"]) / "hello.py").read_text() == "print('hi')\n"
    assert details["files_changed"] == ["hello.py"] and details["tool_calls"] == 1
    assert details["version"] and details["session_id"] and details["turns"] == 2
    # Thoughts are output (billed so); cached input is counted in the input.
    assert (
        row["input_tokens"],
        row["output_tokens"],
        row["cache_read_input_tokens"],
        row["reasoning_output_tokens"],
    ) == (6100, 126, 2900, 100)
    assert row["model"] == "gemini-2.5-flash" and row["cost_usd"] > 0
    assert row["price_source"] == "genai-prices, google-gemini prices of each model's tokens"
    assert {headers.get("x-goog-api-key") for headers in sent_headers(gemini)} == {KEY}
    assert "Write hello.py." in json.dumps(gemini.requests[0]["contents"])
    assert key_not_stored(ledger)


async def test_a_gemini_cli_run_that_fails_is_a_failed_attempt_saying_why(
    gemini: LoopbackServer, ledger: Ledger
) -> None:
    refused = {"error": {"code": 400, "message": "bad model", "status": "INVALID_ARGUMENT"}}
    gemini.script(*[Scripted(status=400, body=refused)] * 8)
    registry = AgentRegistry()
    registry.register_agent("coder", "gemini-cli", model="gemini-2.5-flash", script_fallback=False)
    async with TaskExecutor(registry, ledger=ledger, retry=RetryPolicy.never()) as run:
        result = await run.run([AgentTask(task_id="t", description="Code.", agent="coder")])
    assert "bad model" in (result.results["t"].error or "")
    (row,) = attempt_rows(ledger)
    assert row["status"] == "failed" and row["cost_usd"] is None


@pytest.fixture
def chat(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackServer]:
    """An OpenAI-compatible fake (chat completions), and aider (from PyPI) on PATH."""
    aider_bin = pip_cli("aider-chat", "aider")
    server = LoopbackServer(openai_app)
    monkeypatch.setenv("PATH", f"{aider_bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_BASE", f"{server.url}/v1")
    yield server
    server.close()


# aider's "diff" edit format: a new file is a SEARCH/REPLACE block with nothing to search.
EDIT = (
    "I'll create hello.py.\n\nhello.py\n```python\n"
    "<<<<<<< SEARCH\n=======\nprint('hey')\n>>>>>>> REPLACE\n```\n"
)


async def test_aider_edits_a_file_and_its_own_cost_is_recorded(
    chat: LoopbackServer, ledger: Ledger
) -> None:
    chat.script(Scripted(text=EDIT, usage={"prompt_tokens": 2000, "completion_tokens": 40}))
    output, row, details = await write_hello(ledger, "aider", "openai/gpt-4o")
    assert output.startswith("I'll create hello.py.") and "+print('hey')" in output
    assert (Path(details["workdir"]) / "hello.py").read_text() == "print('hey')\n"
    # Its repository map's cache is there too, and is not its work.
    assert details["files_changed"] == ["hello.py"] and details["edit_format"] == "diff"
    assert details["version"].startswith("aider ") and details["turns"] == 1
    assert (row["input_tokens"], row["output_tokens"]) == (2000, 40)
    # gpt-4o at $2.50 / $10 a million tokens, as litellm prices it.
    assert (
        row["cost_usd"] == pytest.approx(0.0054) and row["price_source"] == "aider: its own report"
    )
    assert chat.requests[0]["model"] == "gpt-4o" and "Write hello.py." in json.dumps(chat.requests)
    sent = sent_headers(chat)
    assert {headers.get("authorization") for headers in sent} == {f"Bearer {KEY}"}
    assert key_not_stored(ledger)


async def test_an_aider_request_that_fails_is_a_failed_attempt_saying_why(
    chat: LoopbackServer, ledger: Ledger
) -> None:
    refused = {"error": {"message": "bad model", "type": "invalid_request_error"}}
    chat.script(*[Scripted(status=400, body=refused)] * 4)
    registry = AgentRegistry()
    registry.register_agent("coder", "aider", model="openai/gpt-4o", script_fallback=False)
    async with TaskExecutor(registry, ledger=ledger, retry=RetryPolicy.never()) as run:
        result = await run.run([AgentTask(task_id="t", description="Code.", agent="coder")])
    assert "bad model" in (result.results["t"].error or "")
    (row,) = attempt_rows(ledger)
    assert row["status"] == "failed" and row["input_tokens"] is None


BACKEND = """TODOS = []


def add(title):
    TODOS.append({"title": title, "done": False})
    return len(TODOS) - 1


def complete(index):
    TODOS[index]["done"] = None
"""
BACKEND_TESTS = """import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "backend"))
import server


class TodoTest(unittest.TestCase):
    def test_complete(self):
        index = server.add("b")
        server.complete(index)
        self.assertTrue(server.TODOS[index]["done"])
"""


async def test_the_todo_build_runs_its_backend_and_repair_on_claude_code(
    anthropic: LoopbackServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agents import REPAIR, SPECIALISTS, TodoBuild, route_team
    from llm_abstractions import LlmFactory, LlmRequest
    from llm_abstractions.testing import FunctionLlm

    def answer(request: LlmRequest) -> str:  # the other roles, under the file contract
        role = next(r for r in SPECIALISTS if r.name == request.metadata["agent"])
        if role.name == "qa":
            return f"FILE: tests/test_backend.py\n```python\n{BACKEND_TESTS}```\n"
        return "".join(f"FILE: {path}\n```\n{role.name}\n```\n" for path in role.paths)

    LlmFactory.register_provider("scripted-team", lambda **_: FunctionLlm(answer), replace=True)
    for role in (*SPECIALISTS, REPAIR):
        monkeypatch.setenv(f"ORCHESTRA_ROLE_{role.name.upper()}", "scripted-team")
    monkeypatch.setenv("ORCHESTRA_ROLE_BACKEND", "claude-code")
    monkeypatch.setenv("ORCHESTRA_ROLE_REPAIR", "claude-code")
    server_py = "{cwd}/backend/server.py"
    anthropic.script(
        # The backend writes its file (with a bug the tests find).
        Scripted(text="", tool_calls=[("Write", {"file_path": server_py, "content": BACKEND})]),
        Scripted(text="I wrote backend/server.py."),
        # The repair reads it and fixes the bug, leaving the tests as they are.
        Scripted(text="", tool_calls=[("Read", {"file_path": server_py})]),
        Scripted(
            text="",
            tool_calls=[
                (
                    "Edit",
                    {
                        "file_path": server_py,
                        "old_string": '["done"] = None',
                        "new_string": '["done"] = True',
                    },
                )
            ],
        ),
        Scripted(text="complete() now marks the todo done."),
    )
    app = tmp_path / "app"
    build = TodoBuild(output_dir=app, choices=route_team((*SPECIALISTS, REPAIR)))
    async with TaskExecutor(registry=build.registry(), max_concurrency=4) as executor:
        run = await executor.run(build.tasks(), on_task_done=build.on_task_done)
        assert build.verdict(run)["verdict"] == "failed" and build.needs_repair(run)
        run = await executor.extend(
            run.run_id, build.repair_tasks(), on_task_done=build.on_task_done
        )
    assert run.ok and build.verdict(run)["verdict"] == "passed"
    assert build.files["backend"].written == ["backend/server.py"]
    assert (app / "backend" / "server.py").read_text() == BACKEND.replace("None", "True")
    # The repair left the tests as they were: they count as given, and are written again.
    assert build.files["repair-1"].written == ["backend/server.py", "tests/test_backend.py"]
    assert (app / "tests" / "test_backend.py").read_text() == BACKEND_TESTS
    # Claude Code worked on a copy of the app as it stood: the spec was there.
    assert "docs/SPEC.md" in json.dumps(anthropic.requests[0])
    assert run.results["backend"].metadata["provider"] == "claude-code"


async def test_a_cli_with_no_budget_of_its_own_is_stopped_at_the_task_s_by_the_meter(
    responses: LoopbackServer, ledger: Ledger
) -> None:
    # The first answer (a command to run) costs more than the task may spend.
    write = ("exec_command", {"cmd": "printf 'print(1)\\n' > hello.py"})
    responses.script(
        Scripted(text="", tool_calls=[write], usage={"input_tokens": 20000, "output_tokens": 30}),
        Scripted(text="never asked for", delay=30),
    )
    registry = AgentRegistry()
    registry.register_agent("coder", "codex", model="gpt-5-codex", script_fallback=False)
    task = AgentTask(task_id="t", description="Code.", agent="coder", budget_usd=0.001)
    async with TaskExecutor(registry, ledger=ledger, retry=RetryPolicy.never()) as run:
        result = await run.run([task])
    assert "codex was stopped at its budget of $0.0010" in (result.results["t"].error or "")
    (row,) = attempt_rows(ledger)
    # What its API's answers said, as they passed: the first answer, priced.
    assert (row["input_tokens"], row["output_tokens"]) == (20000, 30)
    assert row["status"] == "failed" and row["cost_usd"] > 0.001
    assert row["price_source"] == "codex: its API's answers as they passed, priced by genai-prices"
    assert cli_processes() == []  # it and what it started were killed


async def test_each_attempt_of_a_cli_is_held_to_what_is_left_of_the_task_s_budget(
    responses: LoopbackServer, ledger: Ledger
) -> None:
    write = ("exec_command", {"cmd": "printf 'print(1)\\n' > hello.py"})
    costly = {"input_tokens": 20000, "output_tokens": 30}  # $0.0253 at gpt-5-codex's prices
    responses.script(
        Scripted(text="", tool_calls=[write], usage=costly),
        Scripted(text="first try", usage={"input_tokens": 100, "output_tokens": 5}),
        Scripted(text="", tool_calls=[write], usage=costly),
        Scripted(text="never asked for", delay=30),
    )
    tries: list[str] = []

    def not_the_first(output: str) -> str:
        tries.append(output)
        if len(tries) == 1:
            raise OutputRejected("try again")
        return output

    registry = AgentRegistry()
    registry.register_agent("coder", "codex", model="gpt-5-codex", script_fallback=False)
    task = AgentTask(
        task_id="t",
        description="Code.",
        agent="coder",
        budget_usd=0.04,
        validators=(not_the_first,),
    )
    async with TaskExecutor(registry, ledger=ledger) as run:
        result = await run.run([task])
    first, second = attempt_rows(ledger)
    left = 0.04 - first["cost_usd"]
    assert first["error_message"] == "invalid_output: try again"
    assert 0.025 < first["cost_usd"] < 0.026
    # The second attempt was given what the first left, and stopped there.
    assert f"codex was stopped at its budget of ${left:.4f}" in (result.results["t"].error or "")
    assert second["status"] == "failed" and second["cost_usd"] > left


async def test_a_cli_is_stopped_at_what_is_left_of_the_run_s_budget(
    responses: LoopbackServer, ledger: Ledger
) -> None:
    write = ("exec_command", {"cmd": "printf 'print(1)\\n' > hello.py"})
    responses.script(
        Scripted(text="", tool_calls=[write], usage={"input_tokens": 20000, "output_tokens": 30}),
        Scripted(text="never asked for", delay=30),
    )
    registry = AgentRegistry()
    registry.register_agent("coder", "codex", model="gpt-5-codex", script_fallback=False)
    task = AgentTask(task_id="t", description="Code.", agent="coder")  # no budget of its own
    async with TaskExecutor(registry, ledger=ledger, retry=RetryPolicy.never()) as run:
        result = await run.run([task], budget_usd=0.01)
    assert "codex was stopped at its budget of $0.0100" in (result.results["t"].error or "")
    (row,) = attempt_rows(ledger)
    assert row["status"] == "failed" and row["cost_usd"] > 0.01


def test_a_cli_run_that_did_not_finish_pickles_whole_with_what_it_spent() -> None:
    import pickle

    from llm_abstractions.types import Usage
    from orchestration.runtime.coding.provider import CliFailed, CliTimedOut, CliUnreadable

    for kind in (CliFailed, CliTimedOut, CliUnreadable):
        error = kind(
            "stopped",
            provider="codex",
            usage=Usage(input_tokens=5, output_tokens=1),
            cost_usd=0.5,
            price_source="codex: its API's answers",
        )
        again = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
        assert type(again) is kind and str(again) == "stopped"
        assert (again.usage, again.cost_usd, again.price_source) == (
            error.usage,
            0.5,
            "codex: its API's answers",
        )
        assert again.retryable is (kind is not CliFailed)


async def test_a_cli_s_work_is_reported_as_its_model_s_answers_pass(
    anthropic: LoopbackServer, ledger: Ledger
) -> None:
    from orchestration import TaskProgress

    anthropic.script(*WRITE_HELLO)
    registry = AgentRegistry()
    registry.register_agent("coder", "claude-code")
    reports: list[TaskProgress] = []
    async with TaskExecutor(registry, ledger=ledger) as run:
        result = await run.run(
            [AgentTask(task_id="t", description="Code.", agent="coder")],
            on_progress=reports.append,
        )
    assert result.ok, result.results["t"].error
    # One report an answer, its tokens added up, no text (the answer comes whole at the end).
    assert [(r.output_tokens, r.delta) for r in reports] == [(40, ""), (52, "")]
    assert reports[0].provider == "claude-code" and reports[1].elapsed_s >= reports[0].elapsed_s


async def test_a_cli_that_cannot_start_fails_its_attempt_saying_why(
    monkeypatch: pytest.MonkeyPatch, ledger: Ledger, tmp_path: Path
) -> None:
    broken = tmp_path / "claude"
    broken.write_text("#!/no/such/interpreter\n")
    broken.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    registry = AgentRegistry()
    registry.register_agent("coder", "claude-code", script_fallback=False)
    async with TaskExecutor(registry, ledger=ledger, retry=RetryPolicy.never()) as run:
        result = await run.run([AgentTask(task_id="t", description="Code.", agent="coder")])
    (row,) = attempt_rows(ledger)
    assert row["status"] == "failed" and row["error_type"] == "FileNotFoundError"
    assert "ExceptionGroup" not in (result.results["t"].error or "")
