from __future__ import annotations

from pathlib import Path

import pytest

from llm_abstractions import ConfigurationError, MissingCredentialsError, UnknownProviderError
from orchestration import AgentRegistry, AgentTask, TaskResult, TaskStatus, UnknownAgentError
from orchestration.agent_registry import AgentConfig, AgentInterface, AgentType

CANARY = "sk-canary-7f3e9b1d"


def test_register_agent_with_the_familiar_signature() -> None:
    registry = AgentRegistry()
    config = registry.register_agent(
        name="claude-sonnet",
        agent_type=AgentType.ANTHROPIC_CLAUDE,
        interface=AgentInterface.API,
        model="claude-sonnet-4-6",
        metadata={"max_tokens": 4096, "temperature": 0.7, "system_prompt": "be brief"},
    )
    assert isinstance(config, AgentConfig)
    assert config.agent_type == "anthropic-claude"
    assert registry.get("claude-sonnet") is config
    assert "claude-sonnet" in registry and len(registry) == 1
    assert [a.name for a in registry] == ["claude-sonnet"]


def test_agent_type_names_match_the_factory() -> None:
    from llm_abstractions import LlmFactory

    assert sorted(t.value for t in AgentType) == LlmFactory.names()


def test_unknown_provider_and_duplicate_names_are_refused() -> None:
    registry = AgentRegistry()
    with pytest.raises(UnknownProviderError, match="Did you mean 'openai-gpt'"):
        registry.register_agent("a", "openai-gtp")
    registry.register_agent("a", "local")
    with pytest.raises(ConfigurationError, match="already registered"):
        registry.register_agent("a", "local")
    registry.register_agent("a", "local", model="other.gguf", replace=True)
    assert registry.get("a").model == "other.gguf"


def test_unknown_agent_suggests_close_names() -> None:
    registry = AgentRegistry()
    registry.register_agent("backend-engineer", "local")
    with pytest.raises(UnknownAgentError) as info:
        registry.get("backend-enginer")
    assert "Did you mean 'backend-engineer'?" in str(info.value)
    assert isinstance(info.value, LookupError)


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"interface": "script"}, "needs script settings with a command"),
        ({"interface": "telepathy"}, "interface"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"fallbacks": ["me"]}, "its own fallback"),
        ({"colour": "blue"}, "colour"),
        ({"temprature": 0.2}, "unknown setting 'temprature'; did you mean 'temperature'"),
        ({"metadata": {"max_token": 8}}, "did you mean 'max_tokens'"),
        ({"max_tokens": 0}, "setting 'max_tokens' must be greater than 0"),
    ],
)
def test_invalid_settings_name_the_field(settings: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigurationError, match=needle):
        AgentRegistry().register_agent("me", "local", **settings)  # type: ignore[arg-type]


def test_bad_agent_names_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="name"):
        AgentRegistry().register_agent("has spaces", "local")


def test_keys_are_secrets_that_never_serialize(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = AgentRegistry()
    config = registry.register_agent("writer", "openai-gpt", api_key=CANARY)
    assert CANARY not in repr(config)
    assert CANARY not in str(config.model_dump())
    assert CANARY not in config.model_dump_json()
    assert config.resolved_api_key() == CANARY
    by_env = registry.register_agent("env-writer", "openai-gpt", api_key_env="WRITER_KEY")
    with pytest.raises(MissingCredentialsError, match="WRITER_KEY"):
        by_env.resolved_api_key()
    monkeypatch.setenv("WRITER_KEY", CANARY)
    assert by_env.resolved_api_key() == CANARY


def test_script_agents_keep_their_settings() -> None:
    config = AgentRegistry().register_agent(
        "lint",
        "local",
        interface="script",
        script={"command": ["python", "lint.py"], "timeout_s": 5},
    )
    assert config.interface is AgentInterface.SCRIPT
    assert config.script is not None
    assert config.script.command == ("python", "lint.py")
    assert config.script.timeout_s == 5


AGENTS_TOML = """
[agents.writer]
type = "anthropic-claude"
model = "claude-sonnet-4-6"
api_key_env = "WRITER_KEY"
fallbacks = ["local-writer"]
max_concurrency = 4
metadata = { max_tokens = 4096, temperature = 0.7 }

[agents.local-writer]
type = "local"

[agents.lint]
type = "local"
interface = "script"
script = { command = ["python", "tools/lint_agent.py"], timeout_s = 60 }
"""


def test_agents_load_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "agents.toml"
    path.write_text(AGENTS_TOML)
    registry = AgentRegistry.from_toml(path)
    assert registry.names() == ["lint", "local-writer", "writer"]
    writer = registry.get("writer")
    assert (writer.agent_type, writer.model, writer.max_concurrency) == (
        "anthropic-claude",
        "claude-sonnet-4-6",
        4,
    )
    assert writer.fallbacks == ("local-writer",)
    assert writer.metadata == {"max_tokens": 4096, "temperature": 0.7}
    lint = registry.get("lint")
    assert lint.script is not None and lint.script.timeout_s == 60


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[agents.x]\ntype = "local"\napi_key = "sk-123"\n', "keys do not belong in files"),
        ("[agents.x]\nmodel = 'm'\n", 'needs type = "<provider>"'),
        ('[agents.x]\ntype = "lokal"\n', "Did you mean 'local'"),
        ('[agents.x]\ntype = "local"\nmax_concurrency = -1\n', r"\[agents.x\].*max_concurrency"),
        ("[other]\n", r"no \[agents.NAME\] tables"),
        ("[agents.x\n", "Cannot read agent file"),
    ],
)
def test_bad_toml_names_file_and_agent(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "agents.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=needle):
        AgentRegistry.from_toml(path)


def test_missing_toml_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="Agent file not found"):
        AgentRegistry.from_toml(tmp_path / "nope.toml")


def test_tasks_and_results_defaults() -> None:
    task = AgentTask(task_id="TASK-001", description="do it", metadata={"context": "c"})
    assert (task.agent, task.depends_on, task.timeout) == (None, (), None)
    with pytest.raises(ValueError, match="timeout"):
        AgentTask(task_id="t", description="d", timeout=0)
    result = TaskResult(task_id="t", status=TaskStatus.SUCCEEDED, output="x")
    assert result.succeeded and result.usage.input_tokens is None and result.cost_usd is None
    assert TaskStatus.SKIPPED.finished and not TaskStatus.RUNNING.finished
