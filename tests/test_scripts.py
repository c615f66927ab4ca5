"""Script execution: the bundled HTTP fallback and users' own script agents."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from orchestration import AgentRegistry, AgentTask, RetryPolicy, TaskExecutor, TaskStatus
from orchestration.ledger import default_db_url
from tests import loopback

pytestmark = pytest.mark.anyio
KEY = "sk-loopback-test-key-123"


@pytest.fixture
def chat_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with loopback.chat_server(unavailable=1) as url:
        monkeypatch.setenv("OPENAI_BASE_URL", url)
        yield url


async def test_unavailable_provider_falls_back_to_the_script(chat_server: str) -> None:
    registry = AgentRegistry()
    registry.register_agent(
        "gpt", "openai-gpt", model="gpt-4o-mini", api_key=KEY, metadata={"max_tokens": 20}
    )
    executor = TaskExecutor(registry=registry, retry=RetryPolicy.never())
    task = AgentTask(task_id="T1", description="Say hello", metadata={"system_prompt": "brief"})
    result = await executor.execute(task, agent="gpt")
    await executor.aclose()
    assert result.status is TaskStatus.SUCCEEDED, result.error
    assert result.output == "from loopback"
    assert result.metadata["execution_method"] == "script"
    assert (result.usage.input_tokens, result.usage.output_tokens) == (11, 2)
    assert result.attempts == 2
    in_process, request = loopback.ChatServer.seen  # the SDK's call got a 503; the script's
    assert in_process["max_completion_tokens"] == 20
    assert request["path"] == "/v1/chat/completions"
    assert request["auth"] == f"Bearer {KEY}"  # the agent's key, passed in the environment
    assert request["messages"][0] == {"role": "system", "content": "brief"}
    assert request["max_tokens"] == 20
    with sqlite3.connect(default_db_url().removeprefix("sqlite:///")) as db:
        attempts = db.execute(
            "SELECT attempt, execution_method, status, error_type, cost_usd FROM attempts"
        ).fetchall()
    assert attempts[0][:4] == (1, "llm_factory", "failed", "LLMServerError")
    assert attempts[1][:3] == (2, "script", "succeeded")
    assert attempts[1][4] is not None and attempts[1][4] > 0  # priced by genai-prices


async def test_no_fallback_when_the_agent_forbids_it(chat_server: str) -> None:
    registry = AgentRegistry()
    registry.register_agent("gpt", "openai-gpt", api_key=KEY, script_fallback=False)
    executor = TaskExecutor(registry=registry, retry=RetryPolicy.never())
    result = await executor.execute(AgentTask(task_id="T", description="x"), agent="gpt")
    await executor.aclose()
    assert result.status is TaskStatus.FAILED and result.attempts == 1
    assert len(loopback.ChatServer.seen) == 1  # the in-process call only


def script_agent(tmp_path: Path, body: str, **script: Any) -> AgentRegistry:
    path = tmp_path / "agent.py"
    path.write_text(body)
    registry = AgentRegistry()
    registry.register_agent(
        "tool",
        "local",
        interface="script",
        script={"command": [sys.executable, str(path)], **script},
    )
    return registry


async def run_tool(registry: AgentRegistry, **task: Any) -> Any:
    executor = TaskExecutor(registry=registry)
    try:
        return await executor.execute(
            AgentTask(task_id="T", description="describe", **task), agent="tool"
        )
    finally:
        await executor.aclose()


ECHO = """
import json, os, sys
request = json.load(sys.stdin)
print(json.dumps({"output": request["prompt"].upper(), "usage": {"input_tokens": 3}}))
"""


async def test_script_agent_gets_the_task_on_stdin(tmp_path: Path) -> None:
    result = await run_tool(script_agent(tmp_path, ECHO))
    assert result.status is TaskStatus.SUCCEEDED, result.error
    assert result.output == "DESCRIBE"
    assert result.metadata["execution_method"] == "script"
    assert (result.usage.input_tokens, result.usage.output_tokens) == (3, None)


ENV_DUMP = """
import json, os, sys
json.load(sys.stdin)
print(json.dumps({"output": json.dumps(sorted(os.environ))}))
"""


async def test_script_environment_holds_nothing_it_was_not_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOME_SECRET_OF_THE_PARENT", "hunter2")
    result = await run_tool(script_agent(tmp_path, ENV_DUMP))
    names = set(json.loads(result.output))
    assert "SOME_SECRET_OF_THE_PARENT" not in names
    allowed = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "LC_CTYPE", "PWD"}
    assert names <= allowed | {"ORCHESTRA_SCRIPT_RUN"}  # the run's cookie, not a secret


HANG = """
import json, os, subprocess, sys, time
json.load(sys.stdin)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(os.environ["HOME"] + "/child.pid", "w") as f:
    f.write(str(child.pid))
time.sleep(600)
"""


async def test_hung_script_is_killed_with_its_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    result = await run_tool(script_agent(tmp_path, HANG, timeout_s=1.5))
    assert result.status is TaskStatus.FAILED
    assert result.metadata["error_type"] == "script:timeout"
    child = int((tmp_path / "child.pid").read_text())
    for _ in range(200):  # SIGKILL is delivered at once, but reaping the child can lag
        if not _alive(child):
            break
        await anyio.sleep(0.05)
    assert not _alive(child), "the script's child outlived the timeout"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers; it is dead for our purpose.
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


@pytest.mark.parametrize(
    ("body", "error_type", "needle"),
    [
        (
            "import sys; sys.stdin.read(); print('not json at all')",
            "script:protocol",
            "one JSON object",
        ),
        (
            "import sys; sys.stdin.read(); sys.stderr.write('kaboom happened'); sys.exit(3)",
            "script:exit",
            "kaboom happened",
        ),
        ("import sys; sys.stdin.read(); print('[1, 2]')", "script:protocol", "one JSON object"),
        ("import sys; sys.stdin.read(); print('{\"usage\": {}}')", "KeyError", "output"),
        (
            "import sys; sys.stdin.read(); sys.stdout.write('x' * 5_000_000)",
            "script:output",
            "more than 10000 bytes",
        ),
    ],
)
async def test_bad_scripts_fail_cleanly(
    tmp_path: Path, body: str, error_type: str, needle: str
) -> None:
    result = await run_tool(script_agent(tmp_path, body, max_output_bytes=10_000, timeout_s=30))
    assert result.status is TaskStatus.FAILED
    assert result.metadata["error_type"] == error_type
    assert needle in (result.error or "")


async def test_the_scripts_answer_is_checked_like_any_other(chat_server: str) -> None:
    from orchestration import OutputRejected

    def formal(text: str) -> None:
        if not text.startswith("Dear"):
            raise OutputRejected("Start with 'Dear'.")

    registry = AgentRegistry()
    registry.register_agent("gpt", "openai-gpt", model="gpt-4o-mini", api_key=KEY)
    executor = TaskExecutor(registry=registry, retry=RetryPolicy.never())
    task = AgentTask(task_id="T1", description="Say hello", validators=(formal,))
    result = await executor.execute(task, agent="gpt")
    await executor.aclose()
    assert result.status is TaskStatus.FAILED  # "from loopback" is refused, not accepted
    assert result.metadata["execution_method"] == "script"
    assert result.error == "invalid_output: Start with 'Dear'."


# A grandchild in a session of its own, which the script's process group does not hold.
SETSID_GRANDCHILD = """
import json, os, subprocess, sys, time
json.load(sys.stdin)
pid_file = os.environ["HOME"] + "/grandchild.pid"
sleeper = "import os, time; open({0!r} + '.tmp', 'w').write(str(os.getpid())); " \\
    "os.rename({0!r} + '.tmp', {0!r}); time.sleep(60)".format(pid_file)
quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
if HOW == "setsid":
    subprocess.Popen([sys.executable, "-c", sleeper], start_new_session=True, **quiet)  # setsid()
elif os.fork() == 0:  # double fork: the grandchild is orphaned, reparented, in a new session
    os.setsid()
    if os.fork() == 0:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.execv(sys.executable, [sys.executable, "-c", sleeper])
    os._exit(0)
while not os.path.exists(pid_file):
    time.sleep(0.01)
print(json.dumps({"output": "answered"}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="escaping the process group is Linux-tested")
@pytest.mark.parametrize("how", ["setsid", "double-fork"])
async def test_a_grandchild_in_its_own_session_dies_with_the_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    body = f"HOW = {how!r}\n{SETSID_GRANDCHILD}"
    result = await run_tool(script_agent(tmp_path, body, timeout_s=30))
    grandchild = int((tmp_path / "grandchild.pid").read_text())
    try:
        assert result.status is TaskStatus.SUCCEEDED, result.error
        assert result.output == "answered"
        assert await _dies(grandchild), f"the {how} grandchild outlived its script"
    finally:
        _kill(grandchild)


# The script answers and exits; the child it left behind still holds its stdout.
ANSWER_AND_LEAVE_A_CHILD = """
import json, os, subprocess, sys
json.load(sys.stdin)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
with open(os.environ["HOME"] + "/child.pid", "w") as f:
    f.write(str(child.pid))
print(json.dumps({"output": "answered"}), flush=True)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="process states are read from /proc")
async def test_the_answer_counts_when_the_script_exits_and_its_child_holds_stdout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    result = await run_tool(script_agent(tmp_path, ANSWER_AND_LEAVE_A_CHILD, timeout_s=30))
    child = int((tmp_path / "child.pid").read_text())
    try:
        assert result.status is TaskStatus.SUCCEEDED, result.error
        assert result.output == "answered"
        assert await _dies(child), "the script's child outlived it"
    finally:
        _kill(child)


async def _dies(pid: int) -> bool:
    for _ in range(100):  # SIGKILL is delivered at once, but reaping can lag
        if not _alive(pid):
            return True
        await anyio.sleep(0.05)
    return False


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.skipif(sys.platform != "linux", reason="escaping the process group is Linux-tested")
async def test_a_cancelled_run_kills_the_grandchild_in_its_own_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestration.runtime.subprocess_runner import run_script

    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / "agent.py"
    path.write_text(f"HOW = 'setsid'\n{SETSID_GRANDCHILD}\ntime.sleep(600)\n")
    pid_file = tmp_path / "grandchild.pid"
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: run_script([sys.executable, str(path)], {}, timeout_s=60, max_output_bytes=999)
        )
        for _ in range(1500):  # until the grandchild is up
            if pid_file.exists():
                break
            await anyio.sleep(0.02)
        tg.cancel_scope.cancel()  # the caller gives up on the run
    grandchild = int(pid_file.read_text())
    try:
        assert await _dies(grandchild), "the grandchild outlived the cancelled run"
    finally:
        _kill(grandchild)
