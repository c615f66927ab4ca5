"""Tools: functions made tools, the tool loop of an attempt, and every call in the ledger.

The model is the loopback OpenAI server speaking the real wire format (tool calls as the
SDK reads them); the tools are plain Python functions.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from llm_abstractions import ConfigurationError
from orchestration import AgentRegistry, AgentTask, RetryPolicy, TaskExecutor
from orchestration.model.tools import Tool, ToolLike
from tests.fakes.openai_api import openai_app
from tests.fakes.server import LoopbackServer, Scripted, loopback_fixtures

server, api = loopback_fixtures(openai_app)

KEY = "sk-loopback-tools-0123456789"
Calls = list[tuple[str, dict[str, Any] | str]]


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first.
        b: The second.
    """
    return a + b


WORDS = {"orchestra": "a group of musicians"}


async def lookup(word: str) -> str:
    """Look a word up in the dictionary.

    Args:
        word: The word, in lower case.
    """
    if word not in WORDS:
        raise KeyError(f"no entry for {word!r}")
    return WORDS[word]


def words_sent(request: dict[str, Any]) -> int:
    """The input tokens the fake bills a request: its messages' words."""
    return sum(len(str(m.get("content", "")).split()) for m in request["messages"])


def ledger_rows(statement: str) -> list[tuple[Any, ...]]:
    path = os.environ["ORCHESTRA_DB_URL"].removeprefix("sqlite:///")
    with closing(sqlite3.connect(path)) as db:
        return db.execute(statement).fetchall()


@pytest.fixture
def env(api: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackServer]:
    monkeypatch.setenv("OPENAI_BASE_URL", f"{api.url}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    yield api


def registry(**options: Any) -> AgentRegistry:
    agents = AgentRegistry()
    agents.register_agent("calc", "openai-gpt", model="gpt-4o-mini", tools=[add], **options)
    return agents


async def run_one(agents: AgentRegistry, task: AgentTask) -> Any:
    async with TaskExecutor(agents, retry=RetryPolicy.never()) as executor:
        return await executor.execute(task)


# -- Functions as tools -------------------------------------------------------------------


def test_a_function_becomes_a_tool_with_its_schema_and_descriptions() -> None:
    tool = Tool.of(add)
    assert (tool.name, tool.description) == ("add", "Add two integers.")
    assert tool.parameters == {
        "type": "object",
        "properties": {
            "a": {"type": "integer", "description": "The first."},
            "b": {"type": "integer", "description": "The second."},
        },
        "required": ["a", "b"],
        "additionalProperties": False,
    }
    assert tool.arguments('{"a": 1, "b": 2}') == {"a": 1, "b": 2}
    assert anyio.run(tool.call, {"a": 1, "b": 2}) == "3"
    named = Tool.of(lookup, name="define", description="Define a word.", timeout_s=5)
    assert (named.name, named.description, named.timeout_s) == ("define", "Define a word.", 5)


class Point(BaseModel):
    x: float
    y: float


def test_structured_parameters_are_described_and_checked() -> None:
    def move(to: Point, steps: list[int] | None = None) -> Point:
        """Move."""
        return to

    tool = Tool.of(move)
    assert tool.parameters["$defs"]["Point"]["required"] == ["x", "y"]
    assert tool.arguments('{"to": {"x": 1, "y": 2}}') == {"to": Point(x=1, y=2), "steps": None}
    assert anyio.run(tool.call, {"to": Point(x=1, y=2)}) == '{"x": 1.0, "y": 2.0}'


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        ("not json", "the arguments are not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"a": 1}', "b: Field required"),
        ('{"a": "one", "b": 2}', "a: Input should be a valid integer"),
        ('{"a": 1, "b": 2, "c": 3}', "c: Extra inputs are not permitted"),
    ],
)
def test_bad_arguments_are_refused_saying_why(arguments: str, said: str) -> None:
    with pytest.raises(ValueError, match=said):
        Tool.of(add).arguments(arguments)


def test_tools_that_cannot_be_described_are_refused_when_made() -> None:
    def takes_socket(conn: socket.socket) -> None:
        """Use a socket."""

    def untyped(x) -> None:  # type: ignore[no-untyped-def]
        """No hint."""

    def variadic(*numbers: int) -> int:
        """Sum."""
        return sum(numbers)

    for function, said in (
        (takes_socket, "parameter 'conn' is a socket, which has no JSON schema"),
        (untyped, "parameter 'x' has no type hint"),
        (variadic, r"\*numbers cannot be described"),
        (lambda: None, "tool name '<lambda>'"),
    ):
        with pytest.raises(ConfigurationError, match=said):
            Tool.of(function)
    with pytest.raises(ValueError, match="two tools are named 'add'"):
        AgentTask(task_id="t", description="d", tools=[add, Tool.of(add)])
    with pytest.raises(ConfigurationError, match="parameter 'conn' is a socket"):
        AgentRegistry().register_agent("x", "openai-gpt", tools=[takes_socket])


# -- The tool loop ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_two_tool_task_calls_both_then_answers_and_the_ledger_has_every_call(
    env: LoopbackServer,
) -> None:
    env.script(
        Scripted(
            text="", tool_calls=[("add", {"a": 2, "b": 40}), ("lookup", {"word": "orchestra"})]
        ),
        Scripted(text="42; an orchestra is a group of musicians."),
    )
    task = AgentTask(task_id="t", description="Add 2 and 40; define orchestra.", tools=[lookup])
    result = await run_one(registry(), task.model_copy(update={"agent": "calc"}))
    assert result.succeeded, result.error
    assert result.output == "42; an orchestra is a group of musicians."
    assert result.metadata["turns"] == 2
    first, second = env.requests
    assert [tool["function"]["name"] for tool in first["tools"]] == ["add", "lookup"]
    assert second["messages"][-2:] == [
        {"role": "tool", "tool_call_id": "call_0", "content": "42"},
        {"role": "tool", "tool_call_id": "call_1", "content": "a group of musicians"},
    ]
    calls = ledger_rows(
        "SELECT attempt, turn, call_id, tool, arguments, result, error FROM tool_calls "
        "ORDER BY call_id"
    )
    assert calls == [
        (1, 1, "call_0", "add", '{"a": 2, "b": 40}', "42", None),
        (1, 1, "call_1", "lookup", '{"word": "orchestra"}', "a group of musicians", None),
    ]
    # The attempt's tokens and cost are both turns' (the fake counts words).
    ((tokens_in, tokens_out, cost),) = ledger_rows(
        "SELECT input_tokens, output_tokens, cost_usd FROM attempts"
    )
    assert tokens_in == sum(words_sent(request) for request in env.requests)
    assert tokens_out == 4 + 2 + 8  # both calls' arguments (in words), then the answer
    assert cost is not None and cost > 0


@pytest.mark.anyio
async def test_calls_that_go_wrong_are_told_to_the_model_which_corrects_itself(
    env: LoopbackServer,
) -> None:
    started = threading.Event()

    def hang(seconds: float) -> str:
        """Wait."""
        started.set()
        time.sleep(seconds)
        return "late"

    slow = Tool.of(hang, timeout_s=0.2)
    calls: Calls = [
        ("nope", {}),
        ("add", "{not json"),
        ("add", {"a": "two", "b": 1}),
        ("lookup", {"word": "unknown"}),
        ("hang", {"seconds": 2}),
    ]
    env.script(Scripted(text="", tool_calls=calls), Scripted(text="Sorry: I could not."))
    task = AgentTask(task_id="t", description="Try.", agent="calc", tools=[lookup, slow])
    result = await run_one(registry(), task)
    assert result.succeeded and result.output == "Sorry: I could not."
    told = [m["content"] for m in env.requests[1]["messages"] if m["role"] == "tool"]
    assert told[0] == "error: there is no tool 'nope'; the tools are add, hang, lookup"
    assert told[1].startswith("error: the arguments are not valid JSON")
    assert told[2].startswith("error: invalid arguments: a: Input should be a valid integer")
    assert told[3] == "error: lookup raised KeyError: \"no entry for 'unknown'\""
    assert told[4] == "error: hang did not answer within 0.2 s (it may still complete)"
    errors = ledger_rows("SELECT tool, result, error FROM tool_calls ORDER BY call_id")
    assert all(result is None and error for _, result, error in errors) and len(errors) == 5


@pytest.mark.anyio
async def test_a_model_that_keeps_calling_tools_stops_at_max_turns(env: LoopbackServer) -> None:
    env.script(*[Scripted(text="", tool_calls=[("add", {"a": n, "b": 1})]) for n in range(9)])
    task = AgentTask(task_id="t", description="Loop.", agent="calc", max_turns=3)
    fast = RetryPolicy(base_delay_s=0.01, jitter=0)  # retries on, for failures that merit one
    async with TaskExecutor(registry(), retry=fast) as executor:
        result = await executor.execute(task)
    assert not result.succeeded and "max_turns=3" in (result.error or "")
    assert len(env.requests) == 3  # and no retry: it would loop again
    ((status, error_type, tokens_out, cost),) = ledger_rows(
        "SELECT status, error_type, output_tokens, cost_usd FROM attempts"
    )
    assert (status, error_type) == ("failed", "MaxTurnsExceeded")
    assert tokens_out == 3 * 4 and cost is not None and cost > 0  # the turns were paid for
    assert len(ledger_rows("SELECT * FROM tool_calls")) == 2  # the third turn's: not run


@pytest.mark.anyio
async def test_the_final_answer_of_a_tool_loop_meets_the_output_type(env: LoopbackServer) -> None:
    env.script(
        Scripted(text="", tool_calls=[("add", {"a": 1, "b": 2})]),
        Scripted(text='{"x": 3, "y": 0}'),
    )
    task = AgentTask(task_id="t", description="Where?", agent="calc", output_type=Point)
    result = await run_one(registry(), task)
    assert result.succeeded and result.value == Point(x=3, y=0)
    assert env.requests[1]["response_format"]["type"] == "json_schema"


def test_tools_on_a_provider_that_cannot_call_them_are_refused_before_the_run(
    env: LoopbackServer,
) -> None:
    agents = AgentRegistry()
    script = {"command": ["python", "-c", "pass"]}
    agents.register_agent("cli", "openai-gpt", interface="script", script=script, tools=[add])
    task = AgentTask(task_id="t", description="Add.", agent="cli")
    with pytest.raises(ConfigurationError, match="'cli' is a script agent, which cannot call"):
        anyio.run(run_one, agents, task)
    assert env.requests == []
    assert json.loads(agents.get("cli").model_dump_json()).get("tools") is None


@pytest.mark.anyio
async def test_show_report_and_export_list_the_tool_calls(
    env: LoopbackServer, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from orchestration.cli import app

    env.script(
        Scripted(text="", tool_calls=[("add", {"a": 1, "b": 2}), ("add", {"a": "x", "b": 2})]),
        Scripted(text="3"),
    )
    result = await run_one(registry(), AgentTask(task_id="sum", description="1+2?", agent="calc"))
    assert result.succeeded
    ((run_id,),) = ledger_rows("SELECT id FROM runs")
    cli = CliRunner()
    shown = json.loads(cli.invoke(app, ["show", run_id, "--json"]).output)
    (task,) = shown["tasks"]
    assert (task["tool_calls"], task["tool_calls_failed"]) == (2, 1)
    plain = cli.invoke(app, ["show", run_id, "--format", "plain"]).output.splitlines()
    header, row = (line.split("\t") for line in plain)
    assert row[header.index("tools")] == "2 (1 failed)"
    page = cli.invoke(app, ["report", run_id, "--json"]).output
    calls = json.loads(page)["tool_calls"]
    assert sorted((c["tool"], c["result"] or "", c["error"] is None) for c in calls) == [
        ("add", "", False),
        ("add", "3", True),
    ]
    assert cli.invoke(app, ["report", run_id, "--html", str(tmp_path / "r.html")]).exit_code == 0
    table = (tmp_path / "r.html").read_text().split("<h2>Tool calls</h2>")[1]
    assert table.count("<tr>") == 3 and "Input should be a valid integer" in table
    exported = [
        json.loads(line) for line in cli.invoke(app, ["export", run_id]).output.splitlines()
    ]
    assert [r["type"] for r in exported].count("tool_call") == 2


@pytest.mark.anyio
async def test_a_resumed_task_replays_calls_of_tools_that_must_not_run_twice(
    env: LoopbackServer,
) -> None:
    charged: list[int] = []
    fetched: list[str] = []

    def charge(cents: int) -> str:
        """Charge the customer."""
        charged.append(cents)
        return f"receipt-{len(charged)}"

    def fetch(page: str) -> str:
        """Fetch a page."""
        fetched.append(page)
        return f"page {page} v{len(fetched)}"

    tools: list[ToolLike] = [charge, Tool.of(fetch, idempotent=True)]
    calls: Calls = [("charge", {"cents": 500}), ("fetch", {"page": "a"})]
    refused = Scripted(status=400, body={"error": {"message": "bad", "type": "invalid_request"}})
    env.script(Scripted(text="", tool_calls=calls), refused)  # the first run dies mid-loop
    agents = AgentRegistry()
    agents.register_agent("shop", "openai-gpt", model="gpt-4o-mini", tools=tools)
    task = AgentTask(task_id="buy", description="Buy it.", agent="shop")
    async with TaskExecutor(agents, retry=RetryPolicy.never()) as executor:
        first = await executor.run([task])
        assert not first.ok and charged == [500] and fetched == ["a"]
        # The resumed loop asks for the same calls (keys in another order, too).
        again: Calls = [("charge", '{ "cents":500 }'), ("fetch", {"page": "a"})]
        env.script(Scripted(text="", tool_calls=again), Scripted(text="Bought."))
        second = await executor.resume(first.run_id, retry_failed=True, tasks=[task])
    assert second.ok and second.results["buy"].output == "Bought."
    assert charged == [500]  # not charged twice: the recorded receipt was given back
    assert fetched == ["a", "a"]  # idempotent: run again
    told = [m["content"] for m in env.requests[-1]["messages"] if m["role"] == "tool"]
    assert told == ["receipt-1", "page a v2"]
    rows = ledger_rows("SELECT attempt, tool, result, replayed FROM tool_calls ORDER BY id")
    assert sorted(rows) == [
        (1, "charge", "receipt-1", 0),
        (1, "fetch", "page a v1", 0),
        (2, "charge", "receipt-1", 1),
        (2, "fetch", "page a v2", 0),
    ]


@pytest.mark.anyio
async def test_a_task_with_its_own_tools_is_resumed_only_with_them_given_again(
    env: LoopbackServer,
) -> None:
    refused = Scripted(status=400, body={"error": {"message": "bad", "type": "invalid_request"}})
    env.script(refused)
    agents = AgentRegistry()
    agents.register_agent("plain", "openai-gpt", model="gpt-4o-mini")
    task = AgentTask(task_id="t", description="Add.", agent="plain", tools=[add])
    async with TaskExecutor(agents, retry=RetryPolicy.never()) as executor:
        first = await executor.run([task])
        with pytest.raises(ConfigurationError, match="output_type, validators\\) or tools"):
            await executor.resume(first.run_id, retry_failed=True)
        env.script(Scripted(text="", tool_calls=[("add", {"a": 1, "b": 1})]), Scripted(text="2"))
        again = await executor.resume(first.run_id, retry_failed=True, tasks=[task])
    assert again.ok and again.results["t"].output == "2"
    assert [m["content"] for m in env.requests[-1]["messages"] if m["role"] == "tool"] == ["2"]


@pytest.mark.anyio
async def test_a_budget_holds_every_turn_a_tool_loop_may_make(env: LoopbackServer) -> None:
    env.script(Scripted(text="3"))
    agents = registry(max_tokens=100)  # about $0.00006 a call at gpt-4o-mini's prices
    task = AgentTask(task_id="t", description="Add 1 and 2.", agent="calc")
    async with TaskExecutor(agents, retry=RetryPolicy.never()) as executor:
        ten_turns = await executor.run([task], budget_usd=0.0002)
        assert ten_turns.results["t"].status.value == "budget_exceeded"
        assert env.requests == []  # ten turns of it would not fit: nothing was sent
        one_turn = task.model_copy(update={"max_turns": 1})
        assert (await executor.run([one_turn], budget_usd=0.0002)).ok


@pytest.mark.anyio
async def test_a_retry_within_the_run_replays_what_must_not_run_twice(
    env: LoopbackServer,
) -> None:
    charged: list[int] = []

    def charge(cents: int) -> str:
        """Charge the customer."""
        charged.append(cents)
        return f"receipt-{len(charged)}"

    down = Scripted(status=500, body={"error": {"message": "down", "type": "server_error"}})
    calls: Calls = [("charge", {"cents": 500})]
    env.script(Scripted(text="", tool_calls=calls), down)  # the attempt dies mid-loop
    env.script(Scripted(text="", tool_calls=calls), Scripted(text="Bought."))  # its retry
    agents = AgentRegistry()
    agents.register_agent("shop", "openai-gpt", model="gpt-4o-mini", tools=[charge])
    task = AgentTask(task_id="buy", description="Buy it.", agent="shop")
    fast = RetryPolicy(max_attempts=2, base_delay_s=0.01, jitter=0)
    async with TaskExecutor(agents, retry=fast) as executor:
        result = await executor.execute(task)
    assert result.succeeded and result.output == "Bought." and charged == [500]
    rows = ledger_rows("SELECT attempt, result, replayed FROM tool_calls ORDER BY id")
    assert rows == [(1, "receipt-1", 0), (2, "receipt-1", 1)]


@pytest.mark.anyio
async def test_an_agents_and_a_tasks_tools_of_one_name_fail_the_task_saying_so(
    env: LoopbackServer,
) -> None:
    task = AgentTask(
        task_id="t", description="Add.", agent="calc", tools=[Tool.of(lookup, name="add")]
    )
    result = await run_one(registry(), task)
    assert not result.succeeded and "two tools are named 'add'" in (result.error or "")
    assert env.requests == []
