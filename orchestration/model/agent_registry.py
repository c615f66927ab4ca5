"""Named agents: which provider, model, interface and settings each one uses.

Agents come from Python (``register_agent``) or a TOML file (``AgentRegistry.from_toml``)::

    [agents.writer]
    type = "anthropic-claude"          # a provider name, see AgentType
    model = "claude-sonnet-4-6"
    api_key_env = "WRITER_ANTHROPIC_KEY"   # keys never live in the file
    fallbacks = ["local-writer"]
    max_concurrency = 4
    metadata = { max_tokens = 4096, temperature = 0.7, system_prompt = "..." }

    [agents.planner]
    type = "openai-gpt"
    max_tokens = 512                   # settings may also stand on their own
    temperature = 0.2

    [agents.lint]
    type = "local"
    interface = "script"
    script = { command = ["python", "tools/lint_agent.py"], timeout_s = 60 }

The generation settings (``max_tokens``, ``temperature``, ``system_prompt``... see
``GenerationSettings``) are checked when the agent is registered, wherever they are given:
a wrong value or a misspelled name (``temprature``) is refused, with a "did you mean".
``AgentConfig.settings`` is their typed view; ``metadata`` holds them as given, with the
user's own keys, so that a recorded agent loads back as it was.

API keys are held as ``SecretStr``: they are excluded from ``model_dump`` and ``repr``, so
they cannot reach the run ledger or a log through the config object.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import os
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, Unpack

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    InstanceOf,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import to_jsonable_python

from llm_abstractions.errors import ConfigurationError, MissingCredentialsError
from llm_abstractions.types import describe_validation_error
from orchestration.model.errors import UnknownAgentError
from orchestration.model.settings import (
    SETTING_NAMES,
    GenerationSettings,
    SettingsArguments,
    close_setting,
    read_settings,
)
from orchestration.model.tools import McpServer, Tool, ToolLike, tools_of

__all__ = [
    "AgentConfig",
    "AgentInterface",
    "AgentOptions",
    "AgentRegistry",
    "AgentType",
    "GenerationSettings",
    "ScriptSettings",
]


class AgentType(StrEnum):
    """The built-in provider names (any name registered with ``LlmFactory`` also works)."""

    ANTHROPIC_CLAUDE = "anthropic-claude"
    OPENAI_GPT = "openai-gpt"
    GOOGLE_GEMINI = "google-gemini"
    HUGGINGFACE = "huggingface"
    OLLAMA = "ollama"
    LMSTUDIO = "lmstudio"
    LOCAL = "local"
    CLAUDE_CODE = "claude-code"  # coding-agent CLIs (orchestration.runtime.coding)
    CODEX = "codex"
    GEMINI_CLI = "gemini-cli"
    AIDER = "aider"


class AgentInterface(StrEnum):
    """How an agent is run: through its provider in-process, or as a subprocess."""

    API = "api"
    SCRIPT = "script"
    CLI = "cli"


class ScriptSettings(BaseModel):
    """A subprocess agent (or a custom script fallback): argv, time and output limits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    command: tuple[str, ...] = Field(min_length=1)
    timeout_s: float = Field(default=120.0, gt=0)
    max_output_bytes: int = Field(default=1_000_000, gt=0)
    cwd: str | None = None


class AgentConfig(BaseModel):
    """One named agent. Build it through ``AgentRegistry.register_agent``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    agent_type: str
    interface: AgentInterface = AgentInterface.API
    model: str | None = None
    api_key: SecretStr | None = Field(default=None, exclude=True, repr=False)
    api_key_env: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)  # settings and the user's own keys
    fallbacks: tuple[str, ...] = ()
    max_concurrency: int | None = Field(default=None, gt=0)
    script_fallback: bool = True
    script: ScriptSettings | None = None
    cache: bool | None = None  # reuse cached answers; None: as the executor says
    # Functions its model may call (``model.tools``); Python objects, so never recorded.
    tools: Sequence[InstanceOf[Tool] | InstanceOf[McpServer] | ToolLike] = Field(
        default=(), exclude=True, repr=False
    )
    # Model calls one attempt may make while it calls tools; None: DEFAULT_MAX_TURNS. Left
    # out of the JSON when not set, so agents recorded before it load and dump the same.
    max_turns: int | None = Field(default=None, gt=0, exclude_if=lambda value: value is None)
    # What a cluster backend reserves for the agent's work and places it by (Ray's
    # ``num_cpus``, ``num_gpus``, ``memory`` in bytes, or custom resources such as
    # ``{"llama": 1}``); the local backend ignores it. Left out of the JSON when not set.
    resources: dict[str, float] | None = Field(default=None, exclude_if=lambda value: value is None)

    @field_validator("resources")
    @classmethod
    def _resources_are_amounts(cls, given: dict[str, float] | None) -> dict[str, float] | None:
        for name, amount in (given or {}).items():
            if name in ("CPU", "GPU"):
                raise ValueError(f"write num_{name.lower()}s, not {name!r} (Ray's names)")
            if not name or not math.isfinite(amount) or amount < 0:
                raise ValueError(
                    f"must map names to amounts of 0 or more, e.g. "
                    f'{{"num_cpus": 2, "llama": 1}}; got {name!r}: {amount!r}'
                )
        return given

    @field_validator("tools", mode="before")
    @classmethod
    def _functions_become_tools(cls, given: Any) -> tuple[Tool | McpServer, ...]:
        return tools_of(given)

    @model_validator(mode="after")
    def _subprocess_agents_need_a_command(self) -> AgentConfig:
        if self.interface is not AgentInterface.API and self.script is None:
            raise ValueError(
                f"a {self.interface.value} agent needs script settings with a command, "
                'e.g. script={"command": ["python", "my_agent.py"]}'
            )
        if self.name in self.fallbacks:
            raise ValueError("an agent cannot be its own fallback")
        read_settings(self.name, self.metadata)
        return self

    @property
    def settings(self) -> GenerationSettings:
        """The generation settings in ``metadata``, typed (checked when the agent was made).

        Read once per ``metadata`` (13 us a read, and every task's request starts from it);
        a copy with other metadata (``model_copy(update=...)``) reads its own.
        """
        return self._settings_read()[1]

    def _settings_read(self) -> tuple[dict[str, Any], GenerationSettings, dict[str, Any]]:
        cached = _read.get(id(self.metadata))
        if cached is None or cached[0] is not self.metadata:  # (an id can be reused)
            read = read_settings(self.name, self.metadata)
            cached = _read[id(self.metadata)] = (self.metadata, read, read.given())
            if len(_read) > _READ_SIZE:
                with contextlib.suppress(RuntimeError, StopIteration, KeyError):  # threads
                    del _read[next(iter(_read))]  # the oldest
        return cached

    @property
    def given_settings(self) -> Mapping[str, Any]:
        """``settings.given()``, read once per ``metadata`` as ``settings`` is (not to change)."""
        return self._settings_read()[2]

    def resolved_api_key(self) -> str | None:
        """The key to use: the explicit one, else the variable named by ``api_key_env``.

        Raises:
            MissingCredentialsError: ``api_key_env`` names a variable that is not set.
        """
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_env:
            value = os.environ.get(self.api_key_env)
            if not value:
                raise MissingCredentialsError(self.agent_type, (self.api_key_env,))
            return value
        return None


# Settings read, by the id of the metadata they were read from (kept with it: an id can be
# reused once its object is gone). Agents are few; the oldest go first past the size.
_read: dict[int, tuple[dict[str, Any], GenerationSettings, dict[str, Any]]] = {}
_READ_SIZE = 1024


class AgentOptions(SettingsArguments, total=False):
    """The keyword arguments of ``register_agent``: agent fields and generation settings."""

    api_key_env: str | None
    fallbacks: Sequence[str]
    max_concurrency: int | None
    script_fallback: bool
    script: ScriptSettings | Mapping[str, Any] | None
    cache: bool | None
    tools: Sequence[ToolLike]
    max_turns: int
    resources: Mapping[str, float] | None


_OPTION_NAMES = AgentOptions.__optional_keys__


def _with_settings(agent: str, metadata: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` with the settings among ``options`` (taken out of it), all checked.

    Raises:
        ConfigurationError: An option is close to a setting's or an option's name but is
            neither, a setting is given both ways with two values, or a setting is invalid.
    """
    for key in options:
        if key in _OPTION_NAMES:
            continue
        meant = close_setting(key)
        if meant is not None:
            raise ConfigurationError(
                f"agent {agent!r}: unknown setting {key!r}; did you mean {meant!r}?"
            )
        close = difflib.get_close_matches(key, _OPTION_NAMES - SETTING_NAMES, n=1, cutoff=0.7)
        if close:
            raise ConfigurationError(
                f"agent {agent!r}: unknown option {key!r}; did you mean {close[0]!r}?"
            )
    for key in [key for key in options if key in SETTING_NAMES]:  # in the caller's order
        # Held as JSON holds it (tuples as lists), so that a recorded agent loads back equal.
        value = to_jsonable_python(options.pop(key))
        if value is None:
            continue  # not given
        if metadata.get(key) is not None and to_jsonable_python(metadata[key]) != value:
            raise ConfigurationError(
                f"agent {agent!r}: setting {key!r} is given twice, as {value!r:.60} and as "
                f"{metadata[key]!r:.60} in metadata; give it once"
            )
        metadata[key] = value
    read_settings(agent, metadata)
    return metadata


class AgentRegistry:
    """The agents a run may use, by name."""

    def __init__(self) -> None:
        self._agents: dict[str, AgentConfig] = {}
        self.version = 0  # changes whenever an agent is added or replaced

    def register_agent(
        self,
        name: str,
        agent_type: AgentType | str,
        interface: AgentInterface | str = AgentInterface.API,
        model: str | None = None,
        api_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        replace: bool = False,
        **options: Unpack[AgentOptions],
    ) -> AgentConfig:
        """Register an agent and return its config.

        Args:
            name: Unique name tasks refer to.
            agent_type: A provider name (``AgentType`` or any name ``LlmFactory`` knows).
            interface: ``api`` (in-process provider), ``script`` or ``cli`` (subprocess).
            model: The provider's model; its default when None.
            api_key: An explicit key (held as a secret). Prefer ``api_key_env=``.
            metadata: Generation settings such as ``max_tokens``, ``temperature``,
                ``system_prompt`` (see ``GenerationSettings``), and any keys of the user's
                own that are not close to a setting's name.
            replace: Allow replacing an agent of the same name.
            **options: ``api_key_env``, ``fallbacks`` (agent names, ``"provider"`` or
                ``"provider:model"``, tried in order), ``max_concurrency``,
                ``script_fallback``, ``script``, ``cache``, ``tools``, ``max_turns``,
                ``resources`` (for a cluster backend); and the generation settings,
                which join ``metadata`` (a setting given both ways must have one value).

        Raises:
            ConfigurationError: A setting or option is invalid or misspelled, the provider
                name is unknown, or the name is taken (and ``replace`` is false).
        """
        from llm_abstractions import LlmFactory

        provider = LlmFactory.spec(agent_type).name  # unknown names fail here, with hints
        if name in self._agents and not replace:
            raise ConfigurationError(
                f"An agent named {name!r} is already registered; pass replace=True to override."
            )
        rest: dict[str, Any] = dict(options)
        checked = _with_settings(name, dict(metadata or {}), rest)  # takes the settings out
        fields = {
            "name": name,
            "agent_type": provider,
            "interface": interface,
            "model": model,
            "api_key": api_key,
            "metadata": checked,
            **rest,
        }
        try:
            config = AgentConfig.model_validate(fields)
        except ValidationError as exc:
            raise ConfigurationError(describe_validation_error(f"agent {name!r}", exc)) from None
        self._agents[name] = config
        self.version += 1
        return config

    def get(self, name: str) -> AgentConfig:
        """The agent called ``name``.

        Raises:
            UnknownAgentError: No such agent; close matches are suggested.
        """
        try:
            return self._agents[name]
        except KeyError:
            close = difflib.get_close_matches(name, self.names(), n=2, cutoff=0.5)
            raise UnknownAgentError(name, self.names(), close) from None

    def names(self) -> list[str]:
        """Registered agent names, sorted."""
        return sorted(self._agents)

    def __contains__(self, name: object) -> bool:
        return name in self._agents

    def __iter__(self) -> Iterator[AgentConfig]:
        return iter(self._agents.values())

    def __len__(self) -> int:
        return len(self._agents)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> AgentRegistry:
        """Build a registry from a TOML file with one ``[agents.NAME]`` table per agent.

        Raises:
            ConfigurationError: The file is missing, not TOML, holds an API key, or an agent
                in it is invalid (the message names the file and the agent).
        """
        registry = cls()
        registry.load_toml(path)
        return registry

    def load_toml(self, path: str | os.PathLike[str]) -> list[AgentConfig]:
        """Add the agents of a TOML file to this registry (see ``from_toml``)."""
        source = Path(path)
        try:
            document = tomllib.loads(source.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigurationError(f"Agent file not found: {source}") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"Cannot read agent file {source}: {exc}") from None
        agents = document.get("agents")
        if not isinstance(agents, dict) or not agents:
            raise ConfigurationError(f"{source} has no [agents.NAME] tables.")
        return [self._register_from_table(source, name, table) for name, table in agents.items()]

    def _register_from_table(self, source: Path, name: str, table: object) -> AgentConfig:
        where = f"{source} [agents.{name}]"
        if not isinstance(table, dict):
            raise ConfigurationError(f"{where} must be a table of settings.")
        settings = dict(table)
        if "api_key" in settings:
            raise ConfigurationError(
                f"{where} holds an api_key: keys do not belong in files. Remove it and set "
                'api_key_env = "SOME_VARIABLE" instead.'
            )
        if "type" not in settings:
            raise ConfigurationError(f'{where} needs type = "<provider>", e.g. type = "local".')
        agent_type = settings.pop("type")
        try:
            return self.register_agent(name, agent_type, **settings)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: {exc}") from None
        except TypeError as exc:  # an unknown key in the table
            raise ConfigurationError(f"{where}: {exc}") from None
