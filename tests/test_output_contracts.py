"""Output contracts: typed answers, validators, retries that say what was wrong, honest status."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, Field

from llm_abstractions import BaseLlm, LlmFactory, LlmRequest, LlmResponse, Usage
from llm_abstractions.testing import FunctionLlm, ScriptedLlm
from orchestration import (
    AgentRegistry,
    AgentTask,
    GraphValidationError,
    OutputRejected,
    RetryPolicy,
    RunStatus,
    TaskExecutor,
    TaskStatus,
)
from orchestration.ledger import Ledger
from orchestration.model.contracts import OutputContract

pytestmark = pytest.mark.anyio


class Todo(BaseModel):
    title: str = Field(min_length=1)
    done: bool = False


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = Ledger(f"sqlite:///{tmp_path / 'runs.db'}")
    yield opened
    opened.close()


def rows(ledger: Ledger, sql: str) -> list[tuple[Any, ...]]:
    assert ledger.path is not None
    with sqlite3.connect(ledger.path) as connection:
        return connection.execute(sql).fetchall()


def scripted(*answers: str | LlmResponse | BaseException) -> ScriptedLlm:
    llm = ScriptedLlm(list(answers))
    LlmFactory.register_provider("scripted", lambda **_: llm, replace=True)
    return llm


def agents(**settings: Any) -> AgentRegistry:
    registry = AgentRegistry()
    registry.register_agent("writer", "scripted", **settings)
    return registry


def fast(**changes: Any) -> RetryPolicy:
    return RetryPolicy(base_delay_s=0, jitter=0, **changes)


async def test_without_a_contract_the_value_is_the_text_and_the_ledger_keeps_no_copy(
    ledger: Ledger,
) -> None:
    scripted("plain words", '{"title": "cached"}')
    plain = AgentTask(task_id="p", agent="writer", description="Say something.")
    typed = AgentTask(
        task_id="t", agent="writer", description="One todo.", output_type=Todo, depends_on=("p",)
    )
    async with TaskExecutor(agents(), ledger=ledger) as executor:
        run = await executor.run([plain, typed])
    assert run.ok
    assert run.results["p"].value == run.results["p"].output == "plain words"
    assert run.results["t"].value == Todo(title="cached")
    assert rows(ledger, "SELECT task_id, value FROM task_runs ORDER BY task_id") == [
        ("p", None),
        ("t", '{"title":"cached","done":false}'),
    ]


async def test_a_typed_answer_becomes_the_value_and_the_ledger_keeps_its_json(
    ledger: Ledger,
) -> None:
    llm = scripted('{"title": "write tests"}')
    task = AgentTask(task_id="t", agent="writer", description="One todo.", output_type=Todo)
    async with TaskExecutor(agents(), ledger=ledger) as executor:
        run = await executor.run([task])
    result = run.results["t"]
    assert run.ok and result.value == Todo(title="write tests")
    assert result.output == '{"title": "write tests"}'
    sent = llm.calls[0]
    assert sent.output_schema is not None and sent.output_schema.name == "Todo"
    assert sent.output_schema.json_schema == Todo.model_json_schema()
    assert '"title"' in sent.messages[0].content  # the schema is in the prompt as well
    assert rows(ledger, "SELECT value FROM task_runs") == [
        ('{"title":"write tests","done":false}',)
    ]
    stored = rows(ledger, "SELECT request, response, validation FROM attempts")
    request, response, validation = stored[0]
    assert json.loads(request)["output_schema"]["name"] == "Todo"
    assert (response, validation) == ('{"title": "write tests"}', "accepted")
    contract = json.loads(rows(ledger, "SELECT contract FROM run_tasks")[0][0])
    assert contract["output_type"] == "Todo" and contract["validators"] == []


async def test_a_refused_answer_is_asked_again_with_every_invalid_field(ledger: Ledger) -> None:
    llm = scripted("Sure! Here it is.", '{"title": "", "done": "maybe"}', '{"title": "ok"}')
    task = AgentTask(task_id="t", agent="writer", description="One todo.", output_type=Todo)
    # One try per provider for failures retrying could fix: refusals do not count against it.
    async with TaskExecutor(agents(), ledger=ledger, retry=fast(max_attempts=1)) as executor:
        run = await executor.run([task])
    assert run.ok and run.results["t"].value == Todo(title="ok")
    assert run.results["t"].attempts == 3
    second, third = llm.calls[1], llm.calls[2]
    assert [m.role for m in second.messages] == ["user", "assistant", "user"]
    assert second.messages[1].content == "Sure! Here it is."
    assert "not a valid Todo" in second.messages[2].content
    assert "Invalid JSON" in second.messages[2].content
    # The conversation so far goes with each retry, and the reasons name each field.
    assert [m.role for m in third.messages] == ["user", "assistant", "user"] * 1 + [
        "assistant",
        "user",
    ]
    feedback = third.messages[4].content
    assert "- title: String should have at least 1 character" in feedback
    assert '- done: Input should be a valid boolean, unable to interpret input (got "maybe")' in (
        feedback
    )
    recorded = rows(
        ledger, "SELECT attempt, status, error_type, validation FROM attempts ORDER BY attempt"
    )
    assert recorded == [
        (1, "failed", "invalid_output", "refused"),
        (2, "failed", "invalid_output", "refused"),
        (3, "succeeded", None, "accepted"),
    ]
    reasons = rows(ledger, "SELECT error_message FROM attempts WHERE status = 'failed'")
    assert all(r[0].startswith("invalid_output: It is not a valid Todo") for r in reasons)


async def test_a_task_never_answered_usably_fails_and_holds_back_its_dependents(
    ledger: Ledger,
) -> None:
    llm = scripted("nope", repeat := "still nope", repeat)
    tasks = [
        AgentTask(task_id="t", agent="writer", description="One todo.", output_type=Todo),
        AgentTask(task_id="after", agent="writer", description="Use it.", depends_on=("t",)),
    ]
    async with TaskExecutor(agents(), ledger=ledger, retry=fast()) as executor:
        run = await executor.run(tasks)
    assert run.status is RunStatus.FAILED
    failed = run.results["t"]
    assert failed.status is TaskStatus.FAILED and failed.value is None
    assert failed.error is not None and failed.error.startswith("invalid_output: It is not a valid")
    assert run.results["after"].status is TaskStatus.SKIPPED
    assert len(llm.calls) == 3  # the first answer and max_output_retries (2) more
    assert rows(ledger, "SELECT status, error FROM task_runs WHERE task_id = 't'")[0][0] == "failed"


async def test_max_output_retries_bounds_the_retries(ledger: Ledger) -> None:
    llm = scripted("a", "b", "c")
    task = AgentTask(task_id="t", agent="writer", description="x", output_type=Todo)
    policy = fast(max_output_retries=0)
    async with TaskExecutor(agents(), ledger=ledger, retry=policy) as executor:
        run = await executor.run([task])
    assert run.results["t"].status is TaskStatus.FAILED and len(llm.calls) == 1


async def test_validators_refuse_with_a_reason_and_may_replace_the_value(ledger: Ledger) -> None:
    llm = scripted("hello", "HELLO WORLD")

    def shouting(text: str) -> None:
        if not text.isupper():
            raise OutputRejected("Answer in capitals only.")

    def words(text: str) -> list[str]:
        return text.split()

    task = AgentTask(
        task_id="t", agent="writer", description="Greet.", validators=(shouting, words)
    )
    async with TaskExecutor(agents(), ledger=ledger, retry=fast()) as executor:
        run = await executor.run([task])
    assert run.ok and run.results["t"].value == ["HELLO", "WORLD"]
    assert run.results["t"].output == "HELLO WORLD"
    assert "Answer in capitals only." in llm.calls[1].messages[2].content
    assert llm.calls[1].output_schema is None  # no output_type: nothing to enforce natively
    assert rows(ledger, "SELECT value FROM task_runs") == [('["HELLO","WORLD"]',)]


async def test_a_validator_that_crashes_fails_the_task_without_a_retry(ledger: Ledger) -> None:
    llm = scripted('{"title": "x"}', '{"title": "y"}')

    def broken(todo: Todo) -> None:
        _ = 1 / 0

    task = AgentTask(
        task_id="t", agent="writer", description="x", output_type=Todo, validators=(broken,)
    )
    async with TaskExecutor(agents(), ledger=ledger, retry=fast()) as executor:
        run = await executor.run([task])
    failed = run.results["t"]
    assert failed.status is TaskStatus.FAILED and len(llm.calls) == 1
    assert failed.error is not None
    assert "crashed: ZeroDivisionError: division by zero" in failed.error
    assert "broken" in failed.error


async def test_an_answer_cut_at_max_tokens_says_so(ledger: Ledger) -> None:
    cut = LlmResponse(text='{"title": "unfin', provider="p", model="m", finish_reason="length")
    llm = scripted(cut, '{"title": "done"}')
    task = AgentTask(task_id="t", agent="writer", description="x", output_type=Todo)
    async with TaskExecutor(agents(), ledger=ledger, retry=fast()) as executor:
        run = await executor.run([task])
    assert run.ok
    assert (
        "cut off at the token limit (max_tokens): make it shorter"
        in llm.calls[1].messages[2].content
    )
    assert rows(ledger, "SELECT finish_reason FROM attempts ORDER BY attempt") == [
        ("length",),
        ("stop",),
    ]


async def test_a_fenced_json_answer_is_accepted(ledger: Ledger) -> None:
    scripted('```json\n{"title": "fenced"}\n```')
    task = AgentTask(task_id="t", agent="writer", description="x", output_type=list[Todo] | Todo)
    async with TaskExecutor(agents(), ledger=ledger) as executor:
        run = await executor.run([task])
    assert run.results["t"].value == Todo(title="fenced")


@dataclass
class Point:
    x: int
    y: int


def test_contracts_take_what_typeadapter_takes() -> None:
    points = OutputContract.of(list[Point], [])
    assert points is not None and points.check('[{"x": 1, "y": 2}]') == [Point(1, 2)]
    assert points.schema_name == "list_Point_"
    mapping = OutputContract.of(dict[str, int], [])
    assert mapping is not None and mapping.check('{"a": 1}') == {"a": 1}
    with pytest.raises(OutputRejected, match=r"- a: Input should be a valid integer"):
        mapping.check('{"a": "x"}')
    assert OutputContract.of(None, []) is None


class NotPydantic:
    def __init__(self, anything: object) -> None:
        self.anything = anything


async def test_bad_contracts_are_refused_before_anything_runs(ledger: Ledger) -> None:
    llm = scripted("x")
    tasks = [
        AgentTask(task_id="a", agent="writer", description="x", output_type=NotPydantic),
        AgentTask(task_id="b", agent="writer", description="x", output_type=Todo),
    ]
    async with TaskExecutor(agents(), ledger=ledger) as executor:
        with pytest.raises(GraphValidationError) as info:
            await executor.run(tasks)
    assert info.value.problems == [
        "task 'a': output_type NotPydantic cannot be used: pydantic cannot validate it or "
        "write its JSON schema (Unable to generate pydantic-core schema for <class "
        "'tests.test_output_contracts.NotPydantic'>. Set `arbitrary_types_allowed=True` in the "
        "model_config to ignore this error or implement `__get_pydantic_core_schema__` on your "
        "type to fully support it.). Use a pydantic model, a dataclass, or list/dict of those."
    ]
    assert llm.calls == [] and rows(ledger, "SELECT COUNT(*) FROM runs") == [(0,)]
    with pytest.raises(ValueError, match="Input should be callable"):
        AgentTask(task_id="c", description="x", validators=("not callable",))  # type: ignore[arg-type]


class TextOnlyLlm(BaseLlm):
    provider: ClassVar[str] = "text-only"

    async def generate(self, request: LlmRequest) -> LlmResponse:
        return LlmResponse(text="{}", provider=self.provider, model=self.model)


async def test_a_provider_without_structured_output_is_refused_before_the_run(
    ledger: Ledger,
) -> None:
    LlmFactory.register_provider("text-only", TextOnlyLlm)
    scripted('{"title": "x"}')
    registry = AgentRegistry()
    registry.register_agent("plain", "text-only")
    registry.register_agent("typed", "scripted", fallbacks=("plain",))
    typed = AgentTask(task_id="t", agent="typed", description="x", output_type=Todo)
    async with TaskExecutor(registry, ledger=ledger) as executor:
        with pytest.raises(Exception, match="'plain' runs on provider 'text-only', which cannot"):
            await executor.run([typed])
        # Validators alone need no structured output.
        checked = AgentTask(task_id="v", agent="plain", description="x", validators=(len,))
        assert (await executor.run([checked])).ok


async def test_the_ledger_never_keeps_a_key_sent_or_echoed(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-very-secret-key-123456"  # noqa: S105 - a fake key, to be masked
    monkeypatch.setenv("SCRIPTED_KEY", secret)
    LlmFactory.register_provider(
        "scripted",
        lambda **_: ScriptedLlm([f"the key is {secret}"]),
        env_keys=("SCRIPTED_KEY",),
    )
    registry = AgentRegistry()
    registry.register_agent("writer", "scripted", api_key_env="SCRIPTED_KEY")
    task = AgentTask(task_id="t", agent="writer", description=f"Repeat {secret}.")
    async with TaskExecutor(registry, ledger=ledger) as executor:
        assert (await executor.run([task])).ok
    stored = rows(ledger, "SELECT request, response FROM attempts")
    assert len(stored) == 1 and "Repeat" in stored[0][0] and "the key is" in stored[0][1]
    assert secret not in repr(stored)


async def test_resume_needs_the_contracts_back_and_restores_typed_values(ledger: Ledger) -> None:
    answers = {"a": ['{"title": "first"}'], "b": ["bad", "bad", "bad", '{"title": "second"}']}

    def answer(request: LlmRequest) -> str:
        return answers[str(request.metadata["task_id"])].pop(0)

    llm = FunctionLlm(answer)
    LlmFactory.register_provider("scripted", lambda **_: llm, replace=True)
    tasks = [
        AgentTask(task_id="a", agent="writer", description="x", output_type=Todo),
        AgentTask(task_id="b", agent="writer", description="y", output_type=Todo),
    ]
    async with TaskExecutor(agents(), ledger=ledger, retry=fast()) as executor:
        first = await executor.run(tasks)
        assert first.results["b"].status is TaskStatus.FAILED
        with pytest.raises(Exception, match=r"task\(s\) 'b' had an output contract"):
            await executor.resume(first.run_id, retry_failed=True)
        again = await executor.resume(first.run_id, retry_failed=True, tasks=tasks)
    assert again.ok
    assert again.results["a"].value == Todo(title="first")  # kept, its value read back
    assert again.results["b"].value == Todo(title="second")


async def test_orchestra_output_prints_answers_as_they_came(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from orchestration.cli import app

    scripted("not json", '{"title": "kept"}', "no", "no", "no")
    tasks = [
        AgentTask(task_id="good", agent="writer", description="x", output_type=Todo),
        AgentTask(
            task_id="bad", agent="writer", description="y", output_type=Todo, depends_on=("good",)
        ),
    ]
    async with TaskExecutor(agents(), retry=fast()) as executor:
        run = await executor.run(tasks)
    assert run.results["bad"].status is TaskStatus.FAILED
    cli = CliRunner()

    final = cli.invoke(app, ["output", run.run_id, "good"])
    assert (final.exit_code, final.stdout) == (0, '{"title": "kept"}\n')
    first_try = cli.invoke(app, ["output", run.run_id[:8], "good", "--attempt", "1"])
    assert (first_try.exit_code, first_try.stdout) == (0, "not json\n")
    as_json = json.loads(cli.invoke(app, ["output", run.run_id, "good", "--json"]).stdout)
    assert as_json["value"] == {"title": "kept", "done": False}
    detail = json.loads(
        cli.invoke(app, ["output", run.run_id, "good", "--attempt", "1", "--json"]).stdout
    )
    assert (
        detail["validation"] == "refused" and detail["request"]["output_schema"]["name"] == "Todo"
    )

    failed = cli.invoke(app, ["output", run.run_id, "bad"])
    assert failed.exit_code == 1 and failed.stdout == ""
    assert "task 'bad' has no usable output (invalid_output: It is not a valid Todo:)" in (
        failed.stderr
    )
    assert "--attempt 3" in failed.stderr
    missing = cli.invoke(app, ["output", run.run_id, "nope"])
    assert missing.exit_code == 2 and "has no task 'nope'; its tasks: good, bad" in missing.stderr

    everything = cli.invoke(app, ["output", run.run_id])
    assert everything.exit_code == 1
    assert everything.stdout.startswith('=== good: succeeded ===\n{"title": "kept"}\n=== bad: ')

    shown = cli.invoke(app, ["show", run.run_id, "--json"])
    refused = {t["task_id"]: t["refused"] for t in json.loads(shown.stdout)["tasks"]}
    assert refused == {"good": 1, "bad": 3}

    from orchestration.cli.report import render_html
    from orchestration.cli.report_data import load_report

    page = render_html(load_report(Ledger(), run.run_id))
    assert "good #1: llm_factory, scripted, scripted-model, failed (refused: It is not a" in page
    assert '<td class="error">invalid_output: It is not a valid Todo:' in page


async def test_a_resumed_run_keeps_a_validators_value(ledger: Ledger) -> None:
    answers = {"a": ["alpha beta"], "b": ["no", "no", "no", "fine"]}

    def answer(request: LlmRequest) -> str:
        return answers[str(request.metadata["task_id"])].pop(0)

    llm = FunctionLlm(answer)
    LlmFactory.register_provider("scripted", lambda **_: llm, replace=True)

    def fine(text: str) -> None:
        if text != "fine":
            raise OutputRejected("Say fine.")

    tasks = [
        AgentTask(task_id="a", agent="writer", description="x", validators=(str.split,)),
        AgentTask(task_id="b", agent="writer", description="y", validators=(fine,)),
    ]
    async with TaskExecutor(agents(), ledger=ledger, retry=fast()) as executor:
        first = await executor.run(tasks)
        assert first.results["a"].value == ["alpha", "beta"]
        again = await executor.resume(first.run_id, retry_failed=True, tasks=tasks)
    assert again.ok and again.results["a"].value == ["alpha", "beta"]
    assert again.results["b"].value == "fine"


def priced(*answers: str) -> tuple[ScriptedLlm, AgentRegistry]:
    """A scripted model standing in for a priced provider (gpt-4o-mini's list price)."""
    llm = ScriptedLlm(
        [
            LlmResponse(
                text=text,
                provider="openai-gpt",
                model="gpt-4o-mini",
                usage=Usage(input_tokens=1000, output_tokens=1000),
            )
            for text in answers
        ]
    )
    LlmFactory.register_provider("openai-gpt", lambda **_: llm, replace=True)
    registry = AgentRegistry()
    registry.register_agent("writer", "openai-gpt", model="gpt-4o-mini", metadata={"max_tokens": 5})
    return llm, registry


async def test_a_task_costs_every_answer_it_was_given_refused_or_not(ledger: Ledger) -> None:
    _, registry = priced("no", "no", '{"title": "ok"}')
    task = AgentTask(task_id="t", agent="writer", description="x", output_type=Todo)
    async with TaskExecutor(registry, ledger=ledger, retry=fast()) as executor:
        run = await executor.run([task])
    paid = rows(ledger, "SELECT SUM(cost_usd) FROM attempts")[0][0]
    one = rows(ledger, "SELECT cost_usd FROM attempts WHERE attempt = 1")[0][0]
    assert paid == pytest.approx(3 * one) and one > 0
    assert run.results["t"].cost_usd == pytest.approx(paid)
    assert rows(ledger, "SELECT cost_usd FROM task_runs")[0][0] == pytest.approx(paid)


async def test_asking_again_is_admitted_by_the_runs_budget_first(ledger: Ledger) -> None:
    llm, registry = priced("no", "no", '{"title": "ok"}')
    task = AgentTask(task_id="t", agent="writer", description="x", output_type=Todo)
    async with TaskExecutor(registry, ledger=ledger, retry=fast()) as executor:
        run = await executor.run([task], budget_usd=0.0007)  # spent by the first answer
    result = run.results["t"]
    assert result.status is TaskStatus.BUDGET_EXCEEDED and len(llm.calls) == 1
    assert result.error is not None and result.error.startswith("not asked again: the next")
    assert "the last answer was refused: It is not a valid Todo" in result.error


async def test_async_validators_are_refused_before_the_run(ledger: Ledger) -> None:
    async def later(text: str) -> None:
        raise OutputRejected("never")

    scripted("x")
    task = AgentTask(task_id="t", agent="writer", description="x", validators=(later,))
    async with TaskExecutor(agents(), ledger=ledger) as executor:
        with pytest.raises(GraphValidationError, match="validator .*later is async"):
            await executor.run([task])


async def test_a_dict_given_as_output_type_is_a_clear_error(ledger: Ledger) -> None:
    scripted("x")
    task = AgentTask(task_id="t", agent="writer", description="x", output_type={"title": str})
    async with TaskExecutor(agents(), ledger=ledger) as executor:
        with pytest.raises(GraphValidationError, match="output_type .* cannot be used"):
            await executor.run([task])


async def test_a_typed_task_with_a_grammar_too_is_refused_before_the_run(ledger: Ledger) -> None:
    scripted("x")
    registry = agents(metadata={"grammar": 'root ::= "x"'})
    task = AgentTask(task_id="t", agent="writer", description="x", output_type=Todo)
    async with TaskExecutor(registry, ledger=ledger) as executor:
        with pytest.raises(Exception, match="has an output_type, and a grammar"):
            await executor.run([task])


async def test_response_format_gives_way_to_the_schema(ledger: Ledger) -> None:
    llm = scripted('{"title": "t"}')
    registry = agents(metadata={"response_format": "json"})
    task = AgentTask(task_id="t", agent="writer", description="x", output_type=Todo)
    async with TaskExecutor(registry, ledger=ledger) as executor:
        assert (await executor.run([task])).ok
    assert llm.calls[0].response_format is None and llm.calls[0].output_schema is not None


async def test_a_text_answer_cut_at_max_tokens_is_not_accepted(ledger: Ledger) -> None:
    llm = scripted(LlmResponse(text="half an ans", provider="p", model="m", finish_reason="length"))
    task = AgentTask(task_id="t", agent="writer", description="x", validators=(len,))
    policy = fast(max_output_retries=0)
    async with TaskExecutor(agents(), ledger=ledger, retry=policy) as executor:
        run = await executor.run([task])
    assert run.results["t"].error == (
        "invalid_output: It was cut off at the token limit (max_tokens): make it shorter."
    )
    assert len(llm.calls) == 1


async def test_a_validators_other_type_of_value_is_kept_whole(ledger: Ledger) -> None:
    scripted('{"title": "buy milk"}')

    def steps(todo: Todo) -> Point:
        return Point(len(todo.title), 0)

    task = AgentTask(
        task_id="t", agent="writer", description="x", output_type=Todo, validators=(steps,)
    )
    async with TaskExecutor(agents(), ledger=ledger) as executor:
        run = await executor.run([task])
    assert run.results["t"].value == Point(8, 0)
    assert rows(ledger, "SELECT value FROM task_runs") == [('{"x":8,"y":0}',)]


async def test_a_cached_answer_the_contract_refuses_is_not_used(ledger: Ledger) -> None:
    llm = scripted("plain words", '{"title": "fresh"}')
    plain = AgentTask(task_id="t", agent="writer", description="x")
    typed = AgentTask(
        task_id="t", agent="writer", description="x", validators=(Todo.model_validate_json,)
    )
    async with TaskExecutor(agents(), ledger=ledger, cache=True) as executor:
        assert (await executor.run([plain])).results["t"].output == "plain words"
        again = await executor.run([typed])
    assert again.ok and again.results["t"].value == Todo(title="fresh") and len(llm.calls) == 2
    assert rows(ledger, "SELECT execution_method FROM attempts ORDER BY id") == [
        ("llm_factory",),
        ("llm_factory",),
    ]


LEARNER = """
import json, sys
request = json.load(sys.stdin)
told = any("not accepted" in m["content"] for m in request["messages"])
print(json.dumps({"output": '{"title": "learnt"}' if told else "no idea"}))
"""


async def test_a_script_agent_is_asked_again_with_the_reason_too(
    ledger: Ledger, tmp_path: Path
) -> None:
    import sys

    script = tmp_path / "learner.py"
    script.write_text(LEARNER)
    registry = AgentRegistry()
    registry.register_agent(
        "tool", "local", interface="script", script={"command": [sys.executable, str(script)]}
    )
    task = AgentTask(task_id="t", agent="tool", description="x", output_type=Todo)
    async with TaskExecutor(registry, ledger=ledger) as executor:
        run = await executor.run([task])
    assert run.ok and run.results["t"].value == Todo(title="learnt")
    recorded = rows(
        ledger, "SELECT attempt, validation, request IS NOT NULL, response FROM attempts"
    )
    assert recorded == [(1, "refused", 1, "no idea"), (2, "accepted", 1, '{"title": "learnt"}')]


async def test_no_key_reaches_a_tasks_row_either(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-another-secret-key-98765"  # noqa: S105 - a fake key, to be masked
    monkeypatch.setenv("SCRIPTED_KEY", secret)
    LlmFactory.register_provider(
        "scripted",
        lambda **_: ScriptedLlm([f'{{"title": "{secret}"}}']),
        env_keys=("SCRIPTED_KEY",),
    )
    registry = AgentRegistry()
    registry.register_agent("writer", "scripted", api_key_env="SCRIPTED_KEY")
    task = AgentTask(task_id="t", agent="writer", description="x", output_type=Todo)
    async with TaskExecutor(registry, ledger=ledger) as executor:
        assert (await executor.run([task])).ok
    stored = rows(ledger, "SELECT output, value FROM task_runs")
    assert len(stored) == 1 and "title" in stored[0][0] and secret not in repr(stored)
