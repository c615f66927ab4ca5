"""Tools from a real MCP server process (the mcp SDK's own server), over stdio and HTTP.

The server is ``tests/support/mcp_server.py``; the model is the loopback OpenAI server. The
server logs its start and each call, so a test counts connections and calls.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from llm_abstractions import ConfigurationError
from orchestration import AgentRegistry, AgentTask, McpServer, RetryPolicy, TaskExecutor
from tests.fakes.openai_api import openai_app
from tests.fakes.server import LoopbackServer, Scripted, loopback_fixtures

server, api = loopback_fixtures(openai_app)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def model(api: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> LoopbackServer:
    monkeypatch.setenv("OPENAI_BASE_URL", f"{api.url}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-loopback-mcp")
    return api


@pytest.fixture
def mcp_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "mcp.log"
    monkeypatch.setenv("ORCHESTRA_TEST_MCP_LOG", str(path))
    return path


def logged(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def stdio_server() -> McpServer:
    return McpServer.stdio(
        sys.executable,
        "-m",
        "tests.support.mcp_server",
        "stdio",
        cwd=str(ROOT),
        env={"ORCHESTRA_TEST_MCP_LOG": os.environ["ORCHESTRA_TEST_MCP_LOG"]},
    )


def ledger_rows(statement: str) -> list[tuple[Any, ...]]:
    path = os.environ["ORCHESTRA_DB_URL"].removeprefix("sqlite:///")
    with closing(sqlite3.connect(path)) as db:
        return db.execute(statement).fetchall()


async def run(tools: list[Any], tasks: list[AgentTask]) -> Any:
    agents = AgentRegistry()
    agents.register_agent("dev", "openai-gpt", model="gpt-4o-mini", tools=tools)
    async with TaskExecutor(agents, retry=RetryPolicy.never()) as executor:
        return await executor.run(tasks)


@pytest.mark.anyio
async def test_a_stdio_servers_tools_are_listed_once_a_run_and_called_in_the_loop(
    model: LoopbackServer, mcp_log: Path
) -> None:
    calls: list[tuple[str, dict[str, Any] | str]] = [
        ("add", {"a": 2, "b": 40}),
        ("lookup", {"word": "nothing"}),
    ]
    model.script(
        Scripted(text="", tool_calls=calls),
        Scripted(text="42; no entry."),
        Scripted(text="", tool_calls=[("add", {"a": "two", "b": 1})]),  # refused before the call
        Scripted(text="Could not."),
    )
    tasks = [
        AgentTask(task_id="one", description="Add 2 and 40; look up nothing.", agent="dev"),
        AgentTask(task_id="two", description="Add two and 1.", agent="dev", depends_on=("one",)),
    ]
    result = await run([stdio_server()], tasks)
    assert result.ok, [r.error for r in result.results.values()]
    offered = {tool["function"]["name"]: tool["function"] for tool in model.requests[0]["tools"]}
    assert sorted(offered) == ["add", "lookup"]
    assert offered["add"]["description"] == "Add two integers."
    assert offered["add"]["parameters"]["required"] == ["a", "b"]
    told = [m["content"] for m in model.requests[1]["messages"] if m["role"] == "tool"]
    assert told[0] == "42"
    assert told[1].startswith("error: lookup raised McpToolError: ") and "no entry for" in told[1]
    refused = [m["content"] for m in model.requests[3]["messages"] if m["role"] == "tool"]
    assert refused[0].startswith("error: invalid arguments: a: 'two' is not of type 'integer'")
    # One server process for the whole run, two calls reached it (the refused one did not).
    events = logged(mcp_log)
    assert [e for e in events if "started" in e] == [{"started": "stdio"}]
    assert [e.get("call") for e in events if "call" in e] == ["add", "lookup"]
    rows = ledger_rows(
        "SELECT task_id, tool, result, error IS NOT NULL FROM tool_calls ORDER BY id"
    )
    assert sorted(rows) == [
        ("one", "add", "42", 0),
        ("one", "lookup", None, 1),
        ("two", "add", None, 1),
    ]


def free_port() -> int:
    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def http_server(mcp_log: Path) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.mcp_server", "http", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, "the MCP server exited"
                assert time.monotonic() < deadline, "the MCP server never listened"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.anyio
async def test_a_streamable_http_servers_tools_with_a_prefix(
    model: LoopbackServer, http_server: str, mcp_log: Path
) -> None:
    model.script(
        Scripted(text="", tool_calls=[("dict_lookup", {"word": "orchestra"})]),
        Scripted(text="A group of musicians."),
    )
    task = AgentTask(
        task_id="define",
        description="Define orchestra.",
        agent="dev",
        tools=[McpServer.http(http_server, prefix="dict_")],
    )
    result = await run([], [task])
    assert result.ok, result.results["define"].error
    names = [tool["function"]["name"] for tool in model.requests[0]["tools"]]
    assert names == ["dict_add", "dict_lookup"]
    told = [m["content"] for m in model.requests[1]["messages"] if m["role"] == "tool"]
    assert told == ["a group of musicians"]
    assert [e.get("call") for e in logged(mcp_log) if "call" in e] == ["lookup"]


@pytest.mark.anyio
async def test_a_server_that_cannot_start_fails_the_run_before_any_task(
    model: LoopbackServer, tmp_path: Path
) -> None:
    broken = McpServer.stdio(sys.executable, str(tmp_path / "missing.py"))
    task = AgentTask(task_id="t", description="Use it.", agent="dev")
    with pytest.raises(ConfigurationError, match=r"MCP server '.*missing\.py' could not be used"):
        await run([broken], [task])
    assert model.requests == []
    assert ledger_rows("SELECT status FROM runs") == [("failed",)]


def test_mcp_servers_are_described_plainly() -> None:
    with pytest.raises(ConfigurationError, match="give an http:// or https:// URL"):
        McpServer.http("localhost:8000/mcp")
    assert McpServer.stdio("npx", "server").label == "npx server"
    secret = McpServer.http("https://user:token@mcp.example/mcp?key=k")
    assert secret.label == "https://mcp.example/mcp"  # what messages and the ledger show
