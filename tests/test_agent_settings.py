"""An agent's generation settings: typed, checked at registration, and what a task is sent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from llm_abstractions import ConfigurationError, LlmFactory
from llm_abstractions.testing import ScriptedLlm
from orchestration import AgentRegistry, AgentTask, TaskExecutor
from orchestration.agent_registry import AgentConfig
from orchestration.ledger import Ledger
from orchestration.model.agent_registry import GenerationSettings
from orchestration.model.settings import SETTING_NAMES, SettingsArguments
from orchestration.runtime.resume import load_run

FREE = "other keys are kept as your own metadata only if they are not close to a setting"


def register(**kwargs: Any) -> AgentConfig:
    return AgentRegistry().register_agent("x", "openai-gpt", **kwargs)


def test_the_familiar_metadata_becomes_typed_settings() -> None:
    metadata = {"max_tokens": 4096, "temperature": 0.7, "system_prompt": "be brief"}
    agent = register(metadata=metadata)
    assert agent.metadata == metadata  # kept as given
    assert isinstance(agent.settings, GenerationSettings)
    assert (agent.settings.max_tokens, agent.settings.temperature) == (4096, 0.7)
    assert agent.settings.system_prompt == "be brief"
    assert agent.settings.given() == metadata
    with pytest.raises(ValidationError, match="frozen"):
        agent.settings.max_tokens = 5


@pytest.mark.parametrize(
    ("key", "meant"),
    [
        ("max_token", "max_tokens"),
        ("maxtokens", "max_tokens"),
        ("MAX_TOKENS", "max_tokens"),
        ("max_output_tokens", "max_tokens"),
        ("temprature", "temperature"),
        ("Temperature", "temperature"),
        ("temp", "temperature"),
        ("system_promt", "system_prompt"),
        ("top-p", "top_p"),
        ("timeout", "timeout_s"),
        ("stop_sequences", "stop"),
        ("seeds", "seed"),
        ("topp", "top_p"),
    ],
)
def test_a_misspelled_setting_in_metadata_is_refused(key: str, meant: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        register(metadata={key: 1})
    assert str(info.value) == (
        f"agent 'x': unknown setting {key!r} in metadata; did you mean {meant!r}? ({FREE})"
    )


def test_keys_not_close_to_a_setting_stay_the_users_own() -> None:
    metadata = {"role": "writer", "team": "docs", "steps": 3, "topic": "sql", "prompt": "p"}
    metadata |= {"step": 1, "top_k": 40, "context_id": "c", "response_type": "r"}
    agent = register(metadata={**metadata, "seed": 7})
    assert agent.metadata == {**metadata, "seed": 7}
    assert agent.settings.given() == {"seed": 7}


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"max_tokens": 0}, "setting 'max_tokens' must be greater than 0, not 0"),
        ({"max_tokens": -5}, "setting 'max_tokens' must be greater than 0, not -5"),
        ({"max_tokens": "8"}, "setting 'max_tokens' must be a valid integer, not '8'"),
        ({"max_tokens": 8.5}, "setting 'max_tokens' must be a valid integer, not 8.5"),
        ({"max_tokens": True}, "setting 'max_tokens' must be a valid integer, not True"),
        ({"temperature": 2.5}, "setting 'temperature' must be less than or equal to 2"),
        ({"temperature": -0.1}, "setting 'temperature' must be greater than or equal to 0"),
        ({"temperature": "hot"}, "setting 'temperature' must be a valid number, not 'hot'"),
        ({"top_p": 1.5}, "setting 'top_p' must be less than or equal to 1"),
        ({"top_p": 0}, "setting 'top_p' must be greater than 0"),
        ({"seed": "7"}, "setting 'seed' must be a valid integer"),
        ({"stop": 3}, "setting 'stop' must be a string or a list of strings, not 3"),
        ({"stop": ["END", 3]}, r"setting 'stop' \(item 1\) must be a valid string, not 3"),
        ({"timeout_s": 0}, "setting 'timeout_s' must be greater than 0"),
        ({"system_prompt": 5}, "setting 'system_prompt' must be a valid string, not 5"),
        ({"response_format": "xml"}, "setting 'response_format' must be 'text' or 'json'"),
        ({"grammar": ""}, "setting 'grammar' must have at least 1 character"),
        ({"context": ["a"]}, "setting 'context' must be a valid string"),
        ({"examples": [("q",)]}, "setting 'examples' must be a list of"),
        ({"examples": [("q", 1)]}, r"setting 'examples' \(item 0.1\) must be a valid string"),
    ],
)
@pytest.mark.parametrize("given_as", ["metadata", "keyword"])
def test_bad_values_are_refused_naming_agent_and_setting(
    settings: dict[str, object], needle: str, given_as: str
) -> None:
    kwargs: dict[str, Any] = {"metadata": settings} if given_as == "metadata" else settings
    with pytest.raises(ConfigurationError, match=f"^agent 'x': {needle}") as info:
        register(**kwargs)
    assert "\n" not in str(info.value)


def test_several_bad_values_are_named_on_one_line() -> None:
    with pytest.raises(ConfigurationError) as info:
        register(metadata={"max_tokens": 0, "temperature": 9})
    assert str(info.value) == (
        "agent 'x': setting 'max_tokens' must be greater than 0, not 0; "
        "setting 'temperature' must be less than or equal to 2, not 9"
    )


def test_settings_as_keyword_arguments() -> None:
    agent = AgentRegistry().register_agent(
        "a", "openai-gpt", max_tokens=100, temperature=0.2, stop=("END",), seed=3
    )
    assert agent.settings.given() == {
        "max_tokens": 100,
        "temperature": 0.2,
        "stop": ("END",),
        "seed": 3,
    }
    # They join the metadata as JSON holds them: a recorded agent loads back the same.
    assert agent.metadata == {"max_tokens": 100, "temperature": 0.2, "stop": ["END"], "seed": 3}
    unset = AgentRegistry().register_agent("b", "local", max_tokens=None, metadata={"k": 1})
    assert unset.metadata == {"k": 1}


def test_keywords_and_metadata_together() -> None:
    agent = register(metadata={"system_prompt": "be brief", "role": "w"}, temperature=0)
    assert agent.metadata == {"system_prompt": "be brief", "role": "w", "temperature": 0}
    assert agent.settings.temperature == 0.0
    same = register(metadata={"max_tokens": 100, "stop": ("END",)}, max_tokens=100, stop=["END"])
    assert same.settings.max_tokens == 100
    with pytest.raises(ConfigurationError) as info:
        register(metadata={"max_tokens": 200}, max_tokens=100)
    assert str(info.value) == (
        "agent 'x': setting 'max_tokens' is given twice, as 100 and as 200 in metadata; "
        "give it once"
    )


@pytest.mark.parametrize(
    ("keyword", "message"),
    [
        ("temprature", "agent 'x': unknown setting 'temprature'; did you mean 'temperature'?"),
        ("max_token", "agent 'x': unknown setting 'max_token'; did you mean 'max_tokens'?"),
        (
            "max_concurency",
            "agent 'x': unknown option 'max_concurency'; did you mean 'max_concurrency'?",
        ),
        ("fallback", "agent 'x': unknown option 'fallback'; did you mean 'fallbacks'?"),
    ],
)
def test_a_misspelled_keyword_is_refused(keyword: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        register(**{keyword: 1})
    assert str(info.value) == message


def test_an_agent_built_directly_is_checked_too() -> None:
    with pytest.raises(ValidationError, match="did you mean 'temperature'"):
        AgentConfig(name="x", agent_type="local", metadata={"temprature": 0})
    with pytest.raises(ValidationError, match="setting 'max_tokens' must be greater than 0"):
        AgentConfig(name="x", agent_type="local", metadata={"max_tokens": 0})


def test_the_keyword_arguments_name_every_setting() -> None:
    assert SettingsArguments.__optional_keys__ == SETTING_NAMES
    assert SETTING_NAMES == {
        "system_prompt",
        "max_tokens",
        "temperature",
        "top_p",
        "seed",
        "stop",
        "timeout_s",
        "response_format",
        "grammar",
        "context",
        "examples",
        "tool_choice",
        "repo",
    }


# -- TOML ---------------------------------------------------------------------------------


def load(tmp_path: Path, text: str) -> AgentRegistry:
    path = tmp_path / "agents.toml"
    path.write_text(text)
    return AgentRegistry.from_toml(path)


def test_toml_settings_in_metadata_and_on_their_own(tmp_path: Path) -> None:
    registry = load(
        tmp_path,
        '[agents.w]\ntype = "local"\nmax_tokens = 64\nseed = 1\n'
        'metadata = { temperature = 0, system_prompt = "hi", owner = "me" }\n',
    )
    agent = registry.get("w")
    assert agent.settings.given() == {
        "max_tokens": 64,
        "seed": 1,
        "temperature": 0.0,
        "system_prompt": "hi",
    }
    assert agent.metadata["owner"] == "me"


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        (
            "metadata = { max_token = 8 }",
            "unknown setting 'max_token' in metadata; did you mean 'max_tokens'?",
        ),
        ("temprature = 0", "unknown setting 'temprature'; did you mean 'temperature'?"),
        ("metadata = { temperature = 3.0 }", "setting 'temperature' must be less than or equal"),
        ('max_tokens = "many"', "setting 'max_tokens' must be a valid integer, not 'many'"),
        ("max_tokens = 8\nmetadata = { max_tokens = 9 }", "'max_tokens' is given twice"),
    ],
)
def test_toml_settings_are_checked(tmp_path: Path, table: str, needle: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path, f'[agents.w]\ntype = "local"\n{table}\n')
    assert str(info.value).startswith(f"{tmp_path / 'agents.toml'} [agents.w]: agent 'w': ")
    assert needle in str(info.value)


# -- Recorded agents ----------------------------------------------------------------------

# An agent as the run ledger's run_agents table held it before settings were typed.
RECORDED = (
    '{"name":"writer","agent_type":"openai-gpt","interface":"api","model":"gpt-4o-mini",'
    '"api_key_env":"W_KEY","metadata":{"max_tokens":4096,"temperature":0.7,'
    '"system_prompt":"be brief","stop":["END"],"role":"writer","examples":[["q","a"]]},'
    '"fallbacks":["local"],"max_concurrency":null,"script_fallback":true,"script":null,'
    '"cache":null}'
)


def test_an_agent_recorded_before_loads_and_dumps_the_same() -> None:
    agent = AgentConfig.model_validate_json(RECORDED)
    assert agent.model_dump_json() == RECORDED
    assert agent.settings.max_tokens == 4096
    assert agent.settings.stop == ("END",)
    assert agent.settings.examples == (("q", "a"),)
    assert agent.metadata["role"] == "writer"


def test_a_recorded_agent_round_trips_exactly() -> None:
    agent = AgentRegistry().register_agent(
        "w",
        "openai-gpt",
        metadata={"system_prompt": "s", "role": "r"},
        max_tokens=10,
        stop="END",
        examples=[("q", "a")],
        fallbacks=["local"],
    )
    loaded = AgentConfig.model_validate_json(agent.model_dump_json())
    assert loaded == agent
    assert loaded.model_dump_json() == agent.model_dump_json()
    assert loaded.settings == agent.settings


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = Ledger(f"sqlite:///{tmp_path / 'runs.db'}")
    yield opened
    opened.close()


def scripted(*answers: str) -> ScriptedLlm:
    llm = ScriptedLlm(list(answers))
    LlmFactory.register_provider("scripted", lambda **_: llm, replace=True)
    return llm


@pytest.mark.anyio
async def test_the_ledger_keeps_an_agent_and_its_settings(ledger: Ledger) -> None:
    scripted("done")
    registry = AgentRegistry()
    agent = registry.register_agent(
        "w", "scripted", metadata={"role": "r"}, max_tokens=12, temperature=0.3, stop="END"
    )
    async with TaskExecutor(registry, ledger=ledger) as executor:
        run = await executor.run([AgentTask(task_id="t", description="go", agent="w")])
    assert run.ok
    saved = load_run(ledger, run.run_id)
    assert saved.agents == [agent]
    again = saved.registry().get("w")
    assert again == agent and again.settings == agent.settings


@pytest.mark.anyio
async def test_an_agent_recorded_with_a_setting_now_refused_must_be_given_again(
    ledger: Ledger,
) -> None:
    import sqlite3

    scripted("done")
    registry = AgentRegistry()
    registry.register_agent("w", "scripted", max_tokens=12)
    async with TaskExecutor(registry, ledger=ledger) as executor:
        run = await executor.run([AgentTask(task_id="t", description="go", agent="w")])
    # As an earlier version, which checked nothing, could have recorded it:
    assert ledger.path is not None
    with sqlite3.connect(ledger.path) as db:
        db.execute(
            "UPDATE run_agents SET definition = replace(definition, 'max_tokens', 'temprature')"
        )
    saved = load_run(ledger, run.run_id)  # the run itself loads
    with pytest.raises(ConfigurationError, match="recorded agent 'w' with settings this version"):
        saved.registry()


@pytest.mark.anyio
async def test_a_task_recorded_with_a_setting_now_refused(ledger: Ledger) -> None:
    import sqlite3

    scripted("done", "late")
    registry = AgentRegistry()
    registry.register_agent("w", "scripted")
    tasks = [
        AgentTask(task_id="kept", description="go", agent="w", metadata={"max_tokens": 5}),
        AgentTask(task_id="todo", description="go", agent="w", metadata={"max_tokens": 5}),
    ]
    async with TaskExecutor(registry, ledger=ledger) as executor:
        run = await executor.run(tasks)
    assert ledger.path is not None
    with sqlite3.connect(ledger.path) as db:  # as an earlier version could have recorded them
        db.execute(
            "UPDATE run_tasks SET definition = replace(definition, 'max_tokens', 'max_token')"
        )
        db.execute("UPDATE task_runs SET status = 'failed' WHERE task_id = 'todo'")
        db.execute("UPDATE runs SET status = 'failed'")
    # The run loads: its tasks are kept as recorded, and those this version refuses noted.
    saved = load_run(ledger, run.run_id)
    assert [task.metadata for task in saved.tasks] == [{"max_token": 5}] * 2
    assert list(saved.refused_tasks) == ["kept", "todo"]
    # A failed task kept as it is (no --retry-failed) does not run again: resume goes on.
    async with TaskExecutor(registry, ledger=ledger) as executor:
        assert (await executor.resume(run.run_id)).status.value == "failed"
        # Run again, it would be sent with a setting this version refuses: resume says so.
        with pytest.raises(ConfigurationError, match="cannot go on: its task 'todo': unknown"):
            await executor.resume(run.run_id, retry_failed=True)


# -- What a task is sent ------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_task_is_sent_its_agents_settings() -> None:
    llm = scripted("one", "two")
    registry = AgentRegistry()
    registry.register_agent(
        "w",
        "scripted",
        metadata={"system_prompt": "be brief", "role": "r", "context": "for tests"},
        max_tokens=32,
        temperature=0.25,
        top_p=0.9,
        seed=7,
        stop="END",
    )
    tasks = [
        AgentTask(task_id="plain", description="first", agent="w"),
        AgentTask(
            task_id="own",
            description="second",
            agent="w",
            depends_on=("plain",),
            metadata={"max_tokens": 8, "system_prompt": "be long", "temperature": None},
        ),
    ]
    async with TaskExecutor(registry) as executor:
        run = await executor.run(tasks)
    assert run.ok
    plain, own = llm.calls
    assert (plain.max_tokens, plain.temperature, plain.top_p, plain.seed) == (32, 0.25, 0.9, 7)
    assert plain.stop == ("END",) and plain.system == "be brief"
    assert "Context:\nfor tests" in plain.messages[-1].content
    # The task's own metadata wins, setting by setting; None unsets one.
    assert (own.max_tokens, own.system, own.temperature, own.seed) == (8, "be long", None, 7)


@pytest.mark.anyio
async def test_an_agent_s_timeout_bounds_its_attempts_unless_the_task_sets_one() -> None:
    from llm_abstractions.testing import FunctionLlm
    from orchestration import RetryPolicy

    LlmFactory.register_provider("slow", lambda **_: FunctionLlm(lambda r: "ok", latency=5))
    registry = AgentRegistry()
    registry.register_agent("slow", "slow", timeout_s=0.2)
    async with TaskExecutor(registry, retry=RetryPolicy.never()) as executor:
        timed = await executor.execute(AgentTask(task_id="t", description="go"), agent="slow")
        own = await executor.execute(
            AgentTask(task_id="u", description="go", timeout=0.1), agent="slow"
        )
    assert timed.error == "timed out after 0.2 s"
    assert own.error == "timed out after 0.1 s"


@pytest.mark.parametrize(
    ("metadata", "needle"),
    [
        ({"max_token": 8}, "task 't': unknown setting 'max_token' in metadata; did you mean"),
        ({"temprature": 0}, "did you mean 'temperature'"),
        ({"max_tokens": 0}, "task 't': setting 'max_tokens' must be greater than 0, not 0"),
        ({"stop": 3}, "setting 'stop'"),
    ],
)
def test_a_tasks_own_settings_are_checked_when_it_is_made(
    metadata: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ValidationError, match=needle):
        AgentTask(task_id="t", description="d", metadata=metadata)
    mine = AgentTask(task_id="t", description="d", metadata={"owner": "me", "max_tokens": 9})
    assert mine.metadata == {"owner": "me", "max_tokens": 9}


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"system_prompt": "be brief", "context": "for tests", "max_tokens": 32, "stop": "END"},
        {"examples": [["2+2?", "4"], ["3+3?", "6"]], "temperature": 0.5, "seed": 3},
        {"response_format": "json", "top_p": 0.5, "timeout_s": 9.0},
        {"repo": "some/checkout", "grammar": 'root ::= "a"'},
    ],
)
@pytest.mark.parametrize(
    "task",
    [
        AgentTask(task_id="t", description="plain"),
        AgentTask(task_id="t", description="with \ud7ff text", budget_usd=0.5, timeout=3.0),
        AgentTask(task_id="t", description="d", metadata={"owner": "me"}, depends_on=("a", "b")),
    ],
)
def test_a_request_from_the_agents_template_is_the_request_built_field_by_field(
    settings: dict[str, Any], task: AgentTask
) -> None:
    """Tasks without settings of their own reuse their agent's checked request."""
    from orchestration.runtime import prompts

    agent = AgentRegistry().register_agent("x", "ollama", model="m", metadata=settings)
    upstream = {dep: f"output of {dep}" for dep in task.depends_on}
    made = prompts.build_request(task, agent, upstream)
    again = prompts.build_request(task, agent, upstream)  # from the kept template
    full = prompts._assembled(task, agent, upstream, None, {})
    for request in (made, again):
        assert request == full
        assert request.model_fields_set == full.model_fields_set
        assert request.model_dump_json() == full.model_dump_json()
        assert [m.model_fields_set for m in request.messages] == [
            m.model_fields_set for m in full.messages
        ]
    made.metadata["budget_usd"] = 1.0  # a link hands its budget on in place
    assert (
        "budget_usd"
        not in prompts.build_request(AgentTask(task_id="u", description="x"), agent, {}).metadata
    )
