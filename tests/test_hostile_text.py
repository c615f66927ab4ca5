"""Text no ledger can store (unpaired surrogates) is repaired where it comes in, never fatal."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from orchestration import AgentRegistry, AgentTask, TaskExecutor, TaskStatus
from orchestration.ledger import Ledger
from orchestration.model.text import storable
from tests.fakes.faults import FaultPlan, FaultServer
from tests.support.ledger_rows import rows

pytestmark = pytest.mark.anyio


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultServer]:
    with FaultServer(FaultPlan()) as faults:
        monkeypatch.setenv("OPENAI_BASE_URL", f"{faults.url}/v1")
        yield faults


def test_storable_replaces_only_what_utf8_cannot_carry() -> None:
    assert storable("plain") == ("plain", 0)
    assert storable("déjà vu \ufffd") == ("déjà vu \ufffd", 0)
    assert storable("a\ud800b\udfff") == ("a\ufffdb\ufffd", 2)
    assert storable("x\ud83d\ude00y") == ("x\U0001f600y", 0)  # a split pair is joined


async def test_a_surrogate_in_a_vendor_answer_loses_nothing_else(
    server: FaultServer, ledger: Ledger
) -> None:
    registry = AgentRegistry()
    registry.register_agent("gpt", "openai-gpt", model="gpt-4o-mini", api_key="k")
    tasks = [
        AgentTask(task_id="bad", description="[[task:bad]] [[surrogate]] go", agent="gpt"),
        AgentTask(
            task_id="after", description="[[task:after]] go", agent="gpt", depends_on=("bad",)
        ),
        AgentTask(task_id="other", description="[[task:other]] go", agent="gpt"),
    ]
    async with TaskExecutor(registry, ledger=ledger) as executor:
        run = await executor.run(tasks, run_id="hostile")
        assert run.ok, {t: r.error for t, r in run.results.items()}
        bad = run.results["bad"]
        assert bad.output == "done:bad \ufffd"
        assert bad.metadata["text_repaired"] == (
            "1 unpaired surrogate(s) in the answer replaced with U+FFFD"
        )
        # The repaired answer reached its dependent, and the ledger holds every task.
        again = await executor.resume("hostile")
        assert again.ok
    stored = rows(ledger, "SELECT task_id, status, output FROM task_runs ORDER BY task_id")
    assert stored == [
        ("after", "succeeded", "done:after"),
        ("bad", "succeeded", "done:bad \ufffd"),
        ("other", "succeeded", "done:other"),
    ]
    assert len(server.log) == 3  # the resume sent nothing again


async def test_a_surrogate_in_a_script_answer_is_repaired(tmp_path: Path, ledger: Ledger) -> None:
    script = tmp_path / "agent.py"
    script.write_text('import sys\nsys.stdin.read()\nprint(\'{"output": "x \\\\ud800 y"}\')\n')
    registry = AgentRegistry()
    registry.register_agent(
        "tool", "local", interface="script", script={"command": [sys.executable, str(script)]}
    )
    async with TaskExecutor(registry, ledger=ledger) as executor:
        result = await executor.execute(AgentTask(task_id="s", description="go"), agent="tool")
    assert result.status is TaskStatus.SUCCEEDED, result.error
    assert result.output == "x \ufffd y"
    assert rows(ledger, "SELECT response FROM attempts") == [("x \ufffd y",)]


def test_a_task_whose_prompt_cannot_be_sent_is_refused_when_made() -> None:
    with pytest.raises(ValidationError, match="unpaired surrogate"):
        AgentTask(task_id="t", description="half a pair: \ud800")
