"""OpenTelemetry spans in the GenAI conventions, caught by the SDK's in-memory exporter.

A run against the loopback OpenAI server (a failed call retried, a task that fails and one
it holds back) must give one run span, a span per task that ran and a ``chat`` span per
call, nested so, carrying what the ledger recorded of the same calls.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from orchestration import AgentRegistry, AgentTask, RetryPolicy, TaskExecutor
from orchestration.runtime.results import RunResult
from orchestration.runtime.telemetry import _TRACER, _tracer, run_span
from tests.fakes.openai_api import openai_app
from tests.fakes.server import LoopbackServer, Scripted, loopback_fixtures

server, api = loopback_fixtures(openai_app)

KEY = "sk-loopback-telemetry-0123456789"


@pytest.fixture
def exporter() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    caught = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(caught))
    yield provider, caught
    provider.shutdown()


def team(api: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> tuple[AgentRegistry, list[Any]]:
    monkeypatch.setenv("OPENAI_BASE_URL", f"{api.url}/v1")
    registry = AgentRegistry()
    registry.register_agent("writer", "openai-gpt", model="gpt-4o-mini", api_key=KEY)
    registry.register_agent("critic", "openai-gpt", model="gpt-4o-mini", api_key=KEY)
    tasks = [
        AgentTask(task_id="draft", description="Write.", agent="writer", metadata={"seed": 7}),
        AgentTask(task_id="review", description="Review.", agent="critic", depends_on=("draft",)),
        AgentTask(task_id="publish", description="Go.", agent="writer", depends_on=("review",)),
    ]
    return registry, tasks


def ledger_attempts() -> list[tuple[Any, ...]]:
    path = os.environ["ORCHESTRA_DB_URL"].removeprefix("sqlite:///")
    with closing(sqlite3.connect(path)) as db:
        return db.execute(
            "SELECT task_id, status, input_tokens, output_tokens, cost_usd, error_type "
            "FROM attempts ORDER BY id"
        ).fetchall()


def by_name(spans: tuple[ReadableSpan, ...], prefix: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name.startswith(prefix)]


@pytest.mark.anyio
async def test_a_run_gives_run_task_and_chat_spans_in_the_genai_conventions(
    api: LoopbackServer,
    monkeypatch: pytest.MonkeyPatch,
    exporter: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, caught = exporter
    registry, tasks = team(api, monkeypatch)
    server_error = Scripted(status=500, body={"error": {"message": "down", "type": "server"}})
    refused = Scripted(status=400, body={"error": {"message": "no", "type": "invalid_request"}})
    api.script(server_error, Scripted(text="a draft"), refused)  # review fails for good
    retry = RetryPolicy(max_attempts=2, base_delay_s=0.01, jitter=0)
    tracer = provider.get_tracer("the application")
    with tracer.start_as_current_span("handle request") as outer:
        async with TaskExecutor(registry, retry=retry, tracer_provider=provider) as executor:
            run = await executor.run(tasks, name="team")
    assert [run.results[t].status.value for t in ("draft", "review", "publish")] == [
        "succeeded",
        "failed",
        "skipped",
    ]
    spans = caught.get_finished_spans()
    (run_span,) = by_name(spans, "invoke_workflow ")
    assert run_span.name == "invoke_workflow team" and run_span.kind is SpanKind.INTERNAL
    assert run_span.parent is not None
    assert run_span.parent.span_id == outer.get_span_context().span_id  # the caller's span
    attributes = dict(run_span.attributes or {})
    assert attributes["gen_ai.operation.name"] == "invoke_workflow"
    assert attributes["orchestra.run.id"] == run.run_id
    assert attributes["orchestra.run.status"] == "failed"
    assert run_span.status.status_code is StatusCode.ERROR

    task_spans = by_name(spans, "invoke_agent ")
    assert sorted(span.name for span in task_spans) == [
        "invoke_agent critic",
        "invoke_agent writer",
    ]
    assert all(s.parent and s.parent.span_id == run_span.context.span_id for s in task_spans)
    tasks_by_id = {dict(s.attributes or {})["orchestra.task.id"]: s for s in task_spans}
    assert set(tasks_by_id) == {"draft", "review"}  # "publish" never ran
    assert tasks_by_id["review"].status.status_code is StatusCode.ERROR
    draft_task = dict(tasks_by_id["draft"].attributes or {})
    assert draft_task["orchestra.task.attempts"] == 2
    assert draft_task["gen_ai.provider.name"] == "openai"
    assert draft_task["gen_ai.request.model"] == "gpt-4o-mini"

    chats = sorted(by_name(spans, "chat "), key=lambda span: span.start_time or 0)
    recorded = ledger_attempts()
    assert len(chats) == len(recorded) == 3
    for chat, (task_id, status, tokens_in, tokens_out, cost, error_type) in zip(
        chats, recorded, strict=True
    ):
        seen = dict(chat.attributes or {})
        assert chat.name == "chat gpt-4o-mini" and chat.kind is SpanKind.CLIENT
        assert chat.parent is not None
        assert chat.parent.span_id == tasks_by_id[task_id].context.span_id
        assert seen["gen_ai.operation.name"] == "chat"
        assert seen["gen_ai.provider.name"] == "openai"
        assert seen["gen_ai.request.model"] == "gpt-4o-mini"
        assert seen.get("gen_ai.usage.input_tokens") == tokens_in
        assert seen.get("gen_ai.usage.output_tokens") == tokens_out
        assert seen.get("orchestra.cost_usd") == cost
        assert seen.get("error.type") == error_type
        ok = chat.status.status_code is not StatusCode.ERROR
        assert ok == (status == "succeeded")
        assert ("gen_ai.response.model" in seen) == ok  # a failed call has no response
    draft_ok = dict(chats[1].attributes or {})
    assert draft_ok["gen_ai.request.seed"] == 7
    assert draft_ok["gen_ai.response.finish_reasons"] == ("stop",)
    assert draft_ok["gen_ai.response.model"] == "gpt-4o-mini"
    # Only the calls carry gen_ai.usage and the cost: backends add them up across spans.
    for span in (run_span, *task_spans):
        assert not any(key.startswith("gen_ai.usage.") for key in span.attributes or {})
        assert "orchestra.cost_usd" not in (span.attributes or {})
    assert dict(run_span.attributes or {})["orchestra.usage.input_tokens"] == 1
    draft_cost = dict(chats[1].attributes or {})["orchestra.cost_usd"]
    assert isinstance(draft_cost, float) and draft_cost > 0
    assert dict(run_span.attributes or {})["orchestra.total_cost_usd"] == draft_cost
    for span in spans:
        assert KEY not in json.dumps(dict(span.attributes or {}))


@pytest.mark.anyio
async def test_nothing_is_traced_without_a_tracer_provider(
    api: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry import trace

    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert _tracer(None) is None  # imported, but not configured: no tracer
    registry, tasks = team(api, monkeypatch)
    seen: list[object] = []

    async def spy() -> None:
        with run_span(RunResult(run_id="r"), 1):
            seen.append(_TRACER.get())

    await spy()
    assert seen == [None]  # nothing in the run would be traced
    async with TaskExecutor(registry) as executor:
        assert (await executor.run(tasks[:1])).ok


GLOBAL_PROVIDER = """
import json
import anyio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from llm_abstractions import LlmFactory
from llm_abstractions.testing import FunctionLlm
from orchestration import AgentRegistry, AgentTask, TaskExecutor

caught = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(caught))
trace.set_tracer_provider(provider)

LlmFactory.register_provider("echo", lambda **_: FunctionLlm(lambda r: "ok"), replace=True)
registry = AgentRegistry()
registry.register_agent("echoer", "echo")


async def main() -> None:
    async with TaskExecutor(registry, record=False) as executor:
        await executor.run([AgentTask(task_id="one", description="x", agent="echoer")])


anyio.run(main)
print(json.dumps(sorted(span.name for span in caught.get_finished_spans())))
"""


def test_the_applications_global_tracer_provider_is_used(tmp_path: Path) -> None:
    script = tmp_path / "traced.py"
    script.write_text(GLOBAL_PROVIDER)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    names = json.loads(done.stdout)
    assert names == ["chat", "invoke_agent echoer", "invoke_workflow orchestra"]
